"""Images/s of one distillation step: the btkd engine vs the plain reference loop, same run.

resnet32x4 -> resnet8x4, KD, on synthetic CIFAR-shaped data (the step's cost does not depend on the
pixel values), at batch 64 and 512. Also the step-time overhead of KD+BTKD over plain KD in the engine.

    python benchmarks/throughput.py                 # CPU: a short run
    python benchmarks/throughput.py --steps 100     # on a GPU

Prints a table; ``--out FILE`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import reference_loader, time_reference_steps  # noqa: E402

from btkd import BTKD, Distill  # noqa: E402
from btkd.data import ResidentLoader, load_split  # noqa: E402
from btkd.engine.runinfo import device_name  # noqa: E402
from btkd.engine.step import TrainStep  # noqa: E402
from btkd.models import build_model  # noqa: E402


def engine_seconds_per_step(teacher, student, loss, split, batch, device, steps, warmup, graph, repeats=3):
    on_cuda = device.type == "cuda"
    memory = torch.channels_last if on_cuda else torch.contiguous_format
    student = student.to(memory_format=memory)
    teacher = teacher.to(memory_format=memory)
    lr = torch.tensor(0.05, device=device) if graph else 0.05
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4,
                          **({"fused": True} if on_cuda else {}))
    step = TrainStep([student], [opt], [loss], teacher, epochs=240,
                     amp_dtype=torch.bfloat16 if on_cuda else None, cuda_graph=graph)
    step.set_epoch(10)
    loader = ResidentLoader(split.images, split.labels, batch, split.mean, split.std, train=True, device=device,
                            channels_last=on_cuda)
    batches = iter(_forever(loader))
    for _ in range(warmup):
        step(*next(batches))
    times = []
    for _ in range(repeats):
        if on_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step(*next(batches))
        step.metric_tensor(0)[1].tolist()  # the once-per-epoch read, included
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def _forever(loader):
    while True:
        yield from loader


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 3 on CPU, 100 on GPU)")
    ap.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default 2 CPU / 8 GPU)")
    ap.add_argument("--graph", action="store_true", help="engine with a CUDA graph (GPU only)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.graph and not torch.cuda.is_available():
        ap.error("--graph captures a CUDA graph: it needs a CUDA GPU (drop it for the CPU run)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = device.type == "cuda"
    steps = args.steps or (100 if on_cuda else 3)
    warmup = 20 if on_cuda else 1
    workers = args.workers if args.workers is not None else (8 if on_cuda else 2)
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    rows = []
    for batch in args.batch_sizes:
        split = load_split("synthetic", None, "train", size=max(batch * (steps + warmup + 2), 2048),
                           num_classes=100, image_size=32)
        teacher = build_model("resnet32x4", 100).to(device).eval().requires_grad_(False)
        student = build_model("resnet8x4", 100).to(device)
        ref = time_reference_steps(teacher, student, reference_loader(split, batch, workers), device, steps, warmup)
        kd = engine_seconds_per_step(teacher, build_model("resnet8x4", 100).to(device), Distill("kd", validate=False),
                                     split, batch, device, steps, warmup, args.graph)
        btkd = engine_seconds_per_step(teacher, build_model("resnet8x4", 100).to(device),
                                       BTKD("kd", ce_weight=0.1, kd_weight=0.9, validate=False),
                                       split, batch, device, steps, warmup, args.graph)
        kd2 = engine_seconds_per_step(teacher, build_model("resnet8x4", 100).to(device), Distill("kd", validate=False),
                                      split, batch, device, steps, warmup, args.graph)
        spread = abs(kd2 - kd) / min(kd, kd2)  # KD timed before and after BTKD: drift shows here
        kd = min(kd, kd2)
        rows.append({"batch_size": batch, "reference_images_per_s": batch / ref, "engine_images_per_s": batch / kd,
                     "engine_over_reference": ref / kd, "btkd_overhead": btkd / kd - 1, "kd_spread": spread})
    result = {"device": device_name(device), "torch_version": torch.__version__, "graph": args.graph,
              "steps": steps, "reference_workers": workers,
              "engine": "ResidentLoader + TrainStep" + (", bf16 autocast, channels_last" if on_cuda else ", fp32"),
              "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"device: {result['device']}, torch {torch.__version__}, {steps} timed steps x 3")
    print(f"{'batch':>6} {'reference img/s':>16} {'engine img/s':>13} {'ratio':>6} {'BTKD overhead':>14} {'KD spread':>10}")
    for r in rows:
        print(f"{r['batch_size']:>6} {r['reference_images_per_s']:>16.1f} {r['engine_images_per_s']:>13.1f} "
              f"{r['engine_over_reference']:>6.2f} {100 * r['btkd_overhead']:>13.1f}% {100 * r['kd_spread']:>9.1f}%")


if __name__ == "__main__":
    main()
