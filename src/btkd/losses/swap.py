"""Rivals that correct a wrong teacher by swapping logits, with no split and no schedule.

- ``label_swap``: plain KD towards ``rectify_swap(teacher)`` on every sample (a no-op on the rows the
  teacher gets right): the rectification alone, the baseline BTKD's split and dynamic weighting add to.
- ``sld``: Limantoro et al., "Swapped Logit Distillation via Bi-level Teacher Alignment" (arXiv
  2504.20108, Multimedia Systems 2025). The same swap on the teacher's logits, and on the student's
  own logits, which become a second ("pseudo") teacher from a set epoch on (the loss scheduling), both
  distilled with KD at several temperatures (the prediction augmentation SLD takes from MLKD):

      L_SLD = sum_{tau in taus} tau^2 [ KL(softmax(swap(zT) / tau) || softmax(zS / tau))
                                        + 1[e >= student_from] KL(softmax(swap(zS) / tau) || softmax(zS / tau)) ]

  with taus = 1..6 and the student term from epoch 150 of 240 (the authors' code: ``epoch > 150``
  with 1-based epochs, i.e. 0-based e >= 150), CE 0.1 and KD 0.9 per term. The student's swapped
  logits are a *target*: they are detached here (the authors' code lets the gradient flow through
  them as well). As in the authors' code (built on MLKD's), the loss is taken on a weak and a strong
  view of each image and the two add up, with CE on both (``views=2``, the default; ``views=1``
  distils the weak view only).

Both already rectify, so BTKD refuses them (``rectifies = True``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .._checks import check_positive, check_real
from ..bias import rectify_swap
from .base import HostLoss, check_taus, compute_dtype, kl_log_per_sample, register_host


def _kd_log(student: Tensor, target: Tensor, tau: float) -> Tensor:
    """tau^2 * KL(softmax(target / tau) || softmax(student / tau)) per row, in log space."""
    return tau**2 * kl_log_per_sample(torch.log_softmax(target / tau, dim=1), torch.log_softmax(student / tau, dim=1))


@register_host("label_swap")
class LabelSwapKD(HostLoss):
    """KD (tau^2 KL at temperature tau) towards the teacher with each row's label and top logits
    exchanged. KD's recipe: tau 4, CE 0.1, KD 0.9, so that it differs from KD by the swap alone.
    (The RLD authors' label-swap baseline, zju-SWJ/RLD SWAP, is the KD term alone: ce_weight=0,
    kd_weight=1.)"""

    paper = "label-swap KD: KD on the swap-rectified teacher (the rectification of BTKD / SLD, alone)"
    rectifies = True
    takes_probs = False
    default_ce_weight = 0.1
    default_kd_weight = 0.9

    def __init__(self, tau: float = 4.0):
        super().__init__()
        self.tau = check_positive("tau", tau)

    def per_sample(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                   target_probs: Optional[Tensor] = None) -> Tensor:
        if target_probs is not None:
            raise ValueError("label_swap rectifies the teacher's logits itself; it takes no probability target")
        dtype = compute_dtype(student_logits, teacher_logits)
        target = rectify_swap(teacher_logits.to(dtype), labels)
        return _kd_log(student_logits.to(dtype), target, self.tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


@register_host("sld")
class SLD(HostLoss):
    """Swapped logit distillation: swapped teacher at every temperature of ``taus``, plus the swapped,
    detached student as a second target from epoch ``student_from`` (0-based), on each of ``views`` views.

    The switch lives in a buffer that ``set_epoch`` updates in place (a captured step sees it).
    """

    paper = "Limantoro et al., arXiv 2504.20108 (2025): swapped logit distillation (SLD)"
    needs = ("epoch", "student_target", "two_views")
    views = 2
    rectifies = True
    default_ce_weight = 0.1
    default_kd_weight = 0.9

    def __init__(self, taus: Sequence[float] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0), student_from: float = 150,
                 views: int = 2):
        super().__init__()
        if views not in (1, 2) or isinstance(views, bool):
            raise ValueError(f"views={views!r} must be 2 (a weak and a strong view, as the authors) or 1 (weak only)")
        self.views = int(views)
        self.needs = ("epoch", "student_target") + (("two_views",) if self.views == 2 else ())
        self.taus = check_taus(taus)
        start = check_real("student_from", student_from)
        if not (start >= 0):  # inf allowed: never
            raise ValueError(f"student_from={start!r} must be an epoch >= 0 (inf: never use the student target)")
        self.student_from = start
        self.register_buffer("student_on", torch.tensor(float(0 >= start)), persistent=False)

    def set_epoch(self, epoch: float, epochs: int) -> None:
        self.student_on.fill_(float(epoch >= self.student_from))

    def per_sample(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                   target_probs: Optional[Tensor] = None) -> Tensor:
        if target_probs is not None:
            raise ValueError("SLD rectifies the teacher's logits itself; it takes no probability target")
        dtype = compute_dtype(student_logits, teacher_logits)
        s = student_logits.to(dtype)
        teacher = rectify_swap(teacher_logits.to(dtype), labels)
        student = rectify_swap(s.detach(), labels)
        on = self.student_on.to(dtype)
        out = s.new_zeros(s.shape[0])
        for tau in self.taus:
            out = out + _kd_log(s, teacher, tau) + on * _kd_log(s, student, tau)
        return out

    def extra_repr(self) -> str:
        return f"taus={self.taus}, student_from={self.student_from}, views={self.views}"
