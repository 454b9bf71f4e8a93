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

from .._checks import check_positive, check_weight
from .base import HostLoss, check_warmup, compute_dtype, kl_per_sample, register_host, warmup_scale


@register_host("dkd")
class DKD(HostLoss):
    """Per-sample warm(e) * (alpha * TCKD + beta * NCKD), each term multiplied by tau^2.

    warm(e) = ``scale(e)`` = min((floor(e) + 1) / warmup, 1) with e the 0-based epoch, which matches mdistiller's
    ``min(epoch / warmup, 1)`` with its 1-based epoch. ``warmup=0`` disables it. TCKD distils the
    binary target / non-target probabilities, NCKD the distribution over the non-target classes, both
    at temperature ``tau``. The defaults and the weights (CE 1, KD 1) are DKD's CIFAR-100 recipe;
    the loss depends on the epoch, so pass ``epoch=`` and ``epochs=``.
    """

    paper = "Zhao et al., CVPR 2022 (arXiv 2203.08679): decoupled KD (DKD)"
    needs = ("epoch",)
    default_ce_weight = 1.0
    default_kd_weight = 1.0

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, tau: float = 4.0, warmup: int = 20):
        super().__init__()
        self.alpha, self.beta = check_weight("alpha", alpha), check_weight("beta", beta)
        self.tau = check_positive("tau", tau)
        self.warmup = check_warmup(warmup)

    def scale(self, epoch: float) -> float:
        """The linear warm-up factor."""
        return warmup_scale(epoch, self.warmup)

    def per_sample(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                   target_probs: Optional[Tensor] = None) -> Tensor:
        if target_probs is not None:
            raise ValueError("DKD distils logits, not a probability target: use rectify='swap' or 'none'")
        dtype = compute_dtype(student_logits, teacher_logits)
        s = torch.log_softmax(student_logits.to(dtype) / self.tau, dim=1)
        t = torch.log_softmax(teacher_logits.to(dtype) / self.tau, dim=1)
        is_gt = torch.zeros_like(s, dtype=torch.bool).scatter_(1, labels.unsqueeze(1), True)
        tckd = kl_per_sample(_binary(t, is_gt).exp(), _binary(s, is_gt))
        # NCKD: the distribution over the non-target classes, renormalised. The teacher's side is
        # kept in log space too: its target probability is exactly 0, and xlogy(0, 0) has a NaN
        # gradient with respect to a teacher that requires grad.
        s_nt = torch.log_softmax(s.masked_fill(is_gt, -math.inf), dim=1).masked_fill(is_gt, 0.0)
        t_nt = torch.log_softmax(t.masked_fill(is_gt, -math.inf), dim=1).masked_fill(is_gt, 0.0)
        nckd = (t_nt.exp().masked_fill(is_gt, 0.0) * (t_nt - s_nt)).sum(dim=1)
        return self.tau**2 * (self.alpha * tckd + self.beta * nckd)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, tau={self.tau}, warmup={self.warmup}"


def _binary(log_probs: Tensor, is_gt: Tensor) -> Tensor:
    """[log p(target), log p(not target)] per row, from log-probabilities."""
    log_gt = log_probs.masked_fill(~is_gt, -math.inf).logsumexp(dim=1)
    log_other = log_probs.masked_fill(is_gt, -math.inf).logsumexp(dim=1)
    return torch.stack([log_gt, log_other], dim=1)
