"""Li et al., "Curriculum Temperature for Knowledge Distillation" (AAAI 2023): CTKD.

KD's temperature becomes a learnable parameter trained *adversarially*: it is updated to **increase**
the distillation loss, through a gradient reversal layer (GRL: identity forward, gradient times
-lambda backward), while the student decreases it. The adversary's strength lambda follows an
easy-to-hard curriculum over the first epochs (the paper's Eq. 11, cosine):

    lambda_n = lambda_min + 1/2 (lambda_max - lambda_min) (1 + cos((1 + min(E_n, E_loops) / E_loops) pi))

which rises from lambda_min to lambda_max over E_loops epochs and then stays (CIFAR: 0 -> 1 over 10
epochs). E_n is the 1-based epoch, as in the authors' training loop (the 0-based epoch e gives
E_n = floor(e) + 1). The temperature is kept in the paper's range by a sigmoid map:
tau = tau_min + tau_range * sigmoid(T) (1 + 20 sigmoid(T), in (1, 21)), with the raw T initialised to 1.

Two variants (Sec. "Learnable temperature module"): ``global`` (one scalar T for all samples) and
``instance`` (T per sample from a 2-layer MLP on the concatenated teacher and student logits; the
MLP's inputs are detached, so only the temperature module learns from its output).

The distillation term is KD's at the learned temperature: tau^2 * KL(softmax(zT / tau) || softmax(zS / tau)).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_positive, check_real, check_weight
from .base import HostLoss, compute_dtype, register_host

VARIANTS = ("global", "instance")


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -lambda (a tensor, read at backward time)."""

    @staticmethod
    def forward(ctx, x: Tensor, lam: Tensor) -> Tensor:
        ctx.save_for_backward(lam)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (lam,) = ctx.saved_tensors
        return -lam.to(grad.dtype) * grad, None


def reverse_gradient(x: Tensor, lam: Tensor) -> Tensor:
    """Gradient reversal layer (Ganin & Lempitsky 2015) with strength ``lam`` (a 0-d tensor)."""
    return _ReverseGradient.apply(x, lam)


def curriculum_lambda(epoch: float, lambda_min: float = 0.0, lambda_max: float = 1.0, epochs: int = 10) -> float:
    """The paper's cosine curriculum at the 0-based ``epoch`` (per epoch: E_n = floor(epoch) + 1)."""
    if epochs == 0:
        return lambda_max
    e_n = min(math.floor(epoch) + 1, epochs)
    return lambda_min + 0.5 * (lambda_max - lambda_min) * (1.0 + math.cos((1.0 + e_n / epochs) * math.pi))


@register_host("ctkd")
class CTKD(HostLoss):
    """KD with CTKD's adversarial, curriculum-scheduled learnable temperature.

    Args:
        variant: ``"global"`` (one learnable scalar) or ``"instance"`` (an MLP per sample; needs
            ``num_classes``).
        tau_min, tau_range: tau = tau_min + tau_range * sigmoid(T) (the authors' t_start 1, t_end 20).
        init: the raw T of the global variant at the start (the authors' 1.0: tau = 15.6).
        lambda_min, lambda_max, lambda_epochs: the cosine curriculum of the reversal strength
            (the authors' CIFAR setting: 0 -> 1 over 10 epochs).
        num_classes, hidden: the instance MLP: Linear(2 C, hidden) - ReLU - Linear(hidden, 1) on
            [teacher logits, student logits] (detached). The authors describe "a 2-layer MLP on the
            concatenated outputs"; its width (256 here) could not be checked against their code.

    The temperature parameters are parameters of this module: give ``loss.parameters()`` to the
    optimizer (the authors train them with the student's SGD) and keep them in the checkpoint.
    The curriculum's lambda lives in a buffer that ``set_epoch`` updates in place.
    Weights: KD's recipe (CE 0.1, KD 0.9), as in the authors' CIFAR script.
    """

    paper = "Li et al., AAAI 2023 (arXiv 2211.16231): curriculum temperature KD (CTKD)"
    needs = ("epoch", "learnable")
    default_ce_weight = 0.1
    default_kd_weight = 0.9

    def __init__(self, variant: str = "global", tau_min: float = 1.0, tau_range: float = 20.0, init: float = 1.0,
                 lambda_min: float = 0.0, lambda_max: float = 1.0, lambda_epochs: int = 10,
                 num_classes: Optional[int] = None, hidden: int = 256):
        super().__init__()
        self.variant = check_choice("variant", variant, VARIANTS)
        self.tau_min = check_positive("tau_min", tau_min)
        self.tau_range = check_positive("tau_range", tau_range)
        init = check_real("init", init)
        if not math.isfinite(init):
            raise ValueError(f"init={init!r} must be a finite number")
        self.lambda_min = check_weight("lambda_min", lambda_min)
        self.lambda_max = check_weight("lambda_max", lambda_max)
        epochs = check_real("lambda_epochs", lambda_epochs)
        if not (math.isfinite(epochs) and epochs >= 0 and float(epochs).is_integer()):
            raise ValueError(f"lambda_epochs={epochs!r} must be a whole number of epochs >= 0 (0: lambda_max at once)")
        self.lambda_epochs = int(epochs)
        if self.variant == "global":
            self.raw = nn.Parameter(torch.full((), float(init)))
            self.mlp = None
        else:
            if num_classes is None or isinstance(num_classes, bool) or not isinstance(num_classes, int) \
                    or num_classes < 2:
                raise ValueError(f"variant='instance' needs num_classes (an int >= 2, the logits' width), "
                                 f"got {num_classes!r}")
            if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
                raise ValueError(f"hidden={hidden!r} must be an int >= 1")
            self.raw = None
            self.mlp = nn.Sequential(nn.Linear(2 * num_classes, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.num_classes, self.hidden = num_classes, hidden
        self.register_buffer("grl_lambda", torch.tensor(self.lambda_at(0)), persistent=False)

    @property
    def tau(self) -> float:
        """The current global temperature as a number, for logging (reads the parameter: a host sync on
        a GPU; NaN for the instance variant). The loss uses ``temperature()``."""
        if self.raw is None:
            return float("nan")
        return float(self.tau_min + self.tau_range * torch.sigmoid(self.raw.detach()))

    def lambda_at(self, epoch: float) -> float:
        """The reversal strength lambda of the curriculum at the 0-based ``epoch``: the cosine rise
        from ``lambda_min`` to ``lambda_max`` over ``lambda_epochs`` epochs, then constant."""
        return curriculum_lambda(epoch, self.lambda_min, self.lambda_max, self.lambda_epochs)

    def set_epoch(self, epoch: float, epochs: int) -> None:
        self.grl_lambda.fill_(self.lambda_at(epoch))

    def temperature(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """The learned temperature: a 0-d tensor (global) or [N, 1] (instance), with the reversal
        layer in front of the temperature module."""
        if self.raw is not None:
            raw = self.raw
        else:
            x = torch.cat((teacher_logits, student_logits), dim=1).detach()
            raw = self.mlp(x.to(self.mlp[0].weight.dtype))
        # a snapshot: set_epoch's fill_ on the buffer must not invalidate a graph not yet backpropagated
        # (several loss calls, then one backward)
        raw = reverse_gradient(raw, self.grl_lambda.clone())
        return self.tau_min + self.tau_range * torch.sigmoid(raw)

    def per_sample(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                   target_probs: Optional[Tensor] = None) -> Tensor:
        if target_probs is not None:
            raise ValueError("CTKD's temperature is learned, so it distils logits, not a fixed probability target: "
                             "use rectify='swap' or 'none'")
        dtype = compute_dtype(student_logits, teacher_logits)
        s, t = student_logits.to(dtype), teacher_logits.to(dtype)
        tau = self.temperature(s, t).to(dtype)
        log_s = torch.log_softmax(s / tau, dim=1)
        log_t = torch.log_softmax(t / tau, dim=1)
        kl = (log_t.exp() * (log_t - log_s)).sum(dim=1)
        return tau.reshape(-1) ** 2 * kl

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, tau_min={self.tau_min}, tau_range={self.tau_range}, "
                f"lambda={self.lambda_min}->{self.lambda_max} over {self.lambda_epochs} epochs")
