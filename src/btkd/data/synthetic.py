"""Random uint8 images and labels: no files, deterministic per seed; for tests and benchmarks."""

from __future__ import annotations

import os

import torch

from .base import Split, check_split


def load_synthetic(root: str | os.PathLike | None = None, split: str = "train", *, size: int | None = None,
                   num_classes: int = 10, image_size: int = 32, channels: int = 3, seed: int = 0,
                   prototypes: bool = False) -> Split:
    """``size`` images (default 1024 train / 256 test) of ``channels x image_size x image_size``,
    uniform in 0..255, with uniform labels in ``0..num_classes-1``. Train and test use different
    streams of the same seed, so they differ but are each reproducible. ``root`` is unused.

    ``prototypes=True`` makes the task learnable: each image is its class's fixed random pattern
    (shared by both splits) plus noise, so a model can fit it and training curves are smooth."""
    split = check_split(split)
    if size is None:
        size = 1024 if split == "train" else 256
    for arg, v, lo in (("size", size, 0), ("num_classes", num_classes, 2), ("image_size", image_size, 1),
                       ("channels", channels, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"synthetic: {arg} must be an integer >= {lo}, got {v!r}")
    g = torch.Generator().manual_seed(int(seed) * 2 + (0 if split == "train" else 1))
    images = torch.randint(0, 256, (size, channels, image_size, image_size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (size,), generator=g, dtype=torch.int64)
    if prototypes:
        # Low-frequency patterns (8x8 blocks upsampled), so crops and flips keep them recognisable.
        coarse = max(1, image_size // 4)
        protos = torch.randint(0, 256, (num_classes, channels, coarse, coarse),
                               generator=torch.Generator().manual_seed(int(seed) + 12345)).float()
        protos = torch.nn.functional.interpolate(protos, size=(image_size, image_size), mode="nearest")
        mixed = 0.6 * protos[labels] + 0.4 * images.float()
        images = mixed.round().clamp(0, 255).to(torch.uint8)
    # Uniform 0..255 / 255: mean 0.5, std sqrt((256^2 - 1) / 12) / 255.
    std = ((256 ** 2 - 1) / 12) ** 0.5 / 255
    return Split(images=images, labels=labels, num_classes=num_classes, mean=(0.5,) * channels,
                 std=(std,) * channels, name="synthetic")
