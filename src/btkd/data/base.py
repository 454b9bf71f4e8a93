"""The `Split` container and the helpers every loader shares (root lookup, split check, errors)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .._checks import check_choice

SPLITS = ("train", "test")

# Folders searched, in order, when a loader is called with root=None. They are relative to the
# current directory so that a run started from the repo root finds `data/<name>` or the
# project's shared copy next to the repo; BTKD_DATA (a folder holding `<name>/`) comes first.
DEFAULT_DATA_DIRS = ("data", os.path.join("..", "shared", "data"))


def check_layout(shape: Sequence[int], mean: Sequence[float], std: Sequence[float], prefix: str = "") -> None:
    """Images (N, C, H, W) with one mean and std per channel, on the [0, 1] scale they are normalised on."""
    c, w = shape[1], shape[3]
    if c not in (1, 3) and w in (1, 3):
        raise ValueError(f"{prefix}images of shape {tuple(shape)} look channels-last (N, H, W, C); they must be "
                         "(N, C, H, W): pass images.permute(0, 3, 1, 2)")
    if len(mean) != c or len(std) != c or any(s <= 0 for s in std):
        raise ValueError(f"{prefix}mean/std need {c} values (one per channel, std > 0), got {tuple(mean)} / "
                         f"{tuple(std)}")
    if max(*mean, *std) > 1:  # pixels are divided by 255 before they are normalised
        raise ValueError(f"{prefix}mean/std are on the [0, 1] scale of the pixels divided by 255, got {tuple(mean)} / "
                         f"{tuple(std)}: divide them by 255")


@dataclass(frozen=True, eq=False)  # eq on tensors would be ambiguous
class Split:
    """One split of a dataset, held whole in memory.

    ``images`` is uint8 NCHW (the compact form: normalisation happens per batch, on the device),
    ``labels`` int64 (N,), ``mean``/``std`` per channel in [0, 1] for normalising ``images / 255``.
    ``classes`` names the classes, index by index (``classes[47]`` is class 47's name), for what a user
    reads (``btkd inspect-teacher``); None, the default, leaves them as bare indices.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    classes: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        # Every loader funnels through here, so a malformed file fails at load time with the
        # dataset's name, not deep inside a training step.
        x, y = self.images, self.labels
        k = self.num_classes
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
            # one class trains to a meaningless 100 %; a float count would fail later, inside a model
            raise ValueError(f"{self.name}: num_classes must be a whole number >= 2 (a classifier of one class is "
                             f"always right), got {k!r}")
        object.__setattr__(self, "num_classes", int(k))
        if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"{self.name}: images must be a uint8 tensor (N, C, H, W), got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
        if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise ValueError(f"{self.name}: labels must be an int64 tensor ({x.shape[0]},), got "
                             f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
        check_layout(x.shape, self.mean, self.std, f"{self.name}: ")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"{self.name}: labels must lie in [0, {self.num_classes}), "
                             f"got values in [{int(y.min())}, {int(y.max())}]")
        if self.classes is not None:
            names = self.classes
            if isinstance(names, (list, tuple)):
                bad = [c for c in names if not isinstance(c, str) or not c]
            else:
                bad = [names]
            if bad:
                raise ValueError(f"{self.name}: classes must be a list or tuple of non-empty strings, one per class "
                                 f"in label order, got {bad[0]!r}")
            names = tuple(names)
            if len(names) != self.num_classes:
                raise ValueError(f"{self.name}: {len(names)} class names for {self.num_classes} classes: give one "
                                 "name per class, in label order (or classes=None)")
            object.__setattr__(self, "classes", names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def check_split(split: str) -> str:
    return check_choice("split", split, SPLITS)


def nhwc_to_split(x: np.ndarray, y: np.ndarray, **meta) -> Split:
    """Wrap numpy NHWC uint8 images and integer labels as a `Split` (NCHW, contiguous)."""
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(np.asarray(y).astype(np.int64, copy=False))
    return Split(images=images, labels=labels, **meta)


def candidate_roots(name: str, extra: Sequence[str] = ()) -> list[Path]:
    """Where to look for dataset ``name`` when no root is given, most specific first."""
    dirs: list[Path] = []
    env = os.environ.get("BTKD_DATA")
    if env:
        dirs.append(Path(env) / name)
    dirs += [Path(d) / name for d in DEFAULT_DATA_DIRS]
    dirs += [Path(e) for e in extra]
    return dirs


def resolve_root(name: str, root: str | os.PathLike | None, found, how_to_get: str,
                 extra: Sequence[str] = ()) -> Path:
    """Return ``root`` (if given) or the first default folder where ``found(path)`` is true.

    With root=None and nothing found, raise FileNotFoundError naming every folder tried, so the
    user sees at once where the data was expected and how to put it there.
    """
    if root is not None:
        return Path(root)
    tried = candidate_roots(name, extra)
    for path in tried:
        if path.is_dir() and found(path):
            return path
    listing = ", ".join(str(p) for p in tried)
    raise FileNotFoundError(
        f"{name}: no root given and no data found in the default folders ({listing}). "
        f"Pass data.root=... (--root for btkd eval), or set BTKD_DATA to a folder holding '{name}/'. {how_to_get}"
    )


def missing(name: str, expected: Iterable[str | os.PathLike], where: str | os.PathLike, how_to_get: str) -> FileNotFoundError:
    """A FileNotFoundError that says which file(s) were expected, in which folder, and how to get them."""
    files = ", ".join(str(e) for e in expected)
    return FileNotFoundError(f"{name}: expected {files} in {where!s}, not found. {how_to_get}")
