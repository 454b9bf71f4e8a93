"""Hinton et al., "Distilling the Knowledge in a Neural Network" (2015): tau^2 KL at temperature tau."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import HostLoss, kl_per_sample, register_host


@register_host("kd")
class KD(HostLoss):
    """Per-sample tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))."""

    takes_probs = True
    default_ce_weight = 0.1  # the standard CIFAR-100 recipe (RepDistiller / mdistiller)
    default_kd_weight = 0.9

    def __init__(self, tau: float = 4.0):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = float(tau)

    def per_sample(self, student_logits: Tensor, teacher_logits: Optional[Tensor], labels: Tensor,
                   target_probs: Optional[Tensor] = None) -> Tensor:
        if target_probs is None:
            target_probs = torch.softmax(teacher_logits.float() / self.tau, dim=1)
        student_log_probs = torch.log_softmax(student_logits.float() / self.tau, dim=1)
        return self.tau**2 * kl_per_sample(target_probs, student_log_probs)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"
