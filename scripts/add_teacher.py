"""Publish a teacher trained by `btkd train` (a finished run folder) under weights/: half-precision
safetensors (in 15 MiB shards when larger), the run's config, log and summary, and a manifest entry.

    python scripts/add_teacher.py resnet32x4 runs/teacher_resnet32x4 --card "NVIDIA H100" \
        --command "btkd train cifar100/teachers/resnet32x4"

Afterwards `model.teacher_checkpoint=weights:resnet32x4` loads it (docs: src/btkd/weights.py). What a
GPU window returned is filed by `python benchmarks/cifar100/land.py RETURNED`, which does this too.
"""

import argparse
import json
import sys
from pathlib import Path

from btkd.weights import add_weights


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("run_dir", type=Path, help="holds summary.json, meta.json, config.yaml, log.jsonl")
    ap.add_argument("--weights", type=Path, help="the weights file (default: RUN_DIR/last.safetensors)")
    ap.add_argument("--card", required=True, help="the GPU (or CPU) it was trained on")
    ap.add_argument("--command", required=True, help="the command that trained it")
    ap.add_argument("--folder", type=Path, default=Path("weights"))
    ap.add_argument("--note", help="e.g. how a paused run was continued")
    args = ap.parse_args(argv)
    entry = add_weights(args.folder, args.name, args.run_dir, args.card, args.command, weights_file=args.weights,
                        extra={"note": args.note} if args.note else None)
    print(json.dumps({args.name: entry}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
