"""Hinton et al., "Distilling the Knowledge in a Neural Network" (2015): tau^2 KL at temperature tau."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._checks import check_positive
from .base import HostLoss, compute_dtype, kl_per_sample, register_host


@register_host("kd")
class KD(HostLoss):
    """Per-sample tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)).

    ``tau``: the temperature (> 0). The standard CIFAR-100 recipe's weights, CE 0.1 and KD 0.9, are
    the defaults of ``Distill`` and ``BTKD`` around it. Takes a probability target (``takes_probs``),
    so ``rectify="reweight"`` works with it."""

    paper = "Hinton et al., 2015 (arXiv 1503.02531): knowledge distillation (KD)"
    takes_probs = True
    default_ce_weight = 0.1  # the standard CIFAR-100 recipe (RepDistiller / mdistiller)
    default_kd_weight = 0.9

    def __init__(self, tau: float = 4.0):
        super().__init__()
        self.tau = check_positive("tau", tau)

    def per_sample(self, student_logits: Tensor, teacher_logits: Optional[Tensor], labels: Tensor,
                   target_probs: Optional[Tensor] = None) -> Tensor:
        dtype = compute_dtype(student_logits, teacher_logits, target_probs)
        if target_probs is None:
            target_probs = torch.softmax(teacher_logits.to(dtype) / self.tau, dim=1)
        student_log_probs = torch.log_softmax(student_logits.to(dtype) / self.tau, dim=1)
        target_probs = target_probs.to(dtype)
        return self.tau**2 * kl_per_sample(target_probs, student_log_probs)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"
