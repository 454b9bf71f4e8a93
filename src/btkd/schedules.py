"""The dynamic weight beta(epoch) and the balancer that turns named losses into one total.

beta weights the distillation of the samples the teacher got right; 1 - beta weights the rectified
ones. Every schedule maps (epoch, epochs) -> beta in [0, 1], with epoch 0-based and possibly
fractional (e + i / iters_per_epoch). Per-epoch schedules floor the epoch, per-iteration ones don't.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Protocol, Union, runtime_checkable

from torch import Tensor

from ._checks import check_choice, check_weight

__all__ = [
    "SCHEDULES",
    "Schedule",
    "Cos2",
    "Linear",
    "Constant",
    "Step",
    "cos2_weight",
    "make_schedule",
    "Balancer",
    "DynamicBalancer",
]


def cos2_weight(epoch: float, epochs: int) -> float:
    """beta(e) = cos^2(pi/2 * e / E): 1 at the start, 0.5 half way, ~0 at the end."""
    return math.cos(math.pi / 2 * epoch / epochs) ** 2


@dataclass(frozen=True)
class Cos2:
    """cos^2 decay (`cos2_weight`); ``per_iteration=False`` (the default) updates it once per epoch
    (the epoch is floored), ``True`` at every step (the fractional epoch is used as it is)."""

    per_iteration: bool = False

    def __call__(self, epoch: float, epochs: int) -> float:
        """beta at the 0-based ``epoch`` of ``epochs``."""
        return cos2_weight(epoch if self.per_iteration else math.floor(epoch), epochs)


@dataclass(frozen=True)
class Linear:
    """beta falls linearly from 1 at epoch 0 to 1/E at the last epoch: 1 - e/E. ``per_iteration``
    as for `Cos2`."""

    per_iteration: bool = False

    def __call__(self, epoch: float, epochs: int) -> float:
        """beta at the 0-based ``epoch`` of ``epochs``."""
        e = epoch if self.per_iteration else math.floor(epoch)
        return 1.0 - e / epochs


@dataclass(frozen=True)
class Constant:
    """No dynamics (an ablation): beta fixed at ``value``, in [0, 1] (else a ValueError)."""

    value: float = 0.5
    per_iteration = False  # class attribute: constant within an epoch

    def __post_init__(self):
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"Constant schedule value must lie in [0, 1], got {self.value}")

    def __call__(self, epoch: float, epochs: int) -> float:
        """``value``, whatever the epoch."""
        return self.value


@dataclass(frozen=True)
class Step:
    """beta = ``before`` for epochs < ``at`` (default: ``epochs // 2``, half of training; with an odd
    number of epochs the later part is one epoch longer), then ``after``. ``before`` and ``after``
    lie in [0, 1] and ``at`` is an integer >= 0 (else a ValueError)."""

    at: Optional[int] = None
    before: float = 1.0
    after: float = 0.0
    per_iteration = False

    def __post_init__(self):
        for name in ("before", "after"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Step schedule {name}={getattr(self, name)} must lie in [0, 1]")
        if self.at is not None and (isinstance(self.at, bool) or not isinstance(self.at, int) or self.at < 0):
            raise ValueError(f"Step schedule at={self.at!r} must be an epoch, an integer >= 0")

    def __call__(self, epoch: float, epochs: int) -> float:
        """beta at the 0-based ``epoch`` of ``epochs``; an ``at`` that is not below ``epochs`` (it
        would never switch) is a ValueError."""
        if self.at is not None and self.at >= epochs:
            raise ValueError(f"Step schedule at={self.at} never switches in {epochs} epochs; give at below {epochs}, "
                             f"or the constant schedule for beta = {self.before} throughout")
        switch = epochs // 2 if self.at is None else self.at
        return self.before if math.floor(epoch) < switch else self.after


#: The type of a schedule: ``(epoch, epochs) -> beta``, with the 0-based (possibly fractional) epoch
#: and beta in [0, 1].
Schedule = Callable[[float, int], float]

#: name -> factory(**schedule_options) -> schedule. Add your own (configs name it in
#: distill.btkd.schedule); a schedule with ``per_iteration = False`` is asked once per epoch, otherwise
#: at each step with a fractional epoch.
SCHEDULES: Dict[str, Callable[..., Schedule]] = {
    "cos2": Cos2,
    "cos2_iter": lambda **kw: Cos2(per_iteration=True, **kw),
    "linear": Linear,
    "linear_iter": lambda **kw: Linear(per_iteration=True, **kw),
    "constant": Constant,
    "step": Step,
}


def make_schedule(schedule: Union[str, Schedule], **kwargs) -> Schedule:
    """A schedule from its name (see ``SCHEDULES``) and options, or a callable passed through.

    An unknown name, options a schedule does not take, or options given with a callable are a
    ValueError."""
    if callable(schedule) and not isinstance(schedule, str):
        if kwargs:
            raise ValueError(f"schedule options {sorted(kwargs)} only apply to a schedule given by name")
        return schedule
    name = check_choice("schedule", schedule, SCHEDULES)
    try:
        return SCHEDULES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad options {kwargs} for schedule {name!r}: {err}") from None


@runtime_checkable
class Balancer(Protocol):
    """The weight of each named loss at an epoch. Plug your own into ``BTKD(balancer=...)``.

    ``weights`` returns a finite weight >= 0 for each of ``ce``, ``distill_right`` and
    ``distill_rectified``; BTKD's total is the sum of weight times loss. The total
    is always that linear form, so that a captured training step can update the weights in place:
    a balancer only chooses the weights, epoch by epoch.
    """

    def weights(self, epoch: float, epochs: int) -> Mapping[str, float]:
        """The weights ``{"ce": w, "distill_right": w, "distill_rectified": w}`` at the 0-based
        ``epoch`` (fractional within an epoch for a per-iteration balancer) of ``epochs``."""
        ...


class DynamicBalancer:
    """The BTKD weighting: ce_weight * ce + kd_weight * (beta * right + (1 - beta) * rectified).

    ``schedule`` is a name in `SCHEDULES` (with ``schedule_options``) or a callable ``(epoch,
    epochs) -> beta``; ``ce_weight`` and ``kd_weight`` are finite numbers >= 0. ``BTKD`` builds one
    from its own arguments unless given a ``balancer``."""

    def __init__(self, schedule: Union[str, Schedule] = "cos2", ce_weight: float = 0.5,
                 kd_weight: float = 0.5, **schedule_options):
        self.schedule = make_schedule(schedule, **schedule_options)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.kd_weight = check_weight("kd_weight", kd_weight)

    def beta(self, epoch: float, epochs: int) -> float:
        """The schedule's beta at ``epoch`` of ``epochs``; a value outside [0, 1] is a ValueError."""
        beta = float(self.schedule(epoch, epochs))
        if not 0.0 <= beta <= 1.0:  # a custom schedule outside [0, 1] would give a negative weight
            name = getattr(self.schedule, "__qualname__", None) or repr(self.schedule)
            raise ValueError(f"schedule {name} gave beta={beta} at epoch {epoch} of {epochs}; "
                             "a schedule must return a value in [0, 1]")
        return beta

    def weights(self, epoch: float, epochs: int) -> dict[str, float]:
        """``{"ce": ce_weight, "distill_right": kd_weight * beta, "distill_rectified": kd_weight *
        (1 - beta)}`` at ``epoch`` of ``epochs``."""
        beta = self.beta(epoch, epochs)
        return {
            "ce": self.ce_weight,
            "distill_right": self.kd_weight * beta,
            "distill_rectified": self.kd_weight * (1.0 - beta),
        }

    def __call__(self, losses: Mapping[str, Tensor], epoch: float, epochs: int) -> Tensor:
        """The total: the sum of each named loss in ``losses`` times its weight at this epoch."""
        return weighted_sum(losses, self.weights(epoch, epochs))

    def __repr__(self) -> str:
        return (f"DynamicBalancer(schedule={self.schedule!r}, ce_weight={self.ce_weight}, "
                f"kd_weight={self.kd_weight})")


def weighted_sum(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    missing = sorted(set(weights) - set(losses))
    if missing:
        raise ValueError(f"the balancer weights losses {missing} that were not given; got {sorted(losses)}")
    return sum(w * losses[name] for name, w in weights.items())
