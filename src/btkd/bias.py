"""The bias split and the rectifiers: pure functions on tensors.

A teacher is *right* on a sample when the label is its top class (on an exact tie for the top, the
label counts as a top class). Rectifiers repair the teacher's
output on the wrong samples so that the label becomes its top class; on right samples they are
no-ops, so they can be applied to a whole batch without indexing (no host synchronisation).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._checks import check_choice

__all__ = ["RECTIFIERS", "teacher_right", "rectify_swap", "rectify_reweight", "rectify"]

RECTIFIERS = ("swap", "reweight", "none")


def teacher_right(teacher_logits: Tensor, labels: Tensor, top: Optional[Tensor] = None) -> Tensor:
    """Per-sample bool mask: True where the label's logit is the row's largest.

    On an exact tie for the top (common with bf16 logits, whose grid near 15 is 1/16) the label
    counts as right: the teacher prefers no other class, and the split does not depend on the order
    of the classes, as ``argmax(1) == labels`` would (it takes the first of the tied classes).
    ``top`` may pass in ``teacher_logits.argmax(1)`` when the caller has it already (the swap needs it).
    """
    top = teacher_logits.argmax(dim=1) if top is None else top
    labels = labels.long()  # gather and scatter take no uint8 / int16 index (a no-op for int64)
    label_value = teacher_logits.gather(1, labels.unsqueeze(1))
    return (label_value >= teacher_logits.gather(1, top.unsqueeze(1))).squeeze(1)


def rectify_swap(logits: Tensor, labels: Tensor, top: Optional[Tensor] = None) -> Tensor:
    """Exchange each row's label logit with its top logit.

    On a wrong row the label becomes the top class and every other logit (the non-target "dark
    knowledge") is kept; on a right row this is a no-op (on a tie it exchanges two equal values).
    Returns a new tensor. ``top`` may pass in
    ``logits.argmax(1)`` when the caller has it already.
    """
    top = (logits.argmax(dim=1) if top is None else top).unsqueeze(1)
    label = labels.long().unsqueeze(1)  # as teacher_right
    top_value = logits.gather(1, top)
    label_value = logits.gather(1, label)
    out = logits.clone()
    out.scatter_(1, top, label_value)
    out.scatter_(1, label, top_value)
    return out


def rectify_reweight(probs: Tensor, labels: Tensor, wrong: Optional[Tensor] = None) -> Tensor:
    """Move probability mass from the wrong top class k to the label y, keeping the row's sum.

    With a = p[y], b = p[k], s = a + b: a' = (a + 1) / 2, b' = b / 2, and p[y] = s a'/(a'+b'),
    p[k] = s b'/(a'+b'). Since a + 1 > b, y ends above k. When the teacher spreads its mass so that
    a third class still beats y (s small), the label and that class exchange their probabilities
    (the swap, in probability space), so the label is always a top class. Right rows are untouched.
    """
    labels = labels.long()  # as teacher_right
    label = labels.unsqueeze(1)
    # k: the strongest class other than the label (the top class of a wrong row, whatever the ties)
    top = probs.scatter(1, label, -math.inf).argmax(dim=1, keepdim=True)
    a = probs.gather(1, label)
    # as teacher_right; ``wrong`` passes the split's own decision (made on logits: two logits one ulp
    # apart can round to equal probabilities)
    wrong = a < probs.amax(dim=1, keepdim=True) if wrong is None else wrong.unsqueeze(1)
    b = probs.gather(1, top)
    s = a + b
    a_new, b_new = (a + 1) / 2, b / 2
    p_label = torch.where(wrong, s * a_new / (a_new + b_new), a)
    p_top = torch.where(wrong, s * b_new / (a_new + b_new), b)
    out = probs.clone()
    out.scatter_(1, top, p_top)
    out.scatter_(1, label, p_label)
    return rectify_swap(out, labels)


def rectify(teacher_logits: Tensor, labels: Tensor, method: str, tau: float = 1.0,
            wrong: Optional[Tensor] = None) -> Tensor:
    """Apply a rectifier by name (``method``: ``"swap"``, ``"reweight"`` or ``"none"``).

    ``swap`` returns `rectify_swap`'s logits and ``none`` the teacher's logits as they are;
    ``reweight`` returns probabilities of ``softmax(teacher_logits / tau)`` (in at least float32)
    with the wrong rows reweighted by `rectify_reweight` (``wrong``: the split's mask,
    ``~teacher_right(teacher_logits, labels)`` when not given). Another ``method`` is a ValueError."""
    check_choice("rectify", method, RECTIFIERS)
    if method == "swap":
        return rectify_swap(teacher_logits, labels)
    if method == "reweight":
        # at least float32 (as losses.base.compute_dtype; not imported: the losses import this module)
        dtype = torch.promote_types(torch.float32, teacher_logits.dtype)
        if wrong is None:
            wrong = ~teacher_right(teacher_logits, labels)
        return rectify_reweight(torch.softmax(teacher_logits.to(dtype) / tau, dim=1), labels, wrong)
    return teacher_logits
