"""Argument checks shared by the core: every error names the argument and what was expected."""

from __future__ import annotations

import difflib
from typing import Iterable

import torch
from torch import Tensor


def check_choice(arg: str, value: object, valid: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``valid``; otherwise raise a ValueError listing them."""
    valid = list(valid)
    if isinstance(value, str) and value in valid:
        return value
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value, valid, n=1)
        if close:
            hint = f" Did you mean {close[0]!r}?"
    raise ValueError(f"{arg}={value!r} is not a valid option; expected one of {valid}.{hint}")


def check_logits(arg: str, logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise ValueError(f"{arg} must be a torch.Tensor of shape [N, C], got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{arg} must have shape [N, C] (batch, classes), got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError(f"{arg} is an empty batch (shape {tuple(logits.shape)}); pass at least one sample")
    if logits.shape[1] < 2:
        raise ValueError(f"{arg} must have at least 2 classes, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{arg} must be a floating-point tensor, got dtype {logits.dtype}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(
            f"{arg} contains NaN or infinite values; check the model output "
            "(a diverged run, a too-high learning rate, or fp16 overflow)"
        )


def check_labels(labels: Tensor, num_samples: int, num_classes: int, arg: str = "labels") -> None:
    if not isinstance(labels, Tensor):
        raise ValueError(f"{arg} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise ValueError(
            f"{arg} must be an integer tensor of class indices (torch.long), got dtype {labels.dtype}; "
            "one-hot or soft labels are not accepted: pass labels.argmax(1)"
        )
    if labels.shape != (num_samples,):
        raise ValueError(f"{arg} must have shape [{num_samples}] to match the logits, got {tuple(labels.shape)}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{arg} must lie in [0, {num_classes}) for {num_classes} classes, got values in [{lo}, {hi}]")


def check_pair(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> None:
    """Validate one distillation batch: student and teacher logits [N, C] and labels [N]."""
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must have the same shape [N, C], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}; do the two models "
            "have the same number of classes?"
        )
    check_labels(labels, student_logits.shape[0], student_logits.shape[1])


def check_epoch(epoch: float, epochs: int) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer (the length of training), got {epochs!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
        raise ValueError(f"epoch must be a number in [0, {epochs}), got {epoch!r}")
    if not (0 <= epoch < epochs):
        raise ValueError(
            f"epoch must lie in [0, epochs) = [0, {epochs}) (0-based), got {epoch!r}; "
            "pass the 0-based epoch index, e.g. epoch=e for e in range(epochs)"
        )
