"""Seeded, class-stratified subsets of a split (``data.train_subset`` / ``data.test_subset``).

Taking the first N images is wrong on files sorted by class (2,000 CIFAR test images sorted by
class would be two classes). A subset is a random draw that keeps each class's share.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any, Dict, Tuple

import torch
from torch import Tensor

from .base import Split

__all__ = ["subset_indices", "take_subset"]


def subset_indices(labels: Tensor, n: int, seed: int) -> Tensor:
    """``n`` distinct indices, sorted, drawn at random with each class's share of ``labels`` kept:
    class k gets floor(n * count_k / N) places, and the places left go to the largest remainders
    (ties broken at random). A pure function of (labels, n, seed)."""
    total = labels.numel()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
        raise ValueError(f"a subset needs 1 <= n <= {total} (the split's size), got {n!r}")
    g = torch.Generator().manual_seed(int(seed))
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * n / total
    quota = exact.floor().long()
    left = n - int(quota.sum())
    if left:
        # Largest remainder first; a random jitter far below the remainders' gaps breaks ties.
        jitter = torch.rand(len(classes), generator=g, dtype=torch.float64) * 1e-9
        quota[torch.argsort(exact - quota + jitter, descending=True)[:left]] += 1
    picks = []
    for cls, k in zip(classes.tolist(), quota.tolist()):
        members = (labels == cls).nonzero().flatten()
        picks.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(picks).sort().values


def take_subset(split: Split, n: int, seed: int) -> Tuple[Split, Dict[str, Any]]:
    """The subset of ``split`` and a record of it for ``meta.json`` (enough to redraw and check it)."""
    idx = subset_indices(split.labels, n, seed)
    record = {"n": n, "of": len(split), "seed": int(seed), "draw": "random, stratified by class",
              "indices_sha256": hashlib.sha256(idx.numpy().astype("<i8").tobytes()).hexdigest()}
    return replace(split, images=split.images[idx], labels=split.labels[idx]), record
