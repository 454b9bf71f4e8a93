"""scikit-learn's 8x8 handwritten digits: a tiny real dataset that ships inside the sklearn wheel,
so it needs no download and suits quick end-to-end checks."""

from __future__ import annotations

import os

import numpy as np

from .._checks import MissingExtra
from .base import Split, check_split, nhwc_to_split

NUM_TRAIN = 1437  # floor(0.8 * 1797)
SPLIT_SEED = 0

# Over the 1437 training images after scaling to 0..255: x = images / 255; mean 0.30550,
# std 0.37587 (population std). Recompute if NUM_TRAIN or SPLIT_SEED change.
DIGITS_MEAN = (0.3055,)
DIGITS_STD = (0.3759,)
DIGITS_CLASSES = tuple(str(d) for d in range(10))  # class k is the digit k


def load_digits_split(root: str | os.PathLike | None = None, split: str = "train") -> Split:
    """Load the digits as uint8 (N, 1, 8, 8), values 0..16 scaled to 0..255.

    The split is fixed: ``numpy.random.default_rng(0).permutation(1797)``, the first 1437 are
    train and the other 360 test, so every run and machine sees the same split. ``root`` is unused.
    Needs scikit-learn (the ``[digits]`` extra); without it, an ImportError saying what to install.
    """
    split = check_split(split)
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise MissingExtra("the 'digits' dataset needs scikit-learn: pip install 'btkd[digits]'") from e
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    idx = perm[:NUM_TRAIN] if split == "train" else perm[NUM_TRAIN:]
    return nhwc_to_split(images[idx][..., None], d.target[idx], num_classes=10,
                         mean=DIGITS_MEAN, std=DIGITS_STD, name="digits", classes=DIGITS_CLASSES)
