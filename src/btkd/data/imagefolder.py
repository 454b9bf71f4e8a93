"""ImageFolder-style trees (``root/train/<class>/*.jpg`` and ``root/val/...`` or ``root/test/...``)
for data too big to keep resident.

Decoding is Pillow's; the transforms are the standard ImageNet ones written with PIL and torch so
that the package does not depend on torchvision. Class indices follow torchvision's rule (class
folder names sorted), so checkpoints trained with either agree on the label order. Both splits use
one class list (`imagefolder_classes`): a class folder that is empty or present in one split only
is an error, since it would shift the other split's labels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .._checks import reading

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("ImageFolder data needs Pillow to decode images: pip install 'btkd[images]'") from e
    return Image


TEST_SPLITS = ("val", "test")  # accepted names of the test folder


def find_classes(directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """Class folders of ``directory``, sorted, and their indices (torchvision's convention)."""
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders in {directory}; expected {directory}/<class>/<image files>")
    return classes, {c: i for i, c in enumerate(classes)}


def _walk(folder: str | os.PathLike, tree: str | os.PathLike, seen: set[str]) -> Iterator[tuple[str, list[str]]]:
    """``(dirpath, sorted file names)`` under ``folder``, following directory symlinks, except one
    that leads back into ``tree`` or to a folder already in ``seen`` (real paths): a loop, or the
    same images counted twice. Such a link is an error naming it."""
    tree_real = os.path.realpath(tree)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            raise ValueError(f"imagefolder: {dirpath} leads to {real}, which was indexed already (a symlink "
                             "loop or a second link to the same folder); remove the link")
        seen.add(real)
        dirnames.sort()
        for name in dirnames:
            link = os.path.join(dirpath, name)
            if os.path.islink(link):
                target = os.path.realpath(link)
                if target == tree_real or target.startswith(tree_real + os.sep):
                    raise ValueError(f"imagefolder: the symlink {link} -> {target} points back into {tree} "
                                     "(a loop, or images counted twice); remove the link")
        yield dirpath, sorted(filenames)


def _has_images(folder: Path, exts: tuple[str, ...]) -> bool:
    return any(f.lower().endswith(exts) for _, files in _walk(folder, folder.parent, set()) for f in files)


def imagefolder_test_split(root: str | os.PathLike) -> str:
    """The name of the test folder of an ImageFolder tree: ``"val"`` or ``"test"``."""
    found = [s for s in TEST_SPLITS if (Path(root) / s).is_dir()]
    if len(found) > 1:
        raise ValueError(f"imagefolder: {root} holds both {root}/val and {root}/test; keep one of them as the "
                         "test split (rename or move the other)")
    if not found:
        raise FileNotFoundError(f"imagefolder: expected a test folder {root}/val or {root}/test "
                                f"(layout {root}/val/<class>/<image>.jpg|png), found neither")
    return found[0]


def imagefolder_classes(root: str | os.PathLike, extensions: Sequence[str] = IMG_EXTENSIONS) -> list[str]:
    """The class list shared by the train and test folders of ``root``, sorted.

    Raises ValueError naming the folders when a class is present in one split only or holds no
    image file: either would give the two splits different label indices.
    """
    root = Path(root)
    train = root / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"imagefolder: expected the folder {train} "
                                f"(layout {root}/train/<class>/<image>.jpg|png)")
    folders = [train, root / imagefolder_test_split(root)]
    names = [set(find_classes(f)[0]) for f in folders]
    problems = [f"{c!r} is only in {folders[k]} (not in {folders[1 - k]})"
                for k in (0, 1) for c in sorted(names[k] - names[1 - k])]
    exts = tuple(e.lower() for e in extensions)
    problems += [f"{f / c} holds no image files ({', '.join(exts)})" for f in folders
                 for c in sorted(names[0] | names[1]) if (f / c).is_dir() and not _has_images(f / c, exts)]
    if problems:
        raise ValueError("imagefolder: the train and test folders must hold the same classes, each with "
                         "images, or the labels of one split shift: " + "; ".join(problems)
                         + ". Remove or fill those folders.")
    return sorted(names[0])


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
    classes sorted, then files sorted by path within each class.

    ``classes`` (default: the class folders of ``root``) fixes the label indices, e.g. to the list
    shared with another split; every one of them must be a folder holding images.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS, classes: Sequence[str] | None = None):
        _pil()  # fail at construction, not in a worker, when Pillow is missing
        self.root = Path(root)
        self.transform = transform
        self.classes = list(classes) if classes is not None else find_classes(self.root)[0]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        exts = tuple(e.lower() for e in extensions)
        self.samples: list[tuple[str, int]] = []
        seen: set[str] = set()
        for cls in self.classes:
            if not (self.root / cls).is_dir():
                raise FileNotFoundError(f"imagefolder: expected the class folder {self.root / cls}, not found")
            start = len(self.samples)
            for dirpath, filenames in sorted(_walk(self.root / cls, self.root, seen)):
                self.samples += [(os.path.join(dirpath, f), self.class_to_idx[cls])
                                 for f in filenames if f.lower().endswith(exts)]
            if len(self.samples) == start:  # an empty class would still take a label index
                raise ValueError(f"imagefolder: {self.root / cls} holds no image files ({', '.join(exts)}); "
                                 "remove the folder or add its images")
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        Image = _pil()
        path, target = self.samples[index]
        # decoded here, so a damaged file is named when it is read (Pillow opens lazily)
        with reading(path, "an image", "re-copy it from its source or delete it"), open(path, "rb") as f:
            img = Image.open(f).convert("RGB")  # grey, palette and RGBA files all become RGB
        return (self.transform(img) if self.transform is not None else img), target


def imagefolder_loader(root: str | os.PathLike, split: str = "train", batch_size: int = 256, image_size: int = 224,
                       train: bool | None = None, workers: int = 4, *, resize_size: int | None = None,
                       scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                       shuffle: bool | None = None, drop_last: bool | None = None, seed: int = 0,
                       pin_memory: bool | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD, classes: Sequence[str] | None = None) -> DataLoader:
    """A DataLoader of ``(float32 [B, 3, S, S], int64 [B])`` over ``root/<split>/<class>/*``.

    ``split`` is a folder name: ``"train"``, or the test folder (``imagefolder_test_split(root)``
    gives ``"val"`` or ``"test"``). ``classes`` (default: ``imagefolder_classes(root)``, shared by
    both splits) fixes the label indices. ``train`` (default: ``split == "train"``) picks the
    training transform, shuffling and drop_last; each can be overridden. ``seed`` seeds the
    loader's generator, which fixes the shuffle and every worker's augmentation RNG.
    ``loader.dataset.classes`` lists the classes.
    """
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"imagefolder: expected the folder {folder} (layout {root}/{split}/<class>/<image>.jpg|png), not found"
        )
    classes = imagefolder_classes(root) if classes is None else classes
    train = (split == "train") if train is None else bool(train)
    transform = (TrainTransform(image_size, scale, ratio, mean=mean, std=std) if train
                 else EvalTransform(image_size, resize_size, mean=mean, std=std))
    dataset = ImageFolderDataset(folder, transform, classes=classes)
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
