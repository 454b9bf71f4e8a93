"""Fashion-MNIST from its IDX files (``train-images-idx3-ubyte.gz`` and friends).

The default root is where Debian's ``dataset-fashion-mnist`` package puts them
(``apt-get install dataset-fashion-mnist``); torchvision's ``FashionMNIST/raw/`` folder works too,
as do the files un-gzipped.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np

from .._checks import damaged, reading
from .base import Split, check_split, missing, nhwc_to_split, resolve_root

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"

# Computed once over the 60,000 training images: x = images / 255; x.mean() = 0.28604,
# x.std() = 0.35302 (one channel, population std).
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
# The class names in label order, as Fashion-MNIST's README lists them.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_HOW_TO_GET = (
    "Install Debian's package ('apt-get install dataset-fashion-mnist', files land in "
    f"{DEBIAN_ROOT}), or copy the four IDX files of Fashion-MNIST "
    "(https://github.com/zalandoresearch/fashion-mnist, folder data/fashion) into the root."
)
_ADVICE = "re-copy it from its source (or reinstall dataset-fashion-mnist)"

# IDX type codes (third magic byte) -> numpy big-endian dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an IDX file: 2 zero bytes, a type code, the number of dims, then one big-endian
    uint32 per dim, then the values. Every field is checked so a truncated or mislabelled file
    fails here rather than yielding a wrongly shaped array."""
    if len(data) < 4:
        raise damaged(source, f"{len(data)} bytes is too short for an IDX header", _ADVICE)
    if data[0] != 0 or data[1] != 0:
        raise damaged(source, f"bad IDX magic {data[:4].hex()} (first two bytes must be 0); "
                      "is this a gzip file that was not decompressed?", _ADVICE)
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise damaged(source, f"unknown IDX type code 0x{code:02x}", _ADVICE)
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise damaged(source, f"IDX header declares {ndim} dims but the file is {len(data)} bytes", _ADVICE)
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize  # Python ints: huge damaged dims cannot overflow
    if len(data) - header != expected:
        raise damaged(source, f"IDX dims {dims} need {expected} bytes of data, found {len(data) - header}", _ADVICE)
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def _read(path: Path) -> bytes:
    if path.suffix == ".gz":
        with reading(path, "a gzip file", _ADVICE), gzip.open(path, "rb") as f:
            return f.read()  # gzip checks the CRC at the end: a damaged byte is an error here
    return path.read_bytes()


def load_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> Split:
    """Load a Fashion-MNIST split as uint8 (N, 1, 28, 28) images and 10 classes.

    ``root`` holds the IDX files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-...``; gzipped or not); None searches ``$BTKD_DATA/fashion_mnist``,
    ``data/fashion_mnist``, ``../shared/data/fashion_mnist`` and Debian's
    ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``). Missing files are a
    FileNotFoundError saying where to get them; damaged ones a ``btkd.DamagedFileError``."""
    split = check_split(split)
    img_stem, lbl_stem = _FILES[split]
    root = resolve_root("fashion_mnist", root, lambda p: _find(p, img_stem) is not None,
                        _HOW_TO_GET, extra=(DEBIAN_ROOT,))
    paths = {stem: _find(root, stem) for stem in (img_stem, lbl_stem)}
    absent = [s + ".gz" for s, p in paths.items() if p is None]
    if absent:
        raise missing("fashion_mnist", absent, root, _HOW_TO_GET)
    images = parse_idx(_read(paths[img_stem]), str(paths[img_stem]))
    labels = parse_idx(_read(paths[lbl_stem]), str(paths[lbl_stem]))
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise damaged(paths[img_stem], f"expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}", _ADVICE)
    if labels.dtype != np.uint8 or labels.shape != (images.shape[0],):
        raise damaged(paths[lbl_stem], f"expected {images.shape[0]} uint8 labels, got {labels.dtype} {labels.shape}",
                      _ADVICE)
    if labels.size and labels.max() >= 10:
        raise damaged(paths[lbl_stem], f"labels must lie in [0, 10), found values up to {labels.max()}", _ADVICE)
    return nhwc_to_split(images[..., None], labels, num_classes=10, mean=FASHION_MNIST_MEAN,
                         std=FASHION_MNIST_STD, name="fashion_mnist", classes=FASHION_MNIST_CLASSES)
