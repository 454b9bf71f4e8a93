"""On a CPU: a grid of 4 students (KD, KD+BTKD, DKD, DKD+BTKD) against one teacher vs the same 4
students trained as 4 separate runs, same work, same process; the wall-time ratio, and a check that
the results are the same bit for bit.

The Fashion-MNIST setting of the committed evidence (convnet width 16 -> mlp), on synthetic images
of Fashion-MNIST's shape (speed does not depend on pixel values) and a random teacher:

    python benchmarks/cpu_grid.py --out benchmarks/results/cpu_grid.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from btkd.bench.run import bench_grid
from btkd.bench.spec import load_bench
from btkd.engine import Trainer
from btkd.engine.checkpoint import export_weights
from btkd.models import build_model

METHODS = ["kd", "kd_btkd", "dkd", "dkd_btkd"]
TIMING = {"epoch_time", "images_per_s", "wall_time"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--size", type=int, default=4096, help="training images (default 4096)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats of both ways (default 2)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cpu_grid_"))
    torch.manual_seed(0)
    teacher = work / "teacher.safetensors"
    export_weights(build_model("convnet", num_classes=10, in_channels=1, width=16), teacher)
    # the test split has --size images too: a smaller --size tests on all of them
    overrides = ["data.name=synthetic", f"data.options={{size: {args.size}, num_classes: 10, image_size: 28, "
                 "channels: 1}", "data.train_subset=null", f"data.test_subset={min(1000, args.size)}",
                 f"model.teacher_checkpoint={teacher}", f"optim.epochs={args.epochs}", "runtime.progress=false",
                 "bench.seeds=[0]"]

    def spec(root):
        s = load_bench("fashion_mnist/bench/convnet_mlp", overrides + [f"output_dir={root}"])
        s.methods = [m for m in s.methods if m.label in METHODS]
        return s

    times = {"grid": [], "separate": []}
    for r in range(args.repeats):
        for way in (("grid", "separate") if r % 2 == 0 else ("separate", "grid")):
            root = work / f"{way}{r}"
            s = spec(root)
            t0 = time.perf_counter()
            if way == "grid":
                bench_grid(s, echo=lambda *_: None).fit()
            else:
                for m in s.methods:
                    Trainer(s.config(m.label, 0), run_dir=root / "alone" / m.label, echo=lambda *_: None).fit()
            times[way].append(time.perf_counter() - t0)
    same = True
    for m in METHODS:
        grid_log = (work / "grid0" / s.name / "runs" / f"{m}-s0" / "log.jsonl").read_text().splitlines()
        alone_log = (work / "separate0" / "alone" / m / "log.jsonl").read_text().splitlines()
        strip = [[{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in log]
                 for log in (grid_log, alone_log)]
        same &= strip[0] == strip[1]
    shutil.rmtree(work, ignore_errors=True)  # 2 x repeats bench folders with their checkpoints
    grid_s, sep_s = min(times["grid"]), min(times["separate"])
    result = {"device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
              "torch_version": torch.__version__, "setting": "convnet(width 16) -> mlp, 1x28x28 synthetic, batch 128",
              "train_images": args.size, "epochs": args.epochs, "students": METHODS,
              "seconds_grid": times["grid"], "seconds_separate": times["separate"],
              "grid_over_separate": grid_s / sep_s, "logs_identical": same,
              "command": "python benchmarks/cpu_grid.py " + shlex.join(argv if argv is not None else sys.argv[1:])}
    print(json.dumps(result, indent=1))
    print(f"\ngrid of 4 / 4 separate runs (same work): {grid_s:.1f} s / {sep_s:.1f} s = {grid_s / sep_s:.2f}; "
          f"logs identical: {same}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
