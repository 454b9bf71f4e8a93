"""The host-loss contract and the plain (no BTKD) distillation wrapper.

A host loss is a framework's distillation term computed *per sample*, so that BTKD can average it
over any subset of the batch (the right or the rectified samples) without indexing.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice, check_epoch, check_pair, check_weight

__all__ = ["HostLoss", "HOSTS", "register_host", "make_host", "Distill", "compute_dtype"]


def compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """The dtype losses compute in: float32 for half inputs (exp and log lose too much in bf16/fp16),
    float64 when an input is float64 (so gradcheck works and fp64 results stay fp64)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class HostLoss(nn.Module):
    """Base class of host distillation losses.

    Subclasses implement ``per_sample(student_logits, teacher_logits, labels, target_probs=None)
    -> Tensor[N]``: the distillation term of each sample, with the host's own weights and temperature
    factor, and may override ``scale(epoch)``, an epoch-dependent multiplier such as DKD's warm-up.
    Calling the host gives ``scale(epoch) * per_sample(...)``. Keeping the epoch out of
    ``per_sample`` lets a captured training step (CUDA graph) feed the scale as a device tensor.
    ``takes_probs`` says whether the host can distil towards a probability target (``target_probs``,
    computed at temperature ``tau``) instead of teacher logits; ``rectify="reweight"`` needs it.
    """

    name: str = "host"
    takes_probs: bool = False
    tau: float = 1.0
    #: the CE and KD weights the framework's own recipe uses (docs/BENCHMARKS.md)
    default_ce_weight: float = 1.0
    default_kd_weight: float = 1.0

    def per_sample(self, student_logits: Tensor, teacher_logits: Optional[Tensor], labels: Tensor,
                   target_probs: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    def scale(self, epoch: float) -> float:
        return 1.0

    def forward(self, student_logits: Tensor, teacher_logits: Optional[Tensor], labels: Tensor, *,
                epoch: float = 0, epochs: int = 1, target_probs: Optional[Tensor] = None) -> Tensor:
        return self.scale(epoch) * self.per_sample(student_logits, teacher_logits, labels, target_probs)


HOSTS: Dict[str, Type[HostLoss]] = {}


def register_host(name: str) -> Callable[[Type[HostLoss]], Type[HostLoss]]:
    """Class decorator: make a host loss available by name to ``BTKD(host=name)`` and configs."""

    def wrap(cls: Type[HostLoss]) -> Type[HostLoss]:
        if name in HOSTS and HOSTS[name] is not cls:
            raise ValueError(f"a host loss named {name!r} is already registered ({HOSTS[name].__name__})")
        cls.name = name
        HOSTS[name] = cls
        return cls

    return wrap


def make_host(host, **options) -> HostLoss:
    """A host loss from its registered name and options, or an instance passed through."""
    if isinstance(host, HostLoss):
        if options:
            raise ValueError(
                f"options {sorted(options)} were given with a host object; set them on the object instead"
            )
        return host
    name = check_choice("host", host, HOSTS)
    try:
        return HOSTS[name](**options)
    except TypeError as err:
        raise ValueError(f"bad options for host {name!r}: {err}") from None


def kl_per_sample(target_probs: Tensor, student_log_probs: Tensor) -> Tensor:
    """KL(target || student) per row; 0 * log 0 counts as 0."""
    return (torch.xlogy(target_probs, target_probs) - target_probs * student_log_probs).sum(dim=1)


class Distill(nn.Module):
    """Plain distillation with a host loss (the baseline BTKD is compared against).

    Returns the same kind of dict as ``BTKD``: ``ce``, ``distill`` and ``total``.
    """

    def __init__(self, host="kd", ce_weight: Optional[float] = None, kd_weight: Optional[float] = None,
                 validate: bool = True, **host_options):
        super().__init__()
        self.host = make_host(host, **host_options)
        self.ce_weight = check_weight("ce_weight", self.host.default_ce_weight if ce_weight is None else ce_weight)
        self.kd_weight = check_weight("kd_weight", self.host.default_kd_weight if kd_weight is None else kd_weight)
        self.validate = validate

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
                epoch: float = 0, epochs: int = 1) -> Dict[str, Tensor]:
        if self.validate:
            check_pair(student_logits, teacher_logits, labels)
            epoch, epochs = check_epoch(epoch, epochs)
        return self.compute(student_logits, teacher_logits, labels, scale=self.host.scale(epoch))

    def compute(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                scale: Union[float, Tensor] = 1.0) -> Dict[str, Tensor]:
        """The terms with the host's epoch scale given (a float, or a device tensor in a graph)."""
        labels = labels.long()
        ce = F.cross_entropy(student_logits.to(compute_dtype(student_logits)), labels)
        distill = scale * self.host.per_sample(student_logits, teacher_logits.detach(), labels).mean()
        total = self.ce_weight * ce + self.kd_weight * distill
        return {"ce": ce, "distill": distill, "total": total}
