"""Sun et al., "Logit Standardization in Knowledge Distillation" (CVPR 2024): LS, a pre-process.

Each logit row is z-scored before the softmax, for teacher and student alike (Algorithm 1, the
weighted Z-score): Z(x; tau) = (x - mean(x)) / sigma(x) / tau, with sigma the *population* standard
deviation sqrt(1/K sum_k (x_k - mean)^2). The base temperature tau is shared by teacher and student,
so each model's effective temperature is tau * sigma of its own logits. Algorithm 2 then minimises
lambda_CE * CE(y, softmax(z)) + lambda_KD * tau^2 * L(softmax(Z(v; tau)), softmax(Z(z; tau))).

So with standardisation tau enters exactly as in the host: the host receives the standardised
logits (x - mean) / (sigma + eps) and divides them by its own ``tau`` (and multiplies its term by
tau^2) as usual. ``Standardized(inner)`` therefore composes with any host that takes logits (KD,
DKD, NKD, DIST, CTKD, ...): CTKD's learned temperature becomes the base temperature, as in the
paper's CTKD+LS. eps (1e-7, as in the authors' code) keeps a constant row finite; the authors' code
uses the unbiased (N - 1) standard deviation, ``unbiased=True`` reproduces it.

The swap rectifier commutes with the standardisation (mean and sigma do not depend on the order of
the logits), so BTKD's swap followed by LS is LS followed by the swap.

The recipe (docs/BENCHMARKS.md; the paper's Table 4 and README): base tau 2, KD weight 9, CE 0.1:
``kd_ls``. For DKD the KD weight multiplies alpha and beta and the base temperature replaces DKD's:
``dkd_ls`` (alpha 9, beta 72, tau 2, DKD's CE weight 1 and warm-up), as the authors' later
tools/train.py does (an early version set beta to alpha times the KD weight and kept DKD's tau 4).
Some pairs' published numbers come from other base temperatures and weights: the built-in configs
take each pair's from the authors' logs (scripts/make_configs.py, LS_RECIPE).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from .._checks import check_positive
from .base import HostLoss, compute_dtype, make_host, register_host
from .dkd import DKD
from .kd import KD


def standardize(logits: Tensor, eps: float = 1e-7, unbiased: bool = False) -> Tensor:
    """(x - mean) / (std + eps) per row of ``logits`` ``[N, C]``, computed in at least float32.

    ``std`` is the population standard deviation (``unbiased=True``: the N - 1 one); a constant row
    gives zeros."""
    x = logits.to(compute_dtype(logits))
    # A row with a logit beyond 2^60 (a class masked with -1e30 or finfo.min) would overflow the mean or
    # the squares in float32: an inf variance z-scores the row to 0 (no distillation) or NaN. Such a row
    # is scaled down by a power of two first: exact, the z-score does not change with the scale (eps
    # aside, negligible beside such a spread), and every other row is left as it is, bit for bit.
    exponent = torch.frexp(x.detach().abs().amax(dim=1, keepdim=True)).exponent
    x = x * torch.ldexp(torch.ones_like(x[:, :1]), (60 - exponent).clamp(max=0))
    centred = x - x.mean(dim=1, keepdim=True)
    var = centred.pow(2).sum(dim=1, keepdim=True) / (x.shape[1] - (1 if unbiased else 0))
    # the clamp only acts on a constant row (variance below eps^2), where sqrt has no derivative
    return centred / (var.clamp(min=eps * eps).sqrt() + eps)


@register_host("ls")
class Standardized(HostLoss):
    """A host loss applied to z-scored logits (logit standardisation).

    Each logit row of teacher and student is replaced by ``standardize(row, eps, unbiased)``,
    ``(x - mean) / (std + eps)`` with the population standard deviation (``unbiased=True``: the
    N - 1 one, as the authors' code), before the inner host applies its own temperature ``tau``
    (the paper's base temperature). ``inner`` is a host name (with ``**inner_options``) or object.
    A probability target (``rectify="reweight"``) cannot be standardised and is refused.

    ``Standardized("dkd", alpha=9, beta=72, tau=2)`` or ``Standardized(host_object)``. The wrapper
    takes its metadata (weights, needs, rectifies, ...) from the inner host; the registered name
    ``"ls"`` with option ``inner`` builds one from a config.
    """

    paper = "Sun et al., CVPR 2024 (arXiv 2403.01427): logit standardisation (LS), a pre-process"

    def __init__(self, inner: Union[str, HostLoss] = "kd", eps: float = 1e-7, unbiased: bool = False,
                 **inner_options):
        super().__init__()
        self.inner = make_host(inner, **inner_options)
        self.eps = check_positive("eps", eps)
        self.unbiased = bool(unbiased)
        for attr in ("needs", "rectifies", "batch_level", "views", "default_ce_weight", "default_kd_weight"):
            setattr(self, attr, getattr(self.inner, attr))
        # A probability target (rectify="reweight") would come from the raw teacher logits: refused.
        self.takes_probs = False

    @property
    def tau(self) -> float:
        return self.inner.tau

    def scale(self, epoch: float) -> float:
        return self.inner.scale(epoch)

    def set_epoch(self, epoch: float, epochs: int) -> None:
        self.inner.set_epoch(epoch, epochs)

    def distribute(self, group="world") -> None:
        self.inner.distribute(group)
        self.group = group

    def _z(self, logits):
        """The standardised logits: one tensor, or one per view."""
        if logits is None:
            return None
        if isinstance(logits, Tensor):
            return standardize(logits, self.eps, self.unbiased)
        return [standardize(x, self.eps, self.unbiased) for x in logits]

    def per_sample(self, student_logits: Tensor, teacher_logits: Optional[Tensor], labels: Tensor,
                   target_probs: Optional[Tensor] = None) -> Tensor:
        if target_probs is not None:
            raise ValueError("logit standardisation acts on logits; a probability target cannot be standardised: "
                             "use rectify='swap' or 'none'")
        return self.inner.per_sample(self._z(student_logits), self._z(teacher_logits), labels)

    def parts(self, student_logits: Tensor, target_logits: Optional[Tensor], labels: Tensor, masks: Tensor,
              reduction: str = "subset", target_probs: Optional[Tensor] = None) -> Tensor:
        if target_probs is not None:
            raise ValueError("logit standardisation acts on logits; a probability target cannot be standardised: "
                             "use rectify='swap' or 'none'")
        return self.inner.parts(self._z(student_logits), self._z(target_logits), labels, masks, reduction)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, unbiased={self.unbiased}"


@register_host("kd_ls")
class KDLS(Standardized):
    """KD on standardised logits with the paper's CIFAR-100 recipe: base tau 2, KD weight 9, CE 0.1."""

    paper = "Sun et al., CVPR 2024: KD + logit standardisation (base tau 2, KD weight 9, CE 0.1)"

    def __init__(self, tau: float = 2.0, eps: float = 1e-7, unbiased: bool = False):
        super().__init__(KD(tau=tau), eps=eps, unbiased=unbiased)
        self.default_ce_weight, self.default_kd_weight = 0.1, 9.0


@register_host("dkd_ls")
class DKDLS(Standardized):
    """DKD on standardised logits: the KD weight 9 multiplies alpha and beta (9, 72), base tau 2;
    DKD's CE weight 1 and 20-epoch warm-up."""

    paper = "Sun et al., CVPR 2024: DKD + logit standardisation (alpha, beta x 9, base tau 2)"
    needs = ("epoch",)

    def __init__(self, alpha: float = 9.0, beta: float = 72.0, tau: float = 2.0, warmup: int = 20,
                 eps: float = 1e-7, unbiased: bool = False):
        super().__init__(DKD(alpha=alpha, beta=beta, tau=tau, warmup=warmup), eps=eps, unbiased=unbiased)
        self.default_ce_weight, self.default_kd_weight = 1.0, 1.0
