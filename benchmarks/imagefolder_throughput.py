"""Images/s of the ImageFolder input path (`btkd.data.imagefolder_loader`) on this CPU, and what an
ImageNet GPU node needs.

Writes a synthetic JPEG tree into a temporary folder (``--images`` 500x375 JPEGs, ImageNet's most
common size, quality 90: smooth colour fields plus pixel noise, ~77 KB each, where real ImageNet
training JPEGs average ~110 KB: ~140 GB for 1.28 M files), then times whole epochs of the training loader (JPEG
decode, RandomResizedCrop 224 + flip, normalisation, batching into float32, all in the DataLoader's
worker processes) with 0, 1 and 2 workers, after one warm-up epoch that starts the (persistent)
workers. Also, in this process, the per-image cost of the decode path with and without Pillow's JPEG
``draft`` (reduced-scale DCT decoding), at 500x375 and 1600x1200, and how far the two outputs differ.

    python benchmarks/imagefolder_throughput.py --out benchmarks/results/imagefolder_throughput_cpu.json

Each loader row also gives images per CPU-second: the CPU time of the worker processes and the main
process over the timed epochs, which other load on the machine does not change (wall-clock rates
do: on a shared machine 2 workers may not get 2 free cores).

What a GPU node needs (an ESTIMATE, not a measurement): a ResNet-50 training step with bf16 on one
modern GPU (A100/H100 class) takes ~2,500-3,000 images/s. A worker with a core to itself delivers
about the images per CPU-second of the 1-worker row (its own decoding plus the main process's share
of receiving the batch), so a GPU needs about 2,500-3,000 / that figure workers, and as many free
cores; the script prints the count from its own figure. Measured here (AMD EPYC, Pillow 13 with
libjpeg-turbo): ~400 images per CPU-second, so 7-8 workers per GPU. That assumes the node's cores are
as fast as this machine's and real ImageNet JPEGs cost what these do; they are larger on average and
some are far larger (where `draft` helps), so treat it as a lower bound: the ImageNet configs ask for
12. A student smaller than ResNet-50 (ResNet-18, MobileNetV1) steps faster and needs more workers
still; the teacher's forward on the same GPU slows the step and needs fewer. Batches leave the
workers as float32 (4 bytes a pixel): 512 images of 224 px are 308 MB, and a DataLoader keeps
``prefetch_factor`` of them per worker in shared memory (/dev/shm: give a container enough, e.g.
``docker run --shm-size=16g`` or ``--ipc=host``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from btkd.data.imagefolder import TrainTransform, imagefolder_loader, usable_cpus  # noqa: E402

GPU_IMAGES_PER_S = (2500, 3000)  # ResNet-50 training, bf16, one modern GPU: the estimate's assumption


def synthetic_jpeg(rng: np.random.Generator, width: int, height: int, quality: int) -> bytes:
    """A photo-like test image: a smooth random colour field (bicubic from a coarse grid) plus noise."""
    from PIL import Image

    coarse = rng.integers(0, 256, (height // 25 + 2, width // 25 + 2, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    pixels = (field + rng.normal(0, 12, field.shape).astype(np.int16)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_tree(root: Path, images: int, classes: int, size: tuple[int, int], quality: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    total = 0
    for split, n in (("train", images), ("val", classes)):
        for i in range(n):
            folder = root / split / f"class{i % classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            data = synthetic_jpeg(rng, *size, quality)
            (folder / f"img{i:05d}.jpg").write_bytes(data)
            total += len(data) if split == "train" else 0
    return total


def _cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU time of these processes so far (Linux /proc), None where unavailable."""
    total = 0.0
    try:
        tick = os.sysconf("SC_CLK_TCK")
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15 of stat)
    except (OSError, ValueError, IndexError):
        return None
    return total


def time_loader(root: Path, workers: int, batch: int, image_size: int, epochs: int, train: bool = True,
                draft: bool = True) -> dict:
    loader = imagefolder_loader(root, "train", batch, image_size, train=train, workers=workers, seed=0,
                                pin_memory=False, draft=draft)
    n = len(loader) * batch if loader.drop_last else len(loader.dataset)
    for _ in loader:  # warm-up: starts the workers, fills the page cache
        pass
    it = getattr(loader, "_iterator", None)  # the persistent workers' iterator
    pids = [w.pid for w in getattr(it, "_workers", [])] if workers else []
    cpu0, main0 = _cpu_seconds(pids), time.process_time()
    rates = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for x, _ in loader:
            assert x.dtype == torch.float32
        rates.append(n / (time.perf_counter() - t0))
    cpu1, main1 = _cpu_seconds(pids), time.process_time()
    del loader, it  # stops the persistent workers before the next row
    cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) + (main1 - main0)
    return {"workers": workers, "train_transform": train, "draft": draft, "image_size": image_size,
            "images_per_epoch": n, "images_per_s_median": round(statistics.median(rates), 1),
            "images_per_s_max": round(max(rates), 1), "epoch_rates": [round(r, 1) for r in rates],
            # CPU time of the main process and the workers: what each image costs whatever else runs
            "cpu_ms_per_image": None if cpu is None else round(cpu / (n * epochs) * 1e3, 3),
            "images_per_cpu_second": None if not cpu else round(n * epochs / cpu, 1)}


def draft_rows(image_size: int, repeats: int, quality: int) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(1)
    rows = []
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for width, height in ((500, 375), (1600, 1200)):
        data = synthetic_jpeg(rng, width, height, quality)
        times, outputs = {True: [], False: []}, {True: [], False: []}
        transforms = {d: TrainTransform(image_size, draft=d) for d in (True, False)}
        for i in range(repeats):  # interleaved, so that other load on the machine hits both alike
            for draft in (True, False):
                torch.manual_seed(i)  # the same crop for both
                t0 = time.perf_counter()
                outputs[draft].append(transforms[draft](Image.open(io.BytesIO(data))))
                times[draft].append(time.perf_counter() - t0)
        ms = {d: statistics.median(t) * 1e3 for d, t in times.items()}
        diffs = [((a - b) * std).abs().mean().item() * 255 for a, b in zip(outputs[True], outputs[False])]
        applied = sum(not torch.equal(a, b) for a, b in zip(outputs[True], outputs[False]))
        rows.append({"image": f"{width}x{height}", "image_size": image_size,
                     "ms_per_image_draft_median": round(ms[True], 3),
                     "ms_per_image_full_decode_median": round(ms[False], 3),
                     "speedup": round(ms[False] / ms[True], 2),
                     "crops_decoded_reduced": f"{applied}/{repeats}",
                     "mean_abs_difference_0_255": round(statistics.mean(diffs), 3),
                     "max_mean_abs_difference_0_255": round(max(diffs), 3)})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=384)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per row (after one warm-up epoch)")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--draft-repeats", type=int, default=60)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--note", default="", help="a remark stored with the figures (e.g. other load on the machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the main process does the loading when workers=0: one core, like a worker

    from PIL import Image, features

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="btkd_imagefolder_") as tmp:
        root = Path(tmp)
        nbytes = write_tree(root, args.images, args.classes, (500, 375), args.quality)
        rows = [time_loader(root, w, args.batch, args.image_size, args.epochs) for w in args.workers]
        rows.append(time_loader(root, max(args.workers), args.batch, args.image_size, args.epochs, draft=False))
        rows.append(time_loader(root, max(args.workers), args.batch, args.image_size, args.epochs, train=False))
    draft = draft_rows(args.image_size, args.draft_repeats, args.quality)
    load_after = os.getloadavg()

    one = next((r for r in rows if r["workers"] == 1 and r["train_transform"] and r["draft"]), None)
    # one worker's rate: images per CPU-second of worker + main process (contention does not change it),
    # else the wall-clock rate
    per_worker = one and (one["images_per_cpu_second"] or one["images_per_s_median"])
    estimate = None
    if per_worker:
        estimate = {
            "label": "ESTIMATE, not a measurement: workers (and free cores) per GPU = GPU images/s / images per "
                     "CPU-second of the 1-worker loader here (worker + main process)",
            "assumed_gpu_images_per_s": list(GPU_IMAGES_PER_S),
            "images_per_cpu_second_one_worker": per_worker,
            "workers_per_gpu": [math.ceil(g / per_worker) for g in GPU_IMAGES_PER_S],
        }
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    result = {
        "device": f"cpu ({cpu}, {usable_cpus()} usable cores)",
        "command": "python benchmarks/imagefolder_throughput.py "
                   + shlex.join(argv if argv is not None else sys.argv[1:]),
        "torch_version": torch.__version__,
        "pillow_version": Image.__version__,
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "note": args.note,
        "tree": {"train_images": args.images, "classes": args.classes, "size": "500x375",
                 "jpeg_quality": args.quality, "mean_kb": round(nbytes / args.images / 1024, 1)},
        "batch_size": args.batch,
        "loader_rows": rows,
        "draft_decode": draft,
        "gpu_node_estimate": estimate,
    }
    print(f"{result['device']}, torch {torch.__version__}, Pillow {Image.__version__}, load {load_before[0]:.2f}")
    print(f"{'workers':>7} {'transform':>9} {'draft':>5} {'img/s (median)':>14} {'img/s (max)':>11} "
          f"{'img per CPU-s':>13}")
    for r in rows:
        print(f"{r['workers']:>7} {'train' if r['train_transform'] else 'eval':>9} {str(r['draft']):>5} "
              f"{r['images_per_s_median']:>14.1f} {r['images_per_s_max']:>11.1f} {r['images_per_cpu_second']!s:>13}")
    for r in draft:
        print(f"draft decode, {r['image']} -> {r['image_size']}: {r['ms_per_image_draft_median']:.2f} ms vs "
              f"{r['ms_per_image_full_decode_median']:.2f} ms full decode ({r['speedup']}x; reduced on "
              f"{r['crops_decoded_reduced']} crops; mean |difference| {r['mean_abs_difference_0_255']} of 255)")
    if estimate:
        print(f"ESTIMATE: {GPU_IMAGES_PER_S[0]:,}-{GPU_IMAGES_PER_S[1]:,} img/s per GPU (ResNet-50, bf16) / "
              f"{per_worker:.0f} img per CPU-second of one worker = {estimate['workers_per_gpu'][0]}-"
              f"{estimate['workers_per_gpu'][1]} "
              "workers (and free cores) per GPU")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
