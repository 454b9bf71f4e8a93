"""Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
Normalized Loss and Customized Soft Labels" (ICCV 2023): NKD, normalised knowledge distillation.

KD's loss is split into a target part and a non-target part; the non-target part is normalised so
that its size no longer depends on the teacher's target probability (Sec. 3, the NKD loss):

    L_NKD = - T_t log S_t  -  gamma * tau^2 * sum_{i != t} N(T_i^tau) log N(S_i^tau)

T and S are the teacher's and student's softmax at temperature 1 (target part), and N(X_i^tau) is
the softmax at temperature tau over the non-target classes only (the non-target probabilities
renormalised to sum to 1). Both parts are cross-entropies, as in the paper (not KL divergences), so
the loss is not 0 when student and teacher agree; its gradients are those of the KL form.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .._checks import check_positive, check_weight
from .base import HostLoss, compute_dtype, register_host


@register_host("nkd")
class NKD(HostLoss):
    """Per-sample NKD loss: the target term at temperature 1 plus ``gamma * tau^2`` times the
    normalised non-target cross-entropy at temperature ``tau``.

    Defaults are the authors' CIFAR-100 setting (cls_KD ``configs/distillers/cifar100``: temp 3.0,
    gamma 3.5); their ImageNet setting is ``tau=1.0, gamma=1.5``. CE weight 1 and loss weight 1.
    """

    paper = "Yang et al., ICCV 2023 (arXiv 2303.13005): normalized KD (NKD)"
    default_ce_weight = 1.0
    default_kd_weight = 1.0

    def __init__(self, tau: float = 3.0, gamma: float = 3.5):
        super().__init__()
        self.tau = check_positive("tau", tau)
        self.gamma = check_weight("gamma", gamma)

    def per_sample(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                   target_probs: Optional[Tensor] = None) -> Tensor:
        if target_probs is not None:
            raise ValueError("NKD distils logits (its two parts use two temperatures), not a probability target: "
                             "use rectify='swap' or 'none'")
        dtype = compute_dtype(student_logits, teacher_logits)
        s, t = student_logits.to(dtype), teacher_logits.to(dtype)
        label = labels.unsqueeze(1)
        # target part: - T_t log S_t at temperature 1
        s_t = torch.log_softmax(s, dim=1).gather(1, label).squeeze(1)
        t_t = torch.softmax(t, dim=1).gather(1, label).squeeze(1)
        target = -t_t * s_t
        # non-target part: softmax over the other classes at temperature tau, in log space
        is_gt = torch.zeros_like(s, dtype=torch.bool).scatter_(1, label, True)
        s_nt = torch.log_softmax((s / self.tau).masked_fill(is_gt, -math.inf), dim=1).masked_fill(is_gt, 0.0)
        t_nt = torch.log_softmax((t / self.tau).masked_fill(is_gt, -math.inf), dim=1)
        t_nt = t_nt.exp().masked_fill(is_gt, 0.0)
        non_target = -(t_nt * s_nt).sum(dim=1)
        return target + self.gamma * self.tau**2 * non_target

    def extra_repr(self) -> str:
        return f"tau={self.tau}, gamma={self.gamma}"
