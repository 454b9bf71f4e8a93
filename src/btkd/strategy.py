"""BTKD: distil the samples the teacher gets right, rectify and distil the ones it gets wrong, and
move the weight from the first part to the second with a dynamic schedule."""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_epoch
from .bias import RECTIFIERS, rectify, rectify_swap, teacher_right
from .losses.base import HOSTS, REDUCTIONS, HostLoss, Logits, advise, check_views, compute_dtype, make_host, sum_ce, view_list
from .schedules import Balancer, DynamicBalancer, Schedule, weighted_sum

__all__ = ["BTKD", "REDUCTIONS", "AUTHORS_WEIGHTS"]
#: The CE and distillation weights of the BTKD authors' scripts: ``BTKD(host, **AUTHORS_WEIGHTS)``.
AUTHORS_WEIGHTS = {"ce_weight": 0.5, "kd_weight": 0.5}
#: The named losses BTKD's total weighs.
TERMS = ("ce", "distill_right", "distill_rectified")


class BTKD(nn.Module):
    """The BTKD strategy wrapped around a host distillation loss.

    Args:
        host: a registered host name (``"kd"``, ``"dkd"``, ...) or a ``HostLoss`` instance.
        rectify: ``"swap"`` (exchange the label and top logits), ``"reweight"`` (move probability
            mass to the label; needs a host that takes probabilities), or ``"none"`` (drop the
            wrong samples: elimination only; beta is then held at 1, as there is no second part).
        reduction: ``"subset"`` averages each part over its own size; ``"batch"`` over the batch.
            A host's batch-level term (DIST's intra-class relation) is reduced the same way: whole
            for a non-empty part with ``"subset"``, times the part's share of the batch with ``"batch"``.
        schedule: the dynamic weight beta: a name (``cos2``, ``cos2_iter``, ``linear``,
            ``linear_iter``, ``constant``, ``step``) or a callable ``(epoch, epochs) -> beta``. With one
            part (``rectify="none"``, ``split=False``) beta is held, and only the default is accepted.
        schedule_options: options of a named schedule, e.g. ``{"value": 0.5}`` for ``constant``.
        ce_weight, kd_weight: weights of the cross-entropy and of the distillation terms; None (the
            default) takes the host framework's own, as ``Distill`` does (KD: 0.1 / 0.9, DKD: 1 / 1),
            so that host and host + BTKD differ only by BTKD. The authors' 0.5 / 0.5 is
            ``BTKD(host, **AUTHORS_WEIGHTS)``.
        split: ``False`` rectifies every sample and distils the batch as one part (an ablation;
            beta is then held at 0).
        balancer: replaces the weighting (then ``ce_weight``, ``kd_weight``, ``schedule`` and
            ``schedule_options`` must be left out); see ``btkd.schedules.Balancer``.
        validate: check the inputs of every call (a bad tensor or epoch is a ValueError naming it) and
            warn where the trainer would (MLKD's class term far from its recipe's size, a host warm-up
            longer than the run). It synchronises with the device: turn it off in a hot loop or a
            captured step.
        **host_options: options of a host given by name, e.g. ``tau=4.0`` or DKD's ``alpha``,
            ``beta`` and ``warmup`` (``btkd methods`` lists every host's).

    Calling it (`forward`) returns a dict of tensors: ``ce``, ``distill_right``, ``distill_rectified``,
    ``beta``, ``n_wrong``, ``n_rectified`` and ``total``.

    Raises ValueError, naming the argument, for an unknown host, rectifier, reduction or schedule, a
    host option the host does not take, ``rectify="reweight"`` with a host that distils logits, and
    a combination that would have no effect (``split=False`` with ``rectify="none"``, a schedule
    with one part, a balancer with weights or a schedule).

    A host that already repairs the teacher's wrong predictions (``host.rectifies``: label-swap KD,
    SLD, RLD) is refused: BTKD would rectify what is already rectified. Use it alone with ``Distill``.
    Each part's term comes from ``host.parts`` (the right and the rectified masks), so hosts with
    batch-level terms are computed on each part.
    """

    def __init__(self, host: Union[str, HostLoss] = "kd", rectify: str = "swap",
                 reduction: str = "subset", schedule: Union[str, Schedule] = "cos2",
                 ce_weight: Optional[float] = None, kd_weight: Optional[float] = None, *, split: bool = True,
                 schedule_options: Optional[dict] = None, balancer: Optional[Balancer] = None,
                 validate: bool = True, **host_options):
        super().__init__()
        if isinstance(host, str) and host not in HOSTS:  # name only the hosts BTKD can take
            check_choice("host", host, [n for n, cls in HOSTS.items() if not getattr(cls, "rectifies", False)])
        self.host = make_host(host, **host_options)
        if getattr(self.host, "rectifies", False):
            inner = getattr(self.host, "inner", None)
            what = f"host {self.host.name!r}" + (f" (around {inner.name!r})" if isinstance(inner, HostLoss) else "")
            paper = getattr(inner if isinstance(inner, HostLoss) else self.host, "paper", "")
            raise ValueError(
                f"{what} already rectifies the teacher's wrong predictions itself{f' ({paper})' if paper else ''}, "
                "so BTKD's split and rectification on top would repair them twice and measure nothing; use the "
                f"host alone: btkd.Distill({self.host.name!r}, ...) (in a config: distill.btkd.enabled=false)"
            )
        self.rectify = check_choice("rectify", rectify, RECTIFIERS)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        if self.rectify == "reweight" and not self.host.takes_probs:
            raise ValueError(
                f"rectify='reweight' produces a probability target, but host {self.host.name!r} "
                "distils logits; use rectify='swap' (or 'none') with this host"
            )
        if not split and self.rectify == "none":
            raise ValueError("split=False rectifies every sample; it needs rectify='swap' or 'reweight'")
        if (not split or self.rectify == "none") and balancer is None and (schedule != "cos2" or schedule_options):
            # one distilled part takes the whole distillation weight (see `weights`): a schedule would be ignored
            what = "split=False distils the batch as one part" if not split else \
                "rectify='none' drops the wrong samples, so the right part is the only one"
            raise ValueError(f"{what} and takes the whole distillation weight (beta held at {int(split)}), so "
                             f"schedule={schedule!r} with schedule_options={dict(schedule_options or {})} would have "
                             "no effect; leave schedule and schedule_options at their defaults")
        if balancer is not None and not isinstance(balancer, Balancer):
            raise ValueError("balancer must have weights(epoch, epochs) -> {'ce': ..., 'distill_right': ..., "
                             "'distill_rectified': ...}")
        if balancer is not None and (ce_weight is not None or kd_weight is not None):
            raise ValueError("ce_weight and kd_weight set the default balancer; with balancer=... "
                             "give every weight through the balancer")
        if balancer is not None and (schedule != "cos2" or schedule_options):
            raise ValueError("schedule and schedule_options set the default balancer's beta; with balancer=... "
                             "the balancer's weights(epoch, epochs) decide it")
        if balancer is None:
            ce = self.host.default_ce_weight if ce_weight is None else ce_weight
            kd = self.host.default_kd_weight if kd_weight is None else kd_weight
            balancer = DynamicBalancer(schedule, ce, kd, **(schedule_options or {}))
        self.balancer = balancer
        self.split = bool(split)
        self.validate = validate

    def weights(self, epoch: float, epochs: int) -> Dict[str, float]:
        """The weight of each named term at ``epoch`` (0-based) of ``epochs``, as the total uses it:
        ``{"ce": ..., "distill_right": ..., "distill_rectified": ...}``, from the balancer. With one
        distilled part (``rectify="none"`` or ``split=False``) that part takes the whole distillation
        weight and the other gets 0. Raises ValueError when a balancer of your own gives other names
        or a weight that is not a finite number >= 0."""
        w = dict(self.balancer.weights(epoch, epochs))
        if set(w) != set(TERMS):
            raise ValueError(f"balancer {type(self.balancer).__name__} gave weights for {sorted(w)}; it must give "
                             f"exactly {list(TERMS)}")
        for name, value in w.items():  # a custom balancer's weights must make sense too
            if not (math.isfinite(float(value)) and float(value) >= 0):
                raise ValueError(f"balancer {type(self.balancer).__name__} gave {name}={float(value)} at epoch "
                                 f"{epoch} of {epochs}; every weight must be a finite number >= 0")
        if not self.split or self.rectify == "none":
            # A single distilled part takes the whole distillation weight.
            kd = w["distill_right"] + w["distill_rectified"]
            part = "distill_rectified" if not self.split else "distill_right"
            w["distill_right"], w["distill_rectified"] = 0.0, 0.0
            w[part] = kd
        return w

    def set_epoch(self, epoch: float, epochs: int) -> None:
        """The host's epoch-dependent state (in place; call once per epoch when calling ``compute``)."""
        self.host.set_epoch(epoch, epochs)

    def distribute(self, group="world") -> None:
        """Under DDP: take the right and the rectified parts' means over the batch of all of ``group``'s
        processes, so that N processes with batch b equal one with batch N * b (the part sizes are
        all-reduced once per step). Every process must compute the loss at every step."""
        self.host.distribute(group)

    def beta(self, epoch: float, epochs: int) -> float:
        """beta at ``epoch`` of ``epochs``: the right part's share of the distillation weight,
        ``distill_right / (distill_right + distill_rectified)`` of `weights` (1 with
        ``rectify="none"``, 0 with ``split=False``; NaN when both weights are 0)."""
        w = self.weights(epoch, epochs)
        kd = w["distill_right"] + w["distill_rectified"]
        return w["distill_right"] / kd if kd else float("nan")

    def forward(self, student_logits: Logits, teacher_logits: Logits, labels: Tensor, *,
                epoch: float, epochs: int) -> Dict[str, Tensor]:
        """The loss terms of one batch at ``epoch`` (0-based; fractional within an epoch, as
        ``e + i / steps``, for a per-iteration schedule) of ``epochs``.

        ``student_logits`` and ``teacher_logits`` are ``[N, C]`` (for a two-view host, a list of one
        tensor per view, weak first); the teacher's are detached. ``labels`` are ``[N]`` class
        indices. Updates the host's epoch-dependent state (`set_epoch`), then returns `compute`'s
        dict:

        - ``ce``: the student's mean cross-entropy (summed over the views);
        - ``distill_right``, ``distill_rectified``: the host's term on each part (the samples the
          teacher gets right; the rectified ones), times the host's ``scale(epoch)``, before the
          weights; an empty part gives exactly 0;
        - ``beta``: `beta` at this epoch; ``n_wrong``: how many samples the teacher gets wrong;
          ``n_rectified``: how many rows were rectified (every view's; 0 with ``rectify="none"``);
        - ``total``: the weighted sum of ``ce`` and the two parts (`weights`), the one to backward.

        With ``validate=True`` bad input is a ValueError naming the argument.
        """
        if self.validate:
            check_views(self.host, student_logits, teacher_logits, labels)
            epoch, epochs = check_epoch(epoch, epochs)
            advise(self.host, student_logits, epochs)
        self.set_epoch(epoch, epochs)
        return self.compute(student_logits, teacher_logits, labels, self.weights(epoch, epochs),
                            scale=self.host.scale(epoch), beta=self.beta(epoch, epochs))

    def compute(self, student_logits: Logits, teacher_logits: Logits, labels: Tensor,
                weights: Mapping[str, Union[float, Tensor]], scale: Union[float, Tensor] = 1.0,
                beta: Union[float, Tensor] = float("nan")) -> Dict[str, Tensor]:
        """The terms for given weights, host scale and beta (floats, or device tensors that a
        captured training step updates in place), as `forward` returns them, without checking the
        inputs or calling `set_epoch`: call ``set_epoch`` once per epoch yourself, and pass
        ``weights=self.weights(e, E)``, ``scale=self.host.scale(e)``, ``beta=self.beta(e, E)``
        (``beta`` is only reported). With a two-view host (``host.views == 2``) the
        logits are one tensor per view (weak first): each view is split and rectified on its own
        teacher prediction; ``ce`` sums the views' CE, ``n_wrong`` is the weak view's count and
        ``n_rectified`` every view's."""
        labels = labels.long()
        students, teachers = view_list(student_logits), [t.detach() for t in view_list(teacher_logits)]
        # Each view is split on its own teacher prediction and rectified in that view.
        all_masks, targets, probs, wrongs = [], [], [], []
        for s, t in zip(students, teachers):
            top = t.argmax(dim=1)  # shared by the split and the swap
            right_by_teacher = teacher_right(t, labels, top)
            # split=False: the whole batch is the second ("rectified") part
            right = right_by_teacher if self.split else torch.zeros_like(right_by_teacher)
            # Both parts as 0/1 masks (not indexing): an empty part is exactly 0, nothing synchronises
            # with the host, and the step stays a handful of kernels.
            rightf = right.to(compute_dtype(s, t))
            all_masks.append(torch.stack((rightf, 1.0 - rightf)))  # [2, N]: right, wrong
            # The teacher's real error count, also with split=False; the rectifiers change exactly these rows.
            wrongs.append((~right_by_teacher).sum().to(rightf.dtype))
            # Rectifiers are no-ops on right rows, so one host call over the whole batch serves both parts.
            if self.rectify == "reweight":
                probs.append(rectify(t, labels, "reweight", self.host.tau, wrong=~right_by_teacher))
                targets.append(None)
            else:
                targets.append(rectify_swap(t, labels, top) if self.rectify == "swap" else t)
        if self.host.views == 1:
            parts = self.host.parts(students[0], targets[0], labels, all_masks[0], self.reduction,
                                    target_probs=probs[0] if probs else None)
        else:
            parts = self.host.parts(students, targets, labels, all_masks, self.reduction,
                                    target_probs=probs or None)
        parts = scale * parts
        distill_right, distill_wrong = parts[0], parts[1]
        # n_wrong: the weak (first) view's, as the teacher's training accuracy is; n_rectified: every view's.
        n_wrong = wrongs[0]
        n_rectified = torch.stack(wrongs).sum() if len(wrongs) > 1 else n_wrong
        if self.rectify == "none":
            distill_wrong = distill_wrong * 0.0  # eliminated, not distilled
        losses = {
            "ce": sum_ce(students, labels),
            "distill_right": distill_right,
            "distill_rectified": distill_wrong,
        }
        total = weighted_sum(losses, weights)
        return {
            **losses,
            # a float (forward) as a fill kernel: torch.as_tensor(float, device=...) would be a blocking
            # host-to-device copy, a sync at every step of a loop with validate=False
            "beta": (torch.as_tensor(beta, dtype=torch.float32, device=parts.device) if isinstance(beta, Tensor)
                     else torch.full((), beta, dtype=torch.float32, device=parts.device)),
            "n_wrong": n_wrong.detach(),
            "n_rectified": (n_rectified * float(self.rectify != "none")).detach(),
            "total": total,
        }

    def extra_repr(self) -> str:
        return (f"rectify={self.rectify!r}, reduction={self.reduction!r}, split={self.split}, "
                f"balancer={self.balancer!r}")
