"""Test-set evaluation: accuracy sums on the device, and scoring a checkpoint file."""

from __future__ import annotations

import contextlib
import os
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..models import load_checkpoint
from ..weights import resolve_checkpoint

__all__ = ["eval_sums", "eval_result", "autocast_for", "evaluate_checkpoint"]


@torch.no_grad()
def eval_sums(model: nn.Module, loader, autocast=contextlib.nullcontext) -> Tensor:
    """[correct@1, correct@5, summed CE loss, count] over ``loader``, accumulated on the device."""
    was_training = model.training
    model.eval()
    stats = None
    loader.set_epoch(0)
    for x, y in loader:
        with autocast():
            logits = model(x)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        batch = torch.stack([(top[:, 0] == y).sum().double(), (top == y[:, None]).any(dim=1).sum().double(),
                             F.cross_entropy(logits, y, reduction="sum").double(),
                             torch.tensor(y.numel(), dtype=torch.float64, device=y.device)])
        stats = batch if stats is None else stats + batch
    model.train(was_training)
    return stats


def eval_result(stats: Tensor) -> Dict[str, float]:
    c1, c5, loss, n = stats.tolist()
    return {"acc": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n, "n": int(n)}


def autocast_for(amp_dtype, device: torch.device, cache_enabled: bool = True):
    """The one autocast helper: a context-manager factory that autocasts to ``amp_dtype`` on
    ``device``, or does nothing for fp32. The weight cache must be off while a CUDA graph is captured."""
    if amp_dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=amp_dtype, cache_enabled=cache_enabled)


def evaluate_checkpoint(cfg: Config, checkpoint: os.PathLike) -> Dict[str, float]:
    """Test accuracy of ``cfg.model.student`` with the weights in ``checkpoint`` on ``cfg.data``, in
    the precision ``cfg.runtime.precision`` asks for (auto: bf16 autocast on CUDA, fp32 on CPU)."""
    from .build import build_data, build_for_data, setup_runtime

    rt = setup_runtime(cfg)
    data = build_data(cfg, rt, train=False)
    model = build_for_data(cfg.model.student, cfg.model.student_options, data.num_classes, data.in_channels)
    load_checkpoint(model, resolve_checkpoint(str(checkpoint)))  # a path, or weights:NAME
    model.to(rt.device, memory_format=rt.memory_format)
    return eval_result(eval_sums(model, data.test_loader, autocast_for(rt.amp_dtype, rt.device)))
