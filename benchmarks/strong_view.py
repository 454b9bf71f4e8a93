"""What a two-view host's strong view costs the data pipeline: one epoch of the CIFAR-sized
`ResidentLoader` with and without the strong view (its own crop and flip, RandAugment + Cutout),
measured side by side and alternating, on the device given; the ratio is what to read.

    python benchmarks/strong_view.py --out benchmarks/results/strong_view_cpu.json
    python benchmarks/strong_view.py --device cuda --out benchmarks/results/strong_view_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from btkd.data import ResidentLoader


def epoch_seconds(loader: ResidentLoader, epoch: int, device: torch.device) -> float:
    loader.set_epoch(epoch)
    t0 = time.perf_counter()
    last = None
    for x, _ in loader:
        last = x
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert last is not None
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=10000, help="training images (default 10000; CIFAR-100 has 50000)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.size, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 100, (args.size,), generator=g)
    common = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), train=True, seed=0, device=device)
    loaders = {"weak": ResidentLoader(images, labels, args.batch, **common),
               "weak_and_strong": ResidentLoader(images, labels, args.batch, strong_view=True, **common)}
    for loader in loaders.values():  # warm-up (first kernels, allocations)
        epoch_seconds(loader, 0, device)
    times = {k: [] for k in loaders}
    for r in range(args.repeats):
        for k in (list(loaders) if r % 2 == 0 else list(loaders)[::-1]):
            times[k].append(epoch_seconds(loaders[k], r + 1, device))
    best = {k: min(v) for k, v in times.items()}
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()}, "
                                                                                     f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__, "images": args.size, "batch": args.batch,
        "sec_per_epoch_weak": best["weak"], "sec_per_epoch_weak_and_strong": best["weak_and_strong"],
        "strong_over_weak": best["weak_and_strong"] / best["weak"],
        "images_per_s_weak_and_strong": args.size / best["weak_and_strong"],
        "all_times": times,
        "command": "python benchmarks/strong_view.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"{result['device']}: weak {best['weak']:.3f} s/epoch, weak + strong {best['weak_and_strong']:.3f} s/epoch "
          f"({result['strong_over_weak']:.1f}x), {result['images_per_s_weak_and_strong']:.0f} images/s with both views")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
