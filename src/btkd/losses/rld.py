"""Sun et al., "Knowledge Distillation with Refined Logits" (arXiv 2408.07703): RLD.

RLD keeps the teacher's knowledge but removes what a wrong prediction would teach (Sec. 3):

- Sample confidence distillation (SCD): the teacher's *sample confidence*, the binary distribution
  b^T = [p^T_k, 1 - p^T_k] of its top class k, is distilled into the student's binary distribution
  of the *label*, b^S = [p^S_y, 1 - p^S_y], both at temperature ``alpha_tau``:
  SCD = alpha_tau^2 * KL(b^T || b^S). The student learns how confident to be, on the true class.
- Masked correlation distillation (MCD): every class the teacher ranks at or above the label
  (z^T_c >= z^T_y, the label included) is masked out, and the teacher's distribution over the
  remaining classes (softmax at ``tau`` over them) is distilled into the student's over the same
  classes: MCD = tau^2 * KL(softmax(z^T / tau | kept) || softmax(z^S / tau | kept)). A row with no
  class below the label contributes 0.

L = warm(e) * (alpha * SCD + beta * MCD) with DKD's linear warm-up over the first ``warmup`` epochs.
RLD repairs wrong teachers by itself, so BTKD refuses it (``rectifies = True``): use it alone.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .._checks import check_positive, check_weight
from .base import HostLoss, check_warmup, compute_dtype, kl_per_sample, register_host, warmup_scale
from .dkd import _binary


@register_host("rld")
class RLD(HostLoss):
    """Per-sample warm(e) * (alpha * SCD + beta * MCD); defaults are the authors' CIFAR-100 ones
    (CE 1, ``alpha`` 1, ``beta`` 8, SCD temperature ``alpha_tau`` 1, MCD temperature ``tau`` 4,
    ``warmup`` 20 epochs, as DKD's). SCD distils the teacher's confidence in its top class into the
    student's confidence in the true class; MCD distils the teacher's distribution over the classes it
    ranks below the label (btkd/losses/rld.py). It repairs a wrong teacher itself, so BTKD refuses it:
    use it with ``Distill``."""

    paper = "Sun et al., arXiv 2408.07703 (2024): refined logit distillation (RLD)"
    needs = ("epoch",)
    rectifies = True
    default_ce_weight = 1.0
    default_kd_weight = 1.0

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, tau: float = 4.0, alpha_tau: float = 1.0,
                 warmup: int = 20):
        super().__init__()
        self.alpha, self.beta = check_weight("alpha", alpha), check_weight("beta", beta)
        self.tau = check_positive("tau", tau)
        self.alpha_tau = check_positive("alpha_tau", alpha_tau)
        self.warmup = check_warmup(warmup)

    def scale(self, epoch: float) -> float:
        """The linear warm-up factor (as DKD's: min((floor(e) + 1) / warmup, 1), e 0-based)."""
        return warmup_scale(epoch, self.warmup)

    def per_sample(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                   target_probs: Optional[Tensor] = None) -> Tensor:
        if target_probs is not None:
            raise ValueError("RLD distils logits, not a probability target")
        dtype = compute_dtype(student_logits, teacher_logits)
        s, t = student_logits.to(dtype), teacher_logits.to(dtype)
        label = labels.unsqueeze(1)
        # SCD: teacher's confidence in its top class -> student's confidence in the label
        is_top = torch.zeros_like(t, dtype=torch.bool).scatter_(1, t.argmax(dim=1, keepdim=True), True)
        is_gt = torch.zeros_like(s, dtype=torch.bool).scatter_(1, label, True)
        b_t = _binary(torch.log_softmax(t / self.alpha_tau, dim=1), is_top)
        b_s = _binary(torch.log_softmax(s / self.alpha_tau, dim=1), is_gt)
        scd = self.alpha_tau**2 * kl_per_sample(b_t.exp(), b_s)
        # MCD: the classes the teacher ranks strictly below the label, renormalised
        masked = t >= t.gather(1, label)  # the label and everything the teacher puts above it
        any_kept = (~masked).any(dim=1, keepdim=True)
        s_m = torch.where(any_kept, (s / self.tau).masked_fill(masked, -math.inf), torch.zeros_like(s))
        t_m = torch.where(any_kept, (t / self.tau).masked_fill(masked, -math.inf), torch.zeros_like(t))
        s_log = torch.log_softmax(s_m, dim=1).masked_fill(masked, 0.0)
        t_log = torch.log_softmax(t_m, dim=1).masked_fill(masked, 0.0)
        t_p = t_log.exp().masked_fill(masked, 0.0)
        mcd = self.tau**2 * (t_p * (t_log - s_log)).sum(dim=1) * any_kept.squeeze(1).to(dtype)
        return self.alpha * scd + self.beta * mcd

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, tau={self.tau}, alpha_tau={self.alpha_tau}, "
                f"warmup={self.warmup}")
