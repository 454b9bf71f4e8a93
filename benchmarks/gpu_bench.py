"""What a bench grid costs on a GPU: one student vs grids of 4 and 8 students against one teacher.

resnet32x4 -> resnet8x4 with the standard recipe (batch 64, SGD, crop + flip, 50,000 training and
10,000 test images of CIFAR-100's shape), everything at its defaults (`btkd bench`'s own path: data
on the device, bf16 autocast, BN folded into the teacher, the whole grid step in one CUDA graph,
torch.compile). Grids:
  - K = 1: KD+BTKD, seed 0 (a plain `btkd distill` run, which is a grid of one);
  - K = 4: KD, KD+BTKD, DKD, DKD+BTKD on seed 0 (one teacher forward per step);
  - K = 8: the same four on seeds 0 and 1 (two lanes: one teacher forward per seed per step);
  - K = 5: CE, KD, KD+BTKD, DKD, DKD+BTKD on seed 0: a one-seed unit of the CIFAR-100 evidence.
``--teacher-precision same,fp32,tf32`` runs each grid with each teacher forward (bf16 like the
students, IEEE fp32, TF32): what keeping BTKD's split on fp32 logits costs, side by side.
Each grid runs ``--epochs`` whole epochs (training, evaluation of every student, checkpoint); the
first epoch (capture, compilation, autotuning) is reported apart, the others give seconds per epoch.
The 240-epoch time of the K = 8 grid is extrapolated from them (labelled so in the JSON).

    python benchmarks/gpu_bench.py --out benchmarks/results          # on a GPU: writes gpu_bench.json
    python benchmarks/gpu_bench.py --smoke                           # the whole script, tiny, on a CPU
    python benchmarks/gpu_bench.py --grids 5 --teacher-precision same,fp32,tf32 --root stage --teacher T

Synthetic images unless --root names CIFAR-100 shards (speed does not depend on pixel values); a
randomly initialised teacher unless --teacher names a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from btkd.bench.run import bench_grid
from btkd.bench.spec import load_bench
from btkd.engine.checkpoint import export_weights
from btkd.engine.runinfo import device_name
from btkd.models import build_model

GRIDS = {1: (["kd_btkd"], [0]), 4: (["kd", "kd_btkd", "dkd", "dkd_btkd"], [0]),
         8: (["kd", "kd_btkd", "dkd", "dkd_btkd"], [0, 1]), 5: (["ce", "kd", "kd_btkd", "dkd", "dkd_btkd"], [0])}


def data_overrides(root, smoke):
    if root:
        return ["data.name=cifar100", f"data.root={root}"]
    train, test = (512, 256) if smoke else (50000, 10000)
    return ["data.name=synthetic", f"data.options={{size: {train}, num_classes: 100, image_size: 32}}",
            f"data.test_subset={test}"]


def run_grid(k, precision, args, teacher, work):
    methods, seeds = GRIDS[k]
    overrides = data_overrides(args.root, args.smoke) + [
        f"model.teacher_checkpoint={teacher}", f"output_dir={work}", f"name=grid{k}_{precision}",
        f"optim.epochs={args.epochs}", "optim.milestones=[]", "runtime.progress=false", f"bench.seeds={seeds}",
        f"runtime.teacher_precision={precision}", *args.override]
    spec = load_bench("cifar100/bench/res32x4_res8x4", overrides)
    spec.methods = [m for m in spec.methods if m.label in methods]
    grid = bench_grid(spec, echo=lambda *_: None)
    ends = []
    end_epoch = grid._end_epoch

    def timed(*a, **kw):  # the end of each epoch, its checkpoint written
        out = end_epoch(*a, **kw)
        ends.append(time.perf_counter())
        return out

    grid._end_epoch = timed
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    grid.fit()
    per_epoch = [b - a for a, b in zip([t0] + ends, ends)]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"students": k, "teacher_precision": precision, "methods": methods, "seeds": seeds,
            "first_epoch_s": per_epoch[0],
            "epoch_s": per_epoch[1:], "sec_per_epoch": statistics.median(per_epoch[1:]),
            "peak_gpu_memory_gib": peak, "cuda_graph": grid.cuda_graph, "compile": grid.compile,
            "precision": str(grid.rt.amp_dtype or "fp32")}


def summarise(grids, device, args, command):
    """The JSON record of the grids measured so far, with their ratios."""
    result = {"device": device_name(device), "torch_version": torch.__version__, "batch_size": 64,
              "pair": "resnet32x4 -> resnet8x4",
              "data": "CIFAR-100" if args.root else "synthetic (CIFAR-100 shapes)", "command": command,
              "grids": grids}
    single = {g["teacher_precision"]: g["sec_per_epoch"] for g in grids.values() if g["students"] == 1}
    result["grid_over_single"] = {key: g["sec_per_epoch"] / single[g["teacher_precision"]]
                                  for key, g in grids.items() if g["students"] != 1 and g["teacher_precision"] in single}
    # what a teacher forward in fp32 or TF32 costs a grid, against one in bf16 like the students
    result["over_same_teacher"] = {key: g["sec_per_epoch"] / grids[f"{g['students']}/same"]["sec_per_epoch"]
                                   for key, g in grids.items()
                                   if g["teacher_precision"] != "same" and f"{g['students']}/same" in grids}
    for g in grids.values():
        if g["students"] == 8:
            result[f"minutes_for_240_epochs_grid8_{g['teacher_precision']}"] = \
                (g["first_epoch_s"] + 239 * g["sec_per_epoch"]) / 60
            result["minutes_for_240_epochs_note"] = "extrapolated: first epoch + 239 x the median later epoch"
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for gpu_bench.json (default: print only)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per grid; the first is warm-up (default 4)")
    ap.add_argument("--root", help="CIFAR-100 shards (default: synthetic images of the same shape)")
    ap.add_argument("--teacher", help="a resnet32x4 checkpoint (default: random weights)")
    ap.add_argument("--grids", default="1,4,8", help="grid sizes to run: 1, 4, 8, 5 (default 1,4,8)")
    ap.add_argument("--teacher-precision", default="same",
                    help="the teacher's forward, one or more of same, fp32, tf32, comma-separated (default same)")
    ap.add_argument("--smoke", action="store_true", help="tiny data and 2 epochs: checks the script on a CPU")
    ap.add_argument("override", nargs="*", help="extra config overrides, e.g. runtime.compile=off")
    args = ap.parse_args(argv)
    if args.smoke:
        args.epochs = 2
    elif not torch.cuda.is_available():  # else 50,000 images of resnet32x4 on the CPU: hours, measuring nothing
        raise SystemExit("gpu_bench.py needs a CUDA GPU (or --smoke for a CPU check of the script)")
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first is warm-up)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    teacher = args.teacher
    if teacher is None:
        torch.manual_seed(0)
        teacher = work / "teacher.safetensors"
        export_weights(build_model("resnet32x4", num_classes=100), teacher)
    precisions = args.teacher_precision.split(",")
    if any(q not in ("same", "fp32", "tf32") for q in precisions):
        ap.error(f"--teacher-precision takes same, fp32 and tf32, not {args.teacher_precision}")
    sizes = [int(x) for x in args.grids.split(",")]
    if any(k not in GRIDS for k in sizes):
        ap.error(f"--grids takes {sorted(GRIDS)}, not {args.grids}")
    command = "python benchmarks/gpu_bench.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    grids = {}  # "K/precision" -> its measures
    for k in sizes:
        for q in precisions:
            g = grids[f"{k}/{q}"] = run_grid(k, q, args, teacher, work)
            print(f"K={k}, teacher {q}: {g['sec_per_epoch']:.3f} s/epoch (first epoch {g['first_epoch_s']:.1f} s), "
                  f"peak memory {g['peak_gpu_memory_gib']} GiB", flush=True)
            result = summarise(grids, device, args, command)
            if args.out:  # after every grid, atomically: a run stopped by its time limit keeps what it measured
                args.out.mkdir(parents=True, exist_ok=True)
                tmp = args.out / "gpu_bench.json.tmp"
                tmp.write_text(json.dumps(result, indent=1) + "\n")
                os.replace(tmp, args.out / "gpu_bench.json")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    print("\n| grid | teacher | s / epoch | x one student | x bf16 teacher | first epoch (s) | peak GPU memory (GiB) |"
          "\n|---|---|---|---|---|---|---|")
    for key, g in grids.items():
        single = grids.get(f"1/{g['teacher_precision']}")
        ratio = g["sec_per_epoch"] / single["sec_per_epoch"] if single else float("nan")
        over = result["over_same_teacher"].get(key, float("nan"))
        peak = g["peak_gpu_memory_gib"]
        print(f"| {g['students']} | {g['teacher_precision']} | {g['sec_per_epoch']:.3f} | {ratio:.2f} | {over:.2f} | "
              f"{g['first_epoch_s']:.1f} | {peak if peak is None else round(peak, 2)} |")


if __name__ == "__main__":
    main()
