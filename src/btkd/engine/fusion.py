"""Fold a frozen teacher's BatchNorm layers into the convolutions before them.

In eval mode BN is an affine map, so conv + BN is one conv with adjusted weights and bias: the
same function with a third fewer kernels, which matters when a small batch is launch-bound.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .evaluate import float32_forward


def fold_batchnorm(model: nn.Module, example: torch.Tensor, rtol: float = 1e-3) -> nn.Module:
    """A BN-folded copy of ``model`` (in eval mode), or ``model`` itself when it cannot be traced
    or the folded copy does not reproduce its outputs on ``example`` within ``rtol``."""
    from torch.fx.experimental.optimization import fuse

    model = model.eval()
    try:
        folded = fuse(copy.deepcopy(model))
    except Exception as err:  # not symbolically traceable (data-dependent control flow)
        warnings.warn(f"teacher BN folding skipped for {type(model).__name__}: {type(err).__name__}: {err}")
        return model
    # IEEE fp32 for both: a bf16 run allows TF32 globally, whose rounding alone comes near rtol
    with torch.no_grad(), float32_forward(tf32=False):
        want, got = model(example).float(), folded(example).float()
    error = ((got - want).norm() / want.norm().clamp(min=1e-12)).item()
    if error > rtol:
        warnings.warn(f"teacher BN folding skipped for {type(model).__name__}: relative error {error:.2e}")
        return model
    return folded.requires_grad_(False)


def is_folded(model: nn.Module) -> bool:
    """Whether ``model`` is what `fold_batchnorm` made of a teacher (not the teacher it returned
    unchanged because folding was skipped)."""
    return isinstance(model, torch.fx.GraphModule)
