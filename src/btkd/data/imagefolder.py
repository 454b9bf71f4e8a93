"""ImageFolder-style trees (``root/train/<class>/*.jpg`` and ``root/val/...`` or ``root/test/...``)
for data too big to keep resident, ImageNet first.

Decoding is Pillow's; the transforms are the standard ImageNet ones written with PIL and numpy so
that the package does not depend on torchvision. Class indices follow torchvision's rule (class
folder names sorted), so checkpoints trained with either agree on the label order. Both splits use
one class list (`imagefolder_classes`): a class folder that is empty or present in one split only
is an error, since it would shift the other split's labels; so are a tree of one class and a test
folder that shares image files with the train folder (linked folders or files: the same device and
inode), which would make the test accuracy meaningless.

The input path (`imagefolder_loader`): each image is read, decoded, cropped, flipped and normalised
in DataLoader worker processes (persistent across epochs, a few batches ahead, into pinned memory
when CUDA is available); a JPEG is decoded at 1/2, 1/4 or 1/8 scale when its crop still holds at
least the output size at that scale (`draft_jpeg`): the same crop, within about one level of 255.
``benchmarks/imagefolder_throughput.py`` measures images/s per worker and estimates how many
workers a GPU needs. Loader options, also given as ``data.options`` in a config:

- ``mean``, ``std``: 3 numbers each (default ImageNet's), or ``auto``: computed from a seeded sample
  of ``stats_samples`` (500) training images (`channel_stats`), the same for every split;
- ``image_size`` (``data.image_size``): an int, or ``"auto"`` (API only): the median shorter side
  of a sample of training images; a size more than twice that median warns that every image is
  being upsampled (a tree of 32-px images given ImageNet's 224), naming both numbers;
- ``resize_size`` (evaluation resize, default image_size / 0.875), ``scale``, ``ratio``, ``flip``,
  ``draft``, ``prefetch_factor``, ``pin_memory``;
- ``workers`` (``data.workers``): reduced to the CPUs this process may use; `default_workers` for
  the API's default.
"""

from __future__ import annotations

import functools
import math
import os
import random
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .._checks import MissingExtra, reading

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise MissingExtra("ImageFolder data needs Pillow to decode images: pip install 'btkd[images]'") from e
    return Image


TEST_SPLITS = ("val", "test")  # accepted names of the test folder


def find_classes(directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """Class folders of ``directory``, sorted, and their indices (torchvision's convention)."""
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders in {directory}; expected {directory}/<class>/<image files>")
    return classes, {c: i for i, c in enumerate(classes)}


def _walk_entries(folder: str | os.PathLike, tree: str | os.PathLike,
                  seen: set[str]) -> Iterator[tuple[str, list[os.DirEntry]]]:
    """``(dirpath, its non-folder entries sorted by name)`` under ``folder``, top-down in sorted order,
    following directory symlinks, except one that leads back into ``tree`` or to a folder already in
    ``seen`` (real paths): a loop, or the same images counted twice. Such a link is an error naming it.
    An unreadable folder is skipped, as `os.walk` does. The entries carry what the listing gives for
    free (``inode()``, ``is_symlink()``): no file is opened or stat'ed."""
    tree_real = os.path.realpath(tree)
    pending = [os.fspath(folder)]
    while pending:
        dirpath = pending.pop()
        real = os.path.realpath(dirpath)
        if real in seen:
            raise ValueError(f"imagefolder: {dirpath} leads to {real}, which was indexed already (a symlink "
                             "loop or a second link to the same folder); remove the link")
        seen.add(real)
        try:
            with os.scandir(dirpath) as it:
                listing = list(it)
        except OSError:
            continue
        dirs, files = [], []
        for entry in listing:
            try:
                is_dir = entry.is_dir()  # follows a symlink; a broken one is a file, as in os.walk
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(entry)
        dirs.sort(key=lambda e: e.name)
        for entry in dirs:
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if target == tree_real or target.startswith(tree_real + os.sep):
                    raise ValueError(f"imagefolder: the symlink {entry.path} -> {target} points back into {tree} "
                                     "(a loop, or images counted twice); remove the link")
        yield dirpath, sorted(files, key=lambda e: e.name)
        pending += [e.path for e in reversed(dirs)]


def _walk(folder: str | os.PathLike, tree: str | os.PathLike, seen: set[str]) -> Iterator[tuple[str, list[str]]]:
    """``(dirpath, sorted file names)`` under ``folder`` (`_walk_entries`)."""
    for dirpath, entries in _walk_entries(folder, tree, seen):
        yield dirpath, [e.name for e in entries]


def _image_files(folder: Path, classes: Sequence[str], exts: tuple[str, ...]) -> Iterator[tuple[str, str, tuple]]:
    """``(class, path, (st_dev, st_ino))`` of every image file of ``folder/<class>/``: the file's
    identity, which two paths share when they are the same file (a symlink, a hard link, a linked
    folder). The inode comes with the listing; only a symlinked file costs a stat (of its target)."""
    seen: set[str] = set()
    for cls in classes:
        for dirpath, entries in _walk_entries(folder / cls, folder, seen):
            dev = None
            for e in entries:
                if not e.name.lower().endswith(exts):
                    continue
                if e.is_symlink():
                    try:
                        st = os.stat(e.path)
                    except OSError:  # a broken link: reading it names it
                        continue
                    yield cls, e.path, (st.st_dev, st.st_ino)
                else:
                    if dev is None:
                        dev = os.stat(dirpath).st_dev
                    yield cls, e.path, (dev, e.inode())


def _one_class(where, classes: Sequence[str]) -> None:
    raise ValueError(f"imagefolder: {where} gives only {len(classes)} class ({', '.join(classes) or 'none'}); a "
                     "classifier needs at least 2 (with one, every prediction is right and the accuracy is a "
                     "meaningless 100 %). Add a folder per class under train/ and the test folder.")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


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
    image file (either would give the two splits different label indices), when there are fewer
    than 2 classes (a classifier of one class scores 100 %), and when the test folder shares image
    files with the train folder (a linked folder, symlinked or hard-linked files): the test accuracy
    would be training accuracy. Files are compared by identity (device and inode, from the listing),
    never by content, so this costs one listing of both folders.
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
    # One listing of each split: the images per class, and which test files the train folder reaches too.
    counts: list[dict[str, int]] = [dict.fromkeys(names[0], 0), dict.fromkeys(names[1], 0)]
    test_files: dict[tuple, str] = {}
    for cls, path, key in _image_files(folders[1], sorted(names[1]), exts):
        counts[1][cls] += 1
        test_files.setdefault(key, path)
    shared: dict[tuple, str] = {}  # test file's identity -> a training path of it
    for cls, path, key in _image_files(folders[0], sorted(names[0]), exts):
        counts[0][cls] += 1
        if key in test_files and key not in shared and _same_file(path, test_files[key]):
            shared[key] = path
    problems += [f"{f / c} holds no image files ({', '.join(exts)})" for k, f in enumerate(folders)
                 for c in sorted(names[0] | names[1]) if c in names[k] and not counts[k][c]]
    if problems:
        raise ValueError("imagefolder: the train and test folders must hold the same classes, each with "
                         "images, or the labels of one split shift: " + "; ".join(problems)
                         + ". Remove or fill those folders.")
    if len(names[0]) < 2:
        _one_class(root, sorted(names[0]))
    if shared:
        n, total = len(shared), len(test_files)
        how_many = f"all {total}" if n == total else f"{n} of the {total}"
        examples = "; ".join(f"{test_files[k]} is {p}" for k, p in list(shared.items())[:3])
        raise ValueError(f"imagefolder: {how_many} image files of {folders[1]} {'is' if n == 1 else 'are'} also "
                         "training images (the same file reached through a symlink, a linked folder or a hard "
                         f"link), e.g. {examples}. The test accuracy would be measured on images the model trained "
                         f"on. Give {folders[1]} its own images, held out from training: remove the links (copy "
                         "files instead of linking them, and never into both splits).")
    return sorted(names[0])


def _affine(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(x / 255 - mean) / std`` as ``x * a - b``, per channel, shaped (3, 1, 1)."""
    m, s = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    return (1.0 / (255.0 * s)).astype(np.float32).reshape(-1, 1, 1), (m / s).astype(np.float32).reshape(-1, 1, 1)


def to_normalised_tensor(img, mean: Sequence[float], std: Sequence[float],
                         affine: tuple[np.ndarray, np.ndarray] | None = None) -> Tensor:
    """RGB PIL image -> float32 (3, H, W) tensor, ``(x / 255 - mean) / std``.

    Computed in numpy, one thread: torch's intra-op threads cost far more than this work on a
    224-px image when the loader runs in the main process (measured 30 ms vs 0.3 ms on 2 busy cores).
    ``affine`` is ``_affine(mean, std)``, precomputed."""
    a, b = _affine(mean, std) if affine is None else affine
    x = np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), dtype=np.float32)
    x *= a
    x -= b
    return torch.from_numpy(x)


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


def draft_jpeg(img, reduction: float) -> int:
    """Let a JPEG that is opened but not yet decoded decode at 1/k of its size, k the largest of 8, 4, 2
    with ``k <= reduction`` (libjpeg's DCT scaling: several times less decoding work), and return k;
    1 (nothing done) for another format, an image already decoded, or ``reduction < 2``.

    Full-size coordinates map to the reduced image by dividing by k exactly (Pillow's ``draft`` box).
    Callers pass as ``reduction`` the factor by which they will shrink the region they keep, so the
    region still has at least as many pixels as their output after the draft: a resize that reduces
    stays a reduction, and no detail the output could show is lost.
    """
    if reduction < 2 or getattr(img, "format", None) != "JPEG" or len(getattr(img, "tile", ())) != 1:
        return 1
    k = 8 if reduction >= 8 else 4 if reduction >= 4 else 2
    w, h = img.size
    # Pillow picks the largest scale 1/s, s in 8, 4, 2, 1, with s <= min(w // (w // k), h // (h // k)): exactly k
    drafted = img.draft("RGB", (w // k, h // k))
    if not drafted:
        return 1
    return int(round(w / drafted[1][2]))


class TrainTransform:
    """Random-resized crop to ``size`` x ``size``, horizontal flip with p=1/2, normalise.

    Draws from ``generator`` (the image's own, which `ImageFolderDataset` seeds from the sampler's
    per-image seed), or else from torch's global RNG. Given a
    JPEG that is opened but not yet decoded (what `ImageFolderDataset` passes), the crop is drawn on
    the full-size geometry first and, with ``draft=True``, the file is decoded at 1/2, 1/4 or 1/8
    scale when the crop still holds at least ``size`` pixels each way at that scale (`draft_jpeg`):
    the same crop, the same random draws, a reduction either way; only the resampling differs (the
    decoder's DCT scaling, then the bilinear reduction). Smaller crops, other formats and images
    already decoded take the full-size path.
    """

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, draft: bool = True,
                 strong_view: bool = False):
        self.size, self.scale, self.ratio, self.flip, self.mean, self.std = size, scale, ratio, flip, mean, std
        self.draft, self.strong_view = draft, bool(strong_view)
        self._affine = _affine(mean, std)

    def _crop_flip(self, img, generator: torch.Generator | None):
        """One random-resized crop and flip of the (undecoded or decoded) image, as an RGB PIL image."""
        Image = _pil()
        left, top, right, bottom = random_resized_crop_box(img.width, img.height, self.scale, self.ratio, generator)
        k = draft_jpeg(img, min(right - left, bottom - top) / self.size) if self.draft else 1
        img = img.convert("RGB")  # decodes (at 1/k scale after a draft)
        # resize with a box crops and resamples in one step (antialiased, like torchvision on PIL).
        img = img.resize((self.size, self.size), Image.BILINEAR, box=(left / k, top / k, right / k, bottom / k))
        if self.flip and float(torch.rand(1, generator=generator)) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return img

    def __call__(self, img, generator: torch.Generator | None = None):
        """The normalised crop; with ``strong_view`` the pair (weak, strong), the strong one its own crop
        and flip of the decoded image, then RandAugment + Cutout (`btkd.data.randaugment`). The weak
        view's draws come first, so it is the crop a one-view loader makes of the image."""
        if not self.strong_view:
            return to_normalised_tensor(self._crop_flip(img, generator), self.mean, self.std, self._affine)
        from .randaugment import draw_rand_augment, rand_augment

        img = img.convert("RGB")  # decoded once at full size, for both views
        weak = self._crop_flip(img, generator)
        strong = torch.from_numpy(np.asarray(self._crop_flip(img, generator), dtype=np.uint8).transpose(2, 0, 1).copy())
        strong = rand_augment(strong[None], draw_rand_augment(1, generator if generator is not None else torch.default_generator))[0]
        strong = to_normalised_tensor(strong.permute(1, 2, 0).numpy(), self.mean, self.std, self._affine)
        return to_normalised_tensor(weak, self.mean, self.std, self._affine), strong


class EvalTransform:
    """Resize the shorter side to ``resize_size`` (default size / 0.875, i.e. 256 for 224), then
    centre-crop ``size`` x ``size`` and normalise: the usual ImageNet evaluation. With ``draft=True``
    a JPEG whose shorter side is at least twice ``resize_size`` decodes at reduced scale first
    (`draft_jpeg`), as in `TrainTransform`."""

    def __init__(self, size: int, resize_size: int | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, draft: bool = True):
        self.size = size
        self.resize_size = resize_size if resize_size is not None else int(round(size / 0.875))
        if self.resize_size < size:
            raise ValueError(f"resize_size ({self.resize_size}) must be >= image_size ({size})")
        self.mean, self.std, self.draft = mean, std, draft
        self._affine = _affine(mean, std)

    def geometry(self, img):
        """The resized, centre-cropped RGB image (before normalisation)."""
        Image = _pil()
        w, h = img.size
        r = self.resize_size
        nw, nh = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
        k = draft_jpeg(img, min(w, h) / r) if self.draft else 1
        img = img.convert("RGB")
        img = img.resize((nw, nh), Image.BILINEAR, box=(0, 0, w / k, h / k))
        top = int(round((nh - self.size) / 2.0))
        left = int(round((nw - self.size) / 2.0))
        return img.crop((left, top, left + self.size, top + self.size))

    def __call__(self, img) -> Tensor:
        return to_normalised_tensor(self.geometry(img), self.mean, self.std, self._affine)


class ImageFolderDataset(Dataset):
    """``(image, class index)`` pairs from ``root/<class>/**/<file>``, in torchvision's order:
    classes sorted, then files sorted by path within each class.

    ``classes`` (default: the class folders of ``root``) fixes the label indices, e.g. to the list
    shared with another split; every one of them must be a folder holding images.

    The file list is held in numpy arrays (paths relative to ``root`` as fixed-width bytes, labels as
    int64), not as 1.28 million Python tuples: worker processes forked from the loader read it
    without touching reference counts, so its pages stay shared instead of being copied into every
    worker (PyTorch issue #13246). ``samples`` builds the torchvision-style list on demand.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS, classes: Sequence[str] | None = None):
        _pil()  # fail at construction, not in a worker, when Pillow is missing
        self.root = Path(root)
        self.transform = transform
        self.classes = list(classes) if classes is not None else find_classes(self.root)[0]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        exts = tuple(e.lower() for e in extensions)
        paths: list[bytes] = []
        self.targets: list[int] = []
        seen: set[str] = set()
        root_str = os.fspath(self.root)
        for cls in self.classes:
            if not (self.root / cls).is_dir():
                raise FileNotFoundError(f"imagefolder: expected the class folder {self.root / cls}, not found")
            start = len(paths)
            for dirpath, filenames in sorted(_walk(self.root / cls, self.root, seen)):
                rel = os.path.relpath(dirpath, root_str)
                paths += [os.fsencode(os.path.join(rel, f)) for f in filenames if f.lower().endswith(exts)]
            if len(paths) == start:  # an empty class would still take a label index
                raise ValueError(f"imagefolder: {self.root / cls} holds no image files ({', '.join(exts)}); "
                                 "remove the folder or add its images")
            self.targets += [self.class_to_idx[cls]] * (len(paths) - start)
        self._paths = np.array(paths, dtype=bytes)
        self._targets = np.array(self.targets, dtype=np.int64)

    def restrict(self, indices: Sequence[int]) -> None:
        """Keep only the images at ``indices`` (a subset; labels and class index unchanged)."""
        idx = np.asarray(indices, dtype=np.int64)
        self._paths, self._targets = self._paths[idx], self._targets[idx]
        self.targets = self._targets.tolist()

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(path, class index)`` for every image, as torchvision's ImageFolder lists them."""
        return [(self.path(i), int(t)) for i, t in enumerate(self._targets)]

    def path(self, index: int) -> str:
        return os.path.join(os.fspath(self.root), os.fsdecode(self._paths[index]))

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int | tuple[int, int]):
        """The image at ``index`` and its class. ``index`` may be a pair ``(index, seed)``, as
        `EpochOrder` gives for training: the transform's random draws then come from a generator of
        that seed, so an image's crop is a function of (seed, epoch, image) alone, whichever worker,
        process or resumed run reads it (a transform other than `TrainTransform` gets torch's global
        RNG seeded with it, in a forked RNG state)."""
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        Image = _pil()
        path, target = self.path(index), int(self._targets[index])
        # decoded here, so a damaged file is named when it is read (Pillow opens lazily)
        with reading(path, "an image", "re-copy it from its source or delete it"), open(path, "rb") as f:
            img = Image.open(f)
            # given the undecoded file, these two may decode a JPEG at reduced scale (`draft_jpeg`)
            if isinstance(self.transform, TrainTransform):
                generator = torch.Generator().manual_seed(seed) if seed is not None else None
                return self.transform(img, generator), target
            if isinstance(self.transform, EvalTransform):
                return self.transform(img), target
            img = img.convert("RGB")  # grey, palette and RGBA files all become RGB
        if self.transform is None:
            return img, target
        if seed is None:
            return self.transform(img), target
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img), target


# ---------------------------------------------------------------------------------------------
# the machine, the images' size and their statistics


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; what PyTorch compares ``num_workers`` with)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """DataLoader workers for one training process: the CPUs it may use, shared among the processes
    torchrun starts on this node (``LOCAL_WORLD_SIZE``), at most 8; at least 1."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, min(8, usable_cpus() // local))


def _class_files(folder: Path, cls: str, exts: tuple[str, ...]) -> list[str]:
    return [os.path.join(d, f) for d, files in _walk(folder / cls, folder, set()) for f in files
            if f.lower().endswith(exts)]


def sample_image_files(folder: str | os.PathLike, classes: Sequence[str], n: int, seed: int = 0,
                       extensions: Sequence[str] = IMG_EXTENSIONS) -> list[str]:
    """Up to ``n`` image files of ``folder/<class>/``, a seeded draw spread evenly over the classes
    (``ceil(n / classes)`` from each of a random subset of at most ``n`` classes), so only the class
    folders drawn are listed. The same arguments give the same files."""
    folder, exts = Path(folder), tuple(e.lower() for e in extensions)
    if n < 1 or not classes:
        return []
    rng = random.Random(seed)
    chosen = sorted(classes) if len(classes) <= n else sorted(rng.sample(sorted(classes), n))
    per_class = math.ceil(n / len(chosen))
    out: list[str] = []
    for cls in chosen:
        files = sorted(_class_files(folder, cls, exts))
        out += rng.sample(files, min(per_class, len(files)))
    return out[:n]


@functools.lru_cache(maxsize=16)
def _shorter_sides(folder: str, classes: tuple[str, ...], n: int) -> tuple[int, ...]:
    Image = _pil()
    sides = []
    for path in sample_image_files(folder, classes, n):
        with reading(path, "an image", "re-copy it from its source or delete it"), Image.open(path) as img:
            sides.append(min(img.size))  # the header only
    return tuple(sides)


def median_shorter_side(folder: str | os.PathLike, classes: Sequence[str], n: int = 32) -> int:
    """The median shorter side, in pixels, of a seeded sample of ``n`` images of ``folder`` (read from
    their headers only)."""
    sides = sorted(_shorter_sides(os.fspath(folder), tuple(classes), n))
    if not sides:
        raise ValueError(f"imagefolder: no image files in {folder}")
    return sides[len(sides) // 2]


@functools.lru_cache(maxsize=16)
def _stats(folder: str, classes: tuple[str, ...], image_size: int, n: int) -> tuple[tuple[float, ...], ...]:
    Image = _pil()
    geometry = EvalTransform(image_size)
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    for path in sample_image_files(folder, classes, n):
        with reading(path, "an image", "re-copy it from its source or delete it"), open(path, "rb") as f:
            img = geometry.geometry(Image.open(f))
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).reshape(-1, 3).double().div_(255.0)
        total += x.sum(0)
        squares += x.square().sum(0)
        pixels += x.shape[0]
    if not pixels:
        raise ValueError(f"imagefolder: no image files in {folder} to compute mean/std from")
    mean = total / pixels
    std = (squares / pixels - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def channel_stats(folder: str | os.PathLike, classes: Sequence[str], image_size: int,
                  samples: int = 500) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (R, G, B) mean and standard deviation, in [0, 1] units, of a seeded sample of
    ``samples`` images of ``folder`` (`sample_image_files`) as the evaluation transform shapes them
    (shorter side resized, centre crop of ``image_size``): every image weighs the same. Cached, so
    the loaders of one run compute it once and agree."""
    return _stats(os.fspath(folder), tuple(classes), int(image_size), int(samples))


def _check_stats(name: str, value) -> tuple[float, ...] | str:
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"imagefolder: {name}={value!r}; give 3 numbers (R, G, B, in [0, 1] units) or 'auto' "
                             "(computed from a sample of the training images)")
        return value
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"imagefolder: {name}={value!r}; give 3 numbers (R, G, B, in [0, 1] units) "
                         "or 'auto'") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out) or (name == "std" and min(out) <= 0):
        raise ValueError(f"imagefolder: {name}={value!r}; give 3 finite numbers (R, G, B)"
                         + (", each > 0" if name == "std" else "") + " or 'auto'")
    return out


# ---------------------------------------------------------------------------------------------
# the loader


class EpochOrder(torch.utils.data.Sampler):
    """The images this process reads in an epoch, in order: a permutation that is a pure function of
    (seed, epoch), shared out position by position among ``world_size`` processes, as `ResidentLoader`
    does for data on the device. So N processes with batch b together read the batches of one process
    with batch N * b, and a resumed run reads the order an uninterrupted one would. Training
    (``drop_last``) gives every process the same number of images; evaluation keeps them all.

    With ``augment_seeds`` it yields ``(index, seed)`` pairs, the seed a pure function of (seed,
    epoch, index) (`image_seeds`) that `ImageFolderDataset` draws the image's augmentation from, so the
    crops, too, are the same on any number of processes and workers and after a resume."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, augment_seeds: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, int(seed), shuffle, rank, world_size
        self.drop_last, self.epoch, self.augment_seeds = drop_last, 0, bool(augment_seeds)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n // self.world_size if self.drop_last else len(range(self.rank, self.n, self.world_size))

    def __iter__(self):
        from .gpu import epoch_seed

        order = (torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch)))
                 if self.shuffle else torch.arange(self.n))
        stop = self.rank + len(self) * self.world_size if self.drop_last else self.n
        mine = order[self.rank:stop:self.world_size].tolist()
        if not self.augment_seeds:
            return iter(mine)
        seeds = image_seeds(epoch_seed(self.seed, self.epoch, stream=2), mine)
        return iter(zip(mine, seeds.tolist()))


def image_seeds(base: int, indices: Sequence[int]) -> np.ndarray:
    """One 64-bit seed per image index, well mixed from ``base`` (splitmix64's finaliser), as uint64.
    torch's CPU generator seeds its Mersenne Twister with the low 32 bits, which this mixes fully."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as the hash means it to
        z = np.uint64(base) + (np.asarray(indices, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def imagefolder_loader(root: str | os.PathLike, split: str = "train", batch_size: int = 256,
                       image_size: int | str = 224, train: bool | None = None, workers: int | None = None, *,
                       resize_size: int | None = None, scale: Sequence[float] = (0.08, 1.0),
                       ratio: Sequence[float] = (3 / 4, 4 / 3), flip: bool = True, shuffle: bool | None = None,
                       drop_last: bool | None = None, seed: int = 0, pin_memory: bool | None = None,
                       prefetch_factor: int | None = None, draft: bool = True,
                       mean: Sequence[float] | str = IMAGENET_MEAN, std: Sequence[float] | str = IMAGENET_STD,
                       stats_samples: int = 500, classes: Sequence[str] | None = None, rank: int = 0,
                       world_size: int = 1, subset: int | None = None, subset_seed: int = 0,
                       strong_view: bool = False) -> DataLoader:
    """A DataLoader of ``(float32 [B, 3, S, S], int64 [B])`` over ``root/<split>/<class>/*``.

    ``split`` is a folder name: ``"train"``, or the test folder (``imagefolder_test_split(root)``
    gives ``"val"`` or ``"test"``). ``classes`` (default: ``imagefolder_classes(root)``, shared by
    both splits) fixes the label indices. ``train`` (default: ``split == "train"``) picks the
    training transform (random-resized crop with ``scale`` / ``ratio``, ``flip``), shuffling and
    drop_last; each can be overridden; evaluation resizes the shorter side to ``resize_size``
    (default ``image_size / 0.875``) and centre-crops. ``seed`` fixes the shuffle and, through a
    seed per image and epoch drawn by the sampler, every crop and flip, whichever worker or process
    makes it. ``loader.dataset.classes`` lists the
    classes, ``loader.dataset.transform`` the size, mean and std in use.

    Images are decoded and augmented in ``workers`` worker processes (default: the
    CPUs of this process, shared among torchrun's local processes, at most 8; a number above the
    CPUs this process may use is reduced to that number, as more only contend for the same cores),
    kept alive across epochs, ``prefetch_factor`` batches ahead per worker (PyTorch's default 2),
    into pinned memory when CUDA is available (``pin_memory``). ``draft`` decodes JPEGs at reduced
    scale when the crop allows it (the same crop, within about one level of 255).

    ``image_size`` is an int or ``"auto"``: the median shorter side of a sample of the training
    images. A size more than twice that median is upsampling every image, which a tree of small
    images given ImageNet's 224 gets silently otherwise: it warns, naming both. ``mean`` / ``std``
    are 3 numbers (default ImageNet's) or ``"auto"``: computed from ``stats_samples`` training
    images (the same for every split).

    The order (``loader.sampler``) is shuffled from (``seed``, epoch) when training (call
    ``loader.sampler.set_epoch(epoch)``), and shared out among ``world_size`` processes (this one is
    ``rank``). ``subset`` keeps a seeded, class-stratified draw of that many images (``subset_seed``).
    ``strong_view=True`` (training) adds a strongly augmented view for two-view hosts (MLKD): batches
    are then ``([x_weak, x_strong], y)``, the strong view its own random-resized crop and flip, then
    RandAugment and Cutout.
    """
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"imagefolder: expected the folder {folder} (layout {root}/{split}/<class>/<image>.jpg|png), not found"
        )
    classes = imagefolder_classes(root) if classes is None else list(classes)
    if len(classes) < 2:
        _one_class(f"classes={classes}", classes)
    train = (split == "train") if train is None else bool(train)
    mean, std = _check_stats("mean", mean), _check_stats("std", std)
    if isinstance(stats_samples, bool) or not isinstance(stats_samples, int) or stats_samples < 1:
        raise ValueError(f"imagefolder: stats_samples={stats_samples!r}; give a number of images >= 1")
    # sizes and statistics come from the training images, so that every split gets the same ones
    source = Path(root) / "train" if (Path(root) / "train").is_dir() else folder
    image_size = _resolve_image_size(image_size, source, classes)
    if "auto" in (mean, std):
        auto_mean, auto_std = channel_stats(source, classes, image_size, stats_samples)
        mean = auto_mean if mean == "auto" else mean
        std = auto_std if std == "auto" else std
    if strong_view and not train:
        raise ValueError("imagefolder: strong_view=True makes a second augmented training view; it needs train=True")
    transform = (TrainTransform(image_size, scale, ratio, flip=flip, mean=mean, std=std, draft=draft,
                                strong_view=strong_view) if train
                 else EvalTransform(image_size, resize_size, mean=mean, std=std, draft=draft))
    dataset = ImageFolderDataset(folder, transform, classes=classes)
    if subset is not None:
        from .subset import subset_indices

        try:
            dataset.restrict(subset_indices(torch.from_numpy(dataset._targets), subset, subset_seed).tolist())
        except ValueError as err:  # name the split, and the config's keys
            raise ValueError(f"imagefolder: subset={subset!r} of {folder}: {err} (data.train_subset / "
                             "data.test_subset in a config)") from None
    shuffle = train if shuffle is None else shuffle
    drop_last = train if drop_last is None else drop_last
    sampler = EpochOrder(len(dataset), seed, shuffle, rank, world_size, drop_last, augment_seeds=train)
    if drop_last and len(sampler) < batch_size:  # no batch at all: an epoch would train on nothing
        share = f" ({len(sampler)} for each of {world_size} processes)" if world_size > 1 else ""
        raise ValueError(f"imagefolder: {folder} gives {len(dataset)} training images{share}, fewer than one batch "
                         f"of {batch_size}, and training drops an incomplete batch; lower the batch "
                         "(data.global_batch_size or data.batch_size in a config) or give it more images "
                         "(data.train_subset)")
    if workers is None:
        workers = default_workers()
    elif int(workers) < 0:
        raise ValueError(f"imagefolder: workers={workers}; give 0 (load in this process) or more")
    workers = min(int(workers), usable_cpus())
    extra = {}
    if workers > 0:
        extra = dict(persistent_workers=True, prefetch_factor=2 if prefetch_factor is None else int(prefetch_factor))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


def _resolve_image_size(image_size: int | str, source: Path, classes: Sequence[str]) -> int:
    if image_size == "auto":
        return median_shorter_side(source, classes)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"imagefolder: image_size={image_size!r}; give a whole number of pixels >= 1 or 'auto' "
                         "(the median shorter side of the training images)")
    median = median_shorter_side(source, classes)
    if image_size > 2 * median:
        warnings.warn(f"imagefolder: image_size={image_size}, but the images of {source} are smaller: their median "
                      f"shorter side is {median} px (over a sample), so every image is upsampled about "
                      f"{image_size / median:.1f}x. Set the size you mean (data.image_size={median} trains at the "
                      "images' own size) if this is not it.", stacklevel=3)
    return image_size
