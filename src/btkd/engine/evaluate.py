"""Test-set evaluation: accuracy sums on the device, and scoring a checkpoint file."""

from __future__ import annotations

import contextlib
import os
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..models import load_checkpoint
from ..weights import resolve_checkpoint

__all__ = ["eval_sums", "eval_result", "autocast_for", "float32_forward", "forward_precision", "precision_name",
           "evaluate_checkpoint"]


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
                             # a fill kernel: torch.tensor(n, device=...) would wait for the GPU at every batch
                             torch.full((), y.numel(), dtype=torch.float64, device=y.device)])
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


@contextlib.contextmanager
def float32_forward(tf32: bool):
    """Run convolutions and matrix products in float32 with TF32 tensor cores (``tf32=True``) or
    without them (IEEE fp32), whatever the run's global setting; restored on exit. A run that
    autocasts to bf16 allows TF32 globally, so an "fp32" forward inside it would otherwise be TF32.
    The flags are read when a kernel is chosen, so this also holds for a forward captured in a CUDA
    graph. No effect on the CPU."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


PRECISIONS = ("bf16", "fp32", "tf32")


def precision_name(amp_dtype: Optional[torch.dtype]) -> str:
    """How meta.json names a forward's precision: ``fp32`` without autocast, else ``bf16`` / ``fp16``,
    the names runtime.precision and runtime.teacher_precision take, so that a teacher forward set to
    ``same`` and one set explicitly compare equal when they are the same."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, str(amp_dtype))


def forward_precision(precision: str, device: torch.device, cache_enabled: bool = True):
    """A context-manager factory for a forward in ``precision``: ``bf16`` (autocast), ``fp32`` (IEEE
    fp32: no TF32) or ``tf32`` (float32 tensors, TF32 tensor cores in convolutions and matrix
    products: PyTorch's default for convolutions on Ampere and newer GPUs)."""
    if precision == "bf16":
        return autocast_for(torch.bfloat16, device, cache_enabled)
    if precision in ("fp32", "tf32"):
        return lambda: float32_forward(precision == "tf32")
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def evaluate_checkpoint(cfg: Config, checkpoint: os.PathLike) -> Dict[str, float]:
    """Test accuracy of ``cfg.model.student`` with the weights in ``checkpoint`` on ``cfg.data``, in
    the precision ``cfg.runtime.precision`` asks for (auto: bf16 autocast on CUDA, fp32 on CPU)."""
    from .build import build_data, build_for_data, setup_runtime
    from .distributed import all_reduce_sum

    rt = setup_runtime(cfg)
    data = build_data(cfg, rt, train=False)
    model = build_for_data(cfg.model.student, cfg.model.student_options, data.num_classes, data.in_channels)
    load_checkpoint(model, resolve_checkpoint(str(checkpoint)))  # a path, or weights:NAME
    model.to(rt.device, memory_format=rt.memory_format)
    # under torchrun each process scores its share of the test set: add them up
    stats = eval_sums(model, data.test_loader, autocast_for(rt.amp_dtype, rt.device))
    return eval_result(all_reduce_sum(stats, rt.ctx))
