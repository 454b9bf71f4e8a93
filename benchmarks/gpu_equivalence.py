"""Does the fast path compute the same function? Short KD+BTKD runs, eager vs CUDA graph.

On a learnable task (class prototypes + noise, 10,000 images) with a briefly trained resnet32x4
teacher that is still wrong on part of the data (so the rectified part is exercised), 3 epochs of
resnet8x4 KD+BTKD, same seed and data order:
  A  eager fp32, deterministic cuDNN          C  A again (the noise floor: should equal A)
  B  CUDA graph fp32, deterministic cuDNN     D  the fast path (graph, bf16, channels_last, default cuDNN)
A vs B isolates the graph; A vs D is what a user of the fast path sees.

    python benchmarks/gpu_equivalence.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from btkd.config import load_config
from btkd.engine import Trainer

# runtime.compile=off: the figures were measured uncompiled, and since compile became the default with a graph
# (runtime.compile=auto) a graph run would also be compiled, so B vs A would no longer isolate the graph
DATA = ["data.name=synthetic", "data.options={size: 10000, num_classes: 100, image_size: 32, prototypes: true}",
        "data.test_subset=2000", "optim.lr_schedule=cosine", "runtime.progress=false", "runtime.compile=off"]
KEYS = ("loss_total", "loss_ce", "loss_distill_right", "loss_distill_rectified", "frac_wrong", "train_acc", "test_acc")


def run(work, name, extra, deterministic, epochs=3):
    cfg = load_config("cifar100/kd_btkd/res32x4_res8x4", DATA + [
        f"model.teacher_checkpoint={work / 'teacher' / 'last.safetensors'}", f"output_dir={work}", f"name={name}",
        f"optim.epochs={epochs}", *extra])
    t = Trainer(cfg, echo=lambda *_: None)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    t.fit()
    return [{k: e.get(k) for k in ("epoch",) + KEYS}
            for e in map(json.loads, (work / name / "log.jsonl").read_text().splitlines())]


def max_rel(a, b, key="loss_total"):
    return max(abs(x[key] - y[key]) / max(abs(y[key]), 1e-12) for x, y in zip(a, b))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_equivalence.py needs a CUDA GPU: it compares the CUDA-graph path with the eager one")
    work = Path(tempfile.mkdtemp())
    teacher = load_config("cifar100/teachers/resnet32x4", DATA + [
        f"output_dir={work}", "name=teacher", "optim.epochs=2", "runtime.cuda_graph=on"])
    teacher_acc = Trainer(teacher, echo=lambda *_: None).fit()["best_acc"]
    fp32 = ["runtime.precision=fp32", "runtime.channels_last=off", "runtime.fold_teacher_bn=off"]
    runs = {
        "A_eager_fp32": run(work, "A", fp32 + ["runtime.cuda_graph=off"], True),
        "B_graph_fp32": run(work, "B", fp32 + ["runtime.cuda_graph=on"], True),
        "C_eager_fp32_again": run(work, "C", fp32 + ["runtime.cuda_graph=off"], True),
        "D_fast": run(work, "D", ["runtime.cuda_graph=on"], False),
    }
    a = runs["A_eager_fp32"]
    result = {
        "device": torch.cuda.get_device_name(), "torch_version": torch.__version__, "teacher_test_acc": teacher_acc,
        "max_rel_loss_diff": {"C_vs_A": max_rel(runs["C_eager_fp32_again"], a),
                              "B_vs_A": max_rel(runs["B_graph_fp32"], a), "D_vs_A": max_rel(runs["D_fast"], a)},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_equivalence.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['device']}, torch {result['torch_version']}; teacher test acc {teacher_acc:.2f}%")
    print(f"{'run':<22}" + "".join(f"{k:>24}" for k in ("epoch", "loss_total", "frac_wrong", "test_acc")))
    for name, log in runs.items():
        for e in log:
            print(f"{name:<22}{e['epoch']:>24}{e['loss_total']:>24.6f}{e['frac_wrong']:>24.4f}{e['test_acc']:>24.2f}")
    for k, v in result["max_rel_loss_diff"].items():
        print(f"max relative loss difference {k}: {v:.2e}")


if __name__ == "__main__":
    main()
