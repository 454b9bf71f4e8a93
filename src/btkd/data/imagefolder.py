"""ImageFolder-style trees (``root/{train,val}/<class>/*.jpg``) for data too big to keep resident.

Decoding is Pillow's; the transforms are the standard ImageNet ones written with PIL and torch so
that the package does not depend on torchvision. Class indices follow torchvision's rule (class
folder names sorted), so checkpoints trained with either agree on the label order.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("ImageFolder data needs Pillow to decode images: pip install 'btkd[images]'") from e
    return Image


def find_classes(directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """Class folders of ``directory``, sorted, and their indices (torchvision's convention)."""
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders in {directory}; expected {directory}/<class>/<image files>")
    return classes, {c: i for i, c in enumerate(classes)}


def to_normalised_tensor(img, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """RGB PIL image -> float32 (3, H, W) tensor, ``(x / 255 - mean) / std``."""
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(m).div_(s)


def random_resized_crop_box(width: int, height: int, scale: Sequence[float], ratio: Sequence[float],
                            generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, as a PIL box (left, top, right, bottom).

    Up to 10 tries at an area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``;
    if none fits, the largest centred crop whose aspect ratio is within ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(log_lo, log_hi, generator=generator)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


class TrainTransform:
    """Random-resized crop to ``size`` x ``size``, horizontal flip with p=1/2, normalise.

    Draws from torch's global RNG, which a DataLoader seeds per worker from its generator."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.size, self.scale, self.ratio, self.flip, self.mean, self.std = size, scale, ratio, flip, mean, std

    def __call__(self, img) -> Tensor:
        Image = _pil()
        box = random_resized_crop_box(img.width, img.height, self.scale, self.ratio)
        # resize with a box crops and resamples in one step (antialiased, like torchvision on PIL).
        img = img.resize((self.size, self.size), Image.BILINEAR, box=box)
        if self.flip and float(torch.rand(1)) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_normalised_tensor(img, self.mean, self.std)


class EvalTransform:
    """Resize the shorter side to ``resize_size`` (default size / 0.875, i.e. 256 for 224), then
    centre-crop ``size`` x ``size`` and normalise: the usual ImageNet evaluation."""

    def __init__(self, size: int, resize_size: int | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.size = size
        self.resize_size = resize_size if resize_size is not None else int(round(size / 0.875))
        if self.resize_size < size:
            raise ValueError(f"resize_size ({self.resize_size}) must be >= image_size ({size})")
        self.mean, self.std = mean, std

    def __call__(self, img) -> Tensor:
        Image = _pil()
        w, h = img.size
        r = self.resize_size
        nw, nh = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
        img = img.resize((nw, nh), Image.BILINEAR)
        top = int(round((nh - self.size) / 2.0))
        left = int(round((nw - self.size) / 2.0))
        img = img.crop((left, top, left + self.size, top + self.size))
        return to_normalised_tensor(img, self.mean, self.std)


class ImageFolderDataset(Dataset):
    """``(image, class index)`` pairs from ``root/<class>/**/<file>``, in torchvision's order:
    classes sorted, then files sorted by path within each class."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS):
        _pil()  # fail at construction, not in a worker, when Pillow is missing
        self.root = Path(root)
        self.transform = transform
        self.classes, self.class_to_idx = find_classes(self.root)
        exts = tuple(e.lower() for e in extensions)
        self.samples: list[tuple[str, int]] = []
        for cls in self.classes:
            for dirpath, _, filenames in sorted(os.walk(self.root / cls, followlinks=True)):
                for fname in sorted(filenames):
                    if fname.lower().endswith(exts):
                        self.samples.append((os.path.join(dirpath, fname), self.class_to_idx[cls]))
        if not self.samples:
            raise FileNotFoundError(f"no image files ({', '.join(exts)}) under {self.root}/<class>/")
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        Image = _pil()
        path, target = self.samples[index]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")  # grey, palette and RGBA files all become RGB
        return (self.transform(img) if self.transform is not None else img), target


def imagefolder_loader(root: str | os.PathLike, split: str = "train", batch_size: int = 256, image_size: int = 224,
                       train: bool | None = None, workers: int = 4, *, resize_size: int | None = None,
                       scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                       shuffle: bool | None = None, drop_last: bool | None = None, seed: int = 0,
                       pin_memory: bool | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD) -> DataLoader:
    """A DataLoader of ``(float32 [B, 3, S, S], int64 [B])`` over ``root/<split>/<class>/*``.

    ``train`` (default: ``split == "train"``) picks the training transform, shuffling and
    drop_last; each can be overridden. ``seed`` seeds the loader's generator, which fixes the
    shuffle and every worker's augmentation RNG. ``loader.dataset.classes`` lists the classes.
    """
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"imagefolder: expected the folder {folder} (layout {root}/{split}/<class>/<image>.jpg|png), not found"
        )
    train = (split == "train") if train is None else bool(train)
    transform = (TrainTransform(image_size, scale, ratio, mean=mean, std=std) if train
                 else EvalTransform(image_size, resize_size, mean=mean, std=std))
    dataset = ImageFolderDataset(folder, transform)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train if shuffle is None else shuffle,
        drop_last=train if drop_last is None else drop_last,
        num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
