"""The data layer: local files only, nothing downloads.

``load_split(name, root, split)`` returns a whole split as a `Split` (uint8 NCHW images, int64
labels, normalisation stats) for the small datasets, meant to be fed to `ResidentLoader`;
`imagefolder_loader` streams larger ImageFolder trees through a standard DataLoader.
A missing file raises FileNotFoundError naming the file, the folder, and how to get it.
"""

from __future__ import annotations

import os
from typing import Callable

from .._checks import check_choice
from .base import Split
from .cifar import load_cifar10, load_cifar100, restricted_load, verify_checksums
from .digits import load_digits_split
from .fashion_mnist import load_fashion_mnist
from .gpu import ResidentLoader
from .imagefolder import imagefolder_classes, imagefolder_loader, imagefolder_test_split
from .synthetic import load_synthetic

#: name -> loader ``(root, split, **options) -> Split``: the datasets held whole in memory that
#: `load_split` and a config's ``data.name`` can name (``imagefolder`` trees are streamed instead).
#: Add your own: the trainer calls it with ``data.root`` (None when unset), ``"train"`` or
#: ``"test"``, and ``data.options`` as keyword arguments. A loader that names its classes
#: (``Split(..., classes=names)``) has them shown in reports; one that does not shows indices.
DATASETS: dict[str, Callable[..., Split]] = {
    "cifar100": load_cifar100,
    "cifar10": load_cifar10,
    "fashion_mnist": load_fashion_mnist,
    "digits": load_digits_split,
    "synthetic": load_synthetic,
}


def load_split(name: str, root: str | os.PathLike | None = None, split: str = "train", **kwargs) -> Split:
    """Load split ``"train"`` or ``"test"`` of dataset ``name`` (one of `DATASETS`).

    ``root`` None searches ``$BTKD_DATA/<name>``, ``data/<name>`` and ``../shared/data/<name>``
    (plus the Debian folder for Fashion-MNIST). Extra keyword arguments go to the loader, e.g.
    ``verify=True`` for the CIFARs, ``size``/``num_classes``/``image_size``/``seed`` for synthetic.
    An unknown name is a ValueError; a missing file a FileNotFoundError saying where to put it.
    """
    check_choice("dataset", name, DATASETS)
    return DATASETS[name](root, split, **kwargs)


__all__ = [
    "DATASETS", "Split", "load_split", "ResidentLoader", "imagefolder_loader", "imagefolder_classes",
    "imagefolder_test_split", "verify_checksums",
    "restricted_load", "load_cifar100", "load_cifar10", "load_fashion_mnist", "load_digits_split",
    "load_synthetic",
]
