"""Huang et al., "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022): DIST.

DIST replaces KL's exact match of probabilities by a match of *relations*, measured with the Pearson
correlation rho (Sec. 3, Eqs. 6-9). With Y = softmax(Z / tau) for student (S) and teacher (T), [B, C]:

    inter-class:  L_inter = tau^2 * 1/B * sum_i (1 - rho(Y^S_i,:, Y^T_i,:))   (per sample, across classes)
    intra-class:  L_intra = tau^2 * 1/C * sum_j (1 - rho(Y^S_:,j, Y^T_:,j))   (per class, across the batch)
    L = beta * L_inter + gamma * L_intra   (plus the CE term, weight alpha = 1)

The intra-class term is a *batch-level* term: it correlates each class's probabilities over the
samples of the batch, so it has no per-sample value. ``DIST.parts`` computes it on each part of the
batch (``batch_terms="subset"``, the default: the part's samples are the batch, as if the host were
run on that part alone) or once on the whole batch (``batch_terms="batch"``: every non-empty part
gets the whole batch's intra-class term). A part with fewer than 2 samples has no correlation across
samples; its intra-class term is 0. rho(a, b) = <a - mean a, b - mean b> / (|a - mean a| |b - mean b| + eps)
with eps = 1e-8, as in the authors' code.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._checks import check_choice, check_positive, check_weight
from .base import BATCH_TERMS, HostLoss, compute_dtype, masked_means, part_factors, register_host

EPS = 1e-8


def pearson_rows(a: Tensor, b: Tensor, eps: float = EPS) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: [N, C] -> [N]."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    norms = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)
    return (a * b).sum(dim=1) / (norms + eps)


def pearson_columns(a: Tensor, b: Tensor, weights: Tensor, eps: float = EPS) -> Tensor:
    """Pearson correlation of each column of ``a`` with the same column of ``b`` over the samples
    each 0/1 row of ``weights`` selects: a, b [N, C], weights [P, N] -> [P, C]. Masked, not indexed."""
    w = weights.to(a.dtype).unsqueeze(2)  # [P, N, 1]
    n = w.sum(dim=1).clamp(min=1)  # [P, 1]
    da = (a.unsqueeze(0) - (w * a).sum(dim=1, keepdim=True) / n.unsqueeze(1)) * w  # [P, N, C]
    db = (b.unsqueeze(0) - (w * b).sum(dim=1, keepdim=True) / n.unsqueeze(1)) * w
    norms = torch.linalg.vector_norm(da, dim=1) * torch.linalg.vector_norm(db, dim=1)  # [P, C]
    return (da * db).sum(dim=1) / (norms + eps)


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 with a backward that works on every backend (gloo included): the full
    gradient is all-reduced (summed over the processes' copies) and each process keeps its rows."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        import torch.distributed as tdist

        ctx.group, ctx.rank, ctx.n = group, tdist.get_rank(group), x.shape[0]
        out = [torch.empty_like(x) for _ in range(tdist.get_world_size(group))]
        tdist.all_gather(out, x.contiguous(), group=group)
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        import torch.distributed as tdist

        grad = grad.contiguous().clone()
        tdist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None


def gather_rows(x: Tensor, group) -> Tensor:
    """Every process's rows of ``x`` (equal counts), in rank order, differentiably."""
    return _GatherRows.apply(x, None if group == "world" else group)


@register_host("dist")
class DIST(HostLoss):
    """beta * inter-class + gamma * intra-class relation loss, each times tau^2.

    Defaults: the authors' CIFAR-100 setting (tau 4, beta = gamma = 2, CE weight 1: their
    dist_cifar.yaml has DIST(beta=1, gamma=1, tau=4) with a loss weight of 2); on ImageNet they use
    tau 1, beta = gamma = 1. ``batch_terms`` says which samples the intra-class term of a
    part uses (``"subset"``: the part's own; ``"batch"``: the whole batch; the formulas are in
    btkd/losses/dist.py).
    ``per_sample`` (and calling the host) gives each sample's inter-class term plus the whole batch's
    intra-class term, so its mean over the batch is the DIST loss; ``parts`` is what Distill and BTKD use.
    """

    paper = "Huang et al., NeurIPS 2022 (arXiv 2205.10536): DIST, relations from a stronger teacher"
    batch_level = True
    takes_probs = True
    default_ce_weight = 1.0
    default_kd_weight = 1.0

    def __init__(self, tau: float = 4.0, beta: float = 2.0, gamma: float = 2.0, batch_terms: str = "subset"):
        super().__init__()
        self.tau = check_positive("tau", tau)
        self.beta, self.gamma = check_weight("beta", beta), check_weight("gamma", gamma)
        self.batch_terms = check_choice("batch_terms", batch_terms, BATCH_TERMS)

    def _probs(self, student_logits: Tensor, teacher_logits: Optional[Tensor], target_probs: Optional[Tensor]):
        dtype = compute_dtype(student_logits, teacher_logits, target_probs)
        ys = torch.softmax(student_logits.to(dtype) / self.tau, dim=1)
        if target_probs is None:
            yt = torch.softmax(teacher_logits.to(dtype) / self.tau, dim=1)
        else:
            yt = target_probs.to(dtype)
        return ys, yt

    def _intra(self, ys: Tensor, yt: Tensor, weights: Tensor) -> Tensor:
        """1 - mean over classes of the across-sample correlation, per row of weights; 0 below 2 samples."""
        enough = (weights.sum(dim=1) >= 2).to(ys.dtype)
        return (1.0 - pearson_columns(ys, yt, weights).mean(dim=1)) * enough

    def per_sample(self, student_logits: Tensor, teacher_logits: Optional[Tensor], labels: Tensor,
                   target_probs: Optional[Tensor] = None) -> Tensor:
        ys, yt = self._probs(student_logits, teacher_logits, target_probs)
        inter = 1.0 - pearson_rows(ys, yt)
        intra = self._intra(ys, yt, torch.ones_like(ys[:, 0]).unsqueeze(0))[0]
        return self.tau**2 * (self.beta * inter + self.gamma * intra)

    def parts(self, student_logits: Tensor, target_logits: Optional[Tensor], labels: Tensor, masks: Tensor,
              reduction: str = "subset", target_probs: Optional[Tensor] = None) -> Tensor:
        ys, yt = self._probs(student_logits, target_logits, target_probs)
        masks = masks.to(ys.dtype)
        inter = masked_means(1.0 - pearson_rows(ys, yt), masks, reduction, self.group)  # [P]
        if self.group is not None:
            # Under DDP the intra-class correlation is taken over the global batch: every process
            # gathers all probabilities and masks and computes the same term; the gather's backward
            # hands each process the gradient of its own rows, summed over the processes' copies,
            # which DDP's averaging turns into the gradient of the one global term.
            ys, yt, masks = (gather_rows(t, self.group) for t in (ys, yt, masks.t()))
            masks = masks.t()
        if self.batch_terms == "subset":
            intra = self._intra(ys, yt, masks)
        else:
            intra = self._intra(ys, yt, torch.ones_like(masks[:1])).expand(masks.shape[0])
        intra = intra * part_factors(masks, reduction)
        return self.tau**2 * (self.beta * inter + self.gamma * intra)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, beta={self.beta}, gamma={self.gamma}, batch_terms={self.batch_terms!r}"
