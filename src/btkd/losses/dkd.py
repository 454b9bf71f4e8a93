"""Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022): TCKD + NCKD with a linear warm-up.

TCKD distils the binary (target vs. all non-target) probabilities, NCKD the distribution over the
non-target classes. Both are computed per sample in log space, so a student probability that
underflows to zero gives a large finite loss rather than inf.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .base import HostLoss, kl_per_sample, register_host


@register_host("dkd")
class DKD(HostLoss):
    """Per-sample warm(e) * (alpha * TCKD + beta * NCKD), each term multiplied by tau^2.

    warm(e) = ``scale(e)`` = min((floor(e) + 1) / warmup, 1) with e the 0-based epoch, which matches mdistiller's
    ``min(epoch / warmup, 1)`` with its 1-based epoch. ``warmup=0`` disables it.
    """

    default_ce_weight = 1.0
    default_kd_weight = 1.0

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, tau: float = 4.0, warmup: int = 20):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 epochs, got {warmup}")
        self.alpha, self.beta, self.tau, self.warmup = float(alpha), float(beta), float(tau), int(warmup)

    def scale(self, epoch: float) -> float:
        """The linear warm-up factor."""
        return 1.0 if self.warmup == 0 else min((math.floor(epoch) + 1) / self.warmup, 1.0)

    def per_sample(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                   target_probs: Optional[Tensor] = None) -> Tensor:
        if target_probs is not None:
            raise ValueError("DKD distils logits, not a probability target: use rectify='swap' or 'none'")
        s = torch.log_softmax(student_logits.float() / self.tau, dim=1)
        t = torch.log_softmax(teacher_logits.float() / self.tau, dim=1)
        is_gt = torch.zeros_like(s, dtype=torch.bool).scatter_(1, labels.unsqueeze(1), True)
        tckd = kl_per_sample(_binary(t, is_gt).exp(), _binary(s, is_gt))
        # NCKD: the distribution over the non-target classes, renormalised.
        s_nt = torch.log_softmax(s.masked_fill(is_gt, -math.inf), dim=1).masked_fill(is_gt, 0.0)
        t_nt = torch.softmax(t.masked_fill(is_gt, -math.inf), dim=1)
        nckd = kl_per_sample(t_nt, s_nt)
        return self.tau**2 * (self.alpha * tckd + self.beta * nckd)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, tau={self.tau}, warmup={self.warmup}"


def _binary(log_probs: Tensor, is_gt: Tensor) -> Tensor:
    """[log p(target), log p(not target)] per row, from log-probabilities."""
    log_gt = log_probs.masked_fill(~is_gt, -math.inf).logsumexp(dim=1)
    log_other = log_probs.masked_fill(is_gt, -math.inf).logsumexp(dim=1)
    return torch.stack([log_gt, log_other], dim=1)
