"""Jin, Wang and Lin, "Multi-Level Logit Distillation" (CVPR 2023): MLKD.

MLKD aligns the two models' predictions at three levels, each at several temperatures (the
"prediction augmentation"), on two augmented views of every image (a weak view: crop and flip; a
strong one: crop, flip, RandAugment and Cutout, see ``btkd.data.randaugment``). With
P = softmax(Z / T) for one view, [B, C]:

    instance level:  L_ins(T)   = T^2 * KL(P^T_i || P^S_i)                        per sample i
    batch level:     L_batch(T) = 1/B * || P^T P^T' - P^S P^S' ||_F^2             (B x B: how inputs relate)
    class level:     L_class(T) = 1/C * || P^T' P^T - P^S' P^S ||_F^2             (C x C: how classes relate)

    L = sum over views v, temperatures T in taus of
        w_ins * mean_i L_ins(T) + [v in relation views] (w_batch * L_batch(T) + w_class * L_class(T))

plus cross-entropy on both views (``Distill`` and ``BTKD`` take the CE of every view a host sees).
Defaults follow the authors' code: taus 2..6, CE weight 0.1 and distillation weight 0.9 (its KD
defaults), the relation terms on the weak view only (the strong-view ones are computed there but
left out of the loss). Two things of that code are *not* reproduced by default: its confidence masks
multiply losses that are already batch means, so they only scale the weak view's terms by the share of
samples (or classes) at or below the median confidence (about 0.5); and its strong-view instance term
takes the weak view's logits at temperatures 2 and 6. Here every view's terms use that view.
``authors_code=True`` reproduces both, to match the published MLKD numbers term for term:

    weak view:    s_n * sum_T (w_ins * L_ins(T) + w_batch * L_batch(T)) + s_c * sum_T w_class * L_class(T)
    strong view:  w_ins * (L_ins(3) + L_ins(4) + L_ins(5))  +  w_ins * (L_ins(2) + L_ins(6)) of the weak view

with s_n the share of the batch whose top probability (float32 softmax at temperature 1 of the target
logits given for the weak view) is at most its median, and s_c the share of classes whose summed
probability is at most theirs (medians interpolated as numpy's percentile does: 1/2 for an even count
without ties; 1 when more than half the batch's top probabilities round to exactly 1 in float32).
Under DDP the shares are those of the global batch. Wrapped in logit standardisation, the shares and
all terms come from the standardised logits the host is given (the LS authors' MLKD takes its masks
and relation terms from the raw ones): not a reproduction of their code.

How BTKD applies (``parts``): each view is split on its own teacher prediction, and its wrong rows
are rectified in that view; the instance terms are averaged over each part's samples, and the batch
and class terms of a part are computed on the part's samples (``batch_terms="subset"``: its Gram
matrices are those of the part alone, as if MLKD were run on it) or once on the whole batch
(``batch_terms="batch"``), as DIST's intra-class term is. Under DDP the relation terms are taken over
the global batch (the probabilities are gathered across processes, as DIST does).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from .._checks import check_choice, check_weight
from .base import (BATCH_TERMS, HostLoss, check_taus, compute_dtype, kl_per_sample, masked_means, part_factors,
                   register_host)
from .dist import gather_rows

#: Which views the batch- and class-level terms are taken on.
RELATION_VIEWS = ("weak", "both")
#: The authors' code's temperatures: all five on the weak view; its strong-view loss takes three on the
#: strong view and the other two on the weak view (``authors_code=True``).
AUTHORS_TAUS = (2.0, 3.0, 4.0, 5.0, 6.0)
AUTHORS_STRONG_TAUS = (3.0, 4.0, 5.0)
AUTHORS_STRONG_FROM_WEAK = (2.0, 6.0)

Views = Union[Tensor, Sequence[Tensor]]


def as_views(x: Union[None, Views]) -> List[Optional[Tensor]]:
    """A view or a sequence of views as a list."""
    if x is None or isinstance(x, Tensor):
        return [x]
    return list(x)


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b without TF32: on a GPU with TF32 matmuls on (btkd's bf16 runs) float32 products keep
    10 mantissa bits, too few for the small differences of two Gram matrices; float64 is exact enough
    and these matrices are small (and autocast leaves float64 alone). On the CPU, a loss called inside a
    ``torch.autocast("cpu")`` block would take the product in bf16 (7 bits): autocast is turned off."""
    if a.is_cuda and a.dtype == torch.float32:
        return (a.double() @ b.double()).float()
    if a.device.type == "cpu":
        with torch.autocast("cpu", enabled=False):
            return a @ b
    return a @ b


def median_confidence_shares(teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """The authors' code's confidence masks reduced to what they do to a batch mean: (share of samples
    whose top probability is at most the median, share of classes whose summed probability is at most
    the median), probabilities at temperature 1, medians interpolated linearly (numpy's percentile).
    On the device, without synchronising; no gradient."""
    with torch.no_grad():
        # float32, as their code: a confident teacher's top probability rounds to exactly 1 there, and
        # when half the batch does, the median is 1 and every sample counts
        probs = torch.softmax(teacher_logits.detach().float(), dim=1)
        return _share_at_most_median(probs.amax(dim=1)), _share_at_most_median(probs.sum(dim=0))


def _share_at_most_median(values: Tensor) -> Tensor:
    """The share of ``values`` [n] at most their median, the median of an even count being the mean of
    the two middle values (as numpy's percentile(50)); sort-based, so nothing leaves the device."""
    ordered, n = values.sort().values, values.shape[0]
    median = (ordered[(n - 1) // 2].double() + ordered[n // 2].double()) / 2  # exact midpoint of two floats
    return (values.double() <= median).double().mean()


def batch_relation(ps: Tensor, pt: Tensor, masks: Tensor) -> Tensor:
    """1/n ||Gt - Gs||_F^2 of each part, G = P P' over the part's n samples: ps, pt [N, C],
    masks [P, N] 0/1 -> [P]; an empty part gives 0."""
    diff = _mm(pt, pt.t()) - _mm(ps, ps.t())  # [N, N]
    pair = masks.unsqueeze(2) * masks.unsqueeze(1)  # [P, N, N]: both samples in the part
    return (pair * diff.pow(2)).sum(dim=(1, 2)) / masks.sum(dim=1).clamp(min=1)


def class_relation(ps: Tensor, pt: Tensor, masks: Tensor) -> Tensor:
    """1/C ||Mt - Ms||_F^2 of each part, M = P' P over the part's samples -> [P]."""
    weighted_s, weighted_t = masks.unsqueeze(2) * ps, masks.unsqueeze(2) * pt  # [P, N, C]
    diff = _mm(pt.t().unsqueeze(0), weighted_t) - _mm(ps.t().unsqueeze(0), weighted_s)  # [P, C, C]
    return diff.pow(2).sum(dim=(1, 2)) / ps.shape[1]


@register_host("mlkd")
class MLKD(HostLoss):
    """Instance-, batch- and class-level alignment at several temperatures, on two views.

    Options: ``taus`` (the temperatures), ``instance_weight``, ``batch_weight``, ``class_weight``,
    ``relation_views`` (``"weak"``: the batch and class terms on the weak view only, as the authors'
    code; ``"both"``), ``batch_terms`` (the batch and class terms of a part on its own samples,
    ``"subset"``, or on the whole batch, ``"batch"``) and ``authors_code`` (two traits of the
    authors' code, for matching their published numbers). The formulas are in btkd/losses/mlkd.py.
    Pass one logits tensor per view, weak first; called with single tensors (one view) it computes
    that view's terms.
    """

    paper = "Jin et al., CVPR 2023: multi-level logit distillation (MLKD), weak and strong views"
    needs = ("two_views",)
    views = 2
    batch_level = True
    default_ce_weight = 0.1
    default_kd_weight = 0.9

    def __init__(self, taus: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0), instance_weight: float = 1.0,
                 batch_weight: float = 1.0, class_weight: float = 1.0, relation_views: str = "weak",
                 batch_terms: str = "subset", authors_code: bool = False):
        super().__init__()
        self.taus = check_taus(taus)
        if not isinstance(authors_code, bool):
            raise ValueError(f"authors_code must be true or false, got {authors_code!r}")
        self.authors_code = authors_code
        if authors_code and tuple(sorted(self.taus)) != AUTHORS_TAUS:
            raise ValueError(f"authors_code=True reproduces the authors' code, whose temperatures are "
                             f"{list(AUTHORS_TAUS)}; got taus={list(self.taus)}: leave taus at its default")
        if authors_code and relation_views != "weak":
            raise ValueError("authors_code=True takes the batch and class terms on the weak view only, as the "
                             "authors' code: leave relation_views at 'weak'")
        self.instance_weight = check_weight("instance_weight", instance_weight)
        self.batch_weight = check_weight("batch_weight", batch_weight)
        self.class_weight = check_weight("class_weight", class_weight)
        self.relation_views = check_choice("relation_views", relation_views, RELATION_VIEWS)
        self.batch_terms = check_choice("batch_terms", batch_terms, BATCH_TERMS)

    @property
    def tau(self) -> float:
        return self.taus[0]

    def _view(self, s: Tensor, t: Tensor, masks: Tensor, relations: bool, reduction: str,
              taus: Optional[Sequence[float]] = None, sample_share=1.0, class_share=1.0) -> tuple[Tensor, Tensor]:
        """One view: (each sample's weighted instance term [N], each part's weighted relation term [P],
        reduced like the per-sample terms: see ``part_factors``), at ``taus`` (default: the host's);
        ``sample_share`` scales the instance and batch terms, ``class_share`` the class terms (the
        authors' code's confidence masks)."""
        dtype = compute_dtype(s, t)
        s, t, masks = s.to(dtype), t.to(dtype), masks.to(dtype)
        instance = s.new_zeros(s.shape[0])
        ps_all, pt_all = [], []
        for tau in self.taus if taus is None else taus:
            log_ps = torch.log_softmax(s / tau, dim=1)
            pt = torch.softmax(t / tau, dim=1)
            instance = instance + tau**2 * kl_per_sample(pt, log_ps)
            ps_all.append(log_ps.exp())
            pt_all.append(pt)
        instance = self.instance_weight * sample_share * instance
        relation = s.new_zeros(masks.shape[0])
        if not relations or (self.batch_weight == 0 and self.class_weight == 0):
            return instance, relation
        if self.group is not None:
            # The relations of the global batch: gather every process's rows (see DIST).
            ps_all = [gather_rows(p, self.group) for p in ps_all]
            pt_all = [gather_rows(p, self.group) for p in pt_all]
            masks = gather_rows(masks.t().contiguous(), self.group).t()
        weights = masks if self.batch_terms == "subset" else torch.ones_like(masks)
        for ps, pt in zip(ps_all, pt_all):
            if self.batch_weight:
                relation = relation + self.batch_weight * sample_share * batch_relation(ps, pt, weights)
            if self.class_weight:
                relation = relation + self.class_weight * class_share * class_relation(ps, pt, weights)
        return instance, relation * part_factors(masks, reduction)

    def _views(self, student_logits: Views, target_logits: Optional[Views], masks) -> list:
        students, targets = as_views(student_logits), as_views(target_logits)
        masks = [masks] * len(students) if isinstance(masks, Tensor) else as_views(masks)
        if not (len(students) == len(targets) == len(masks)):
            raise ValueError(f"MLKD got {len(students)} student view(s), {len(targets)} teacher view(s) and "
                             f"{len(masks)} mask set(s); give one of each per view")
        return list(zip(students, targets, masks))

    def _view_terms(self, views: list, reduction: str) -> list:
        """(instance [N], relation [P], masks) of every term the loss sums, from (student, target, masks)
        of each view, weak first."""
        if not self.authors_code:
            return [(*self._view(s, t, m, v == 0 or self.relation_views == "both", reduction), m)
                    for v, (s, t, m) in enumerate(views)]
        (sw, tw, mw), strong = views[0], views[1:]
        # over the global batch under DDP, as the relation terms: W processes compute one process's loss
        sample_share, class_share = median_confidence_shares(tw if self.group is None else gather_rows(tw, self.group))
        terms = [(*self._view(sw, tw, mw, True, reduction, sample_share=sample_share, class_share=class_share), mw)]
        if strong:  # the strong view's loss: three temperatures on it, two on the weak view
            ss, ts, ms = strong[0]
            terms.append((*self._view(ss, ts, ms, False, reduction, taus=AUTHORS_STRONG_TAUS), ms))
            terms.append((*self._view(sw, tw, mw, False, reduction, taus=AUTHORS_STRONG_FROM_WEAK), mw))
        return terms

    def parts(self, student_logits: Views, target_logits: Optional[Views], labels: Tensor, masks,
              reduction: str = "subset", target_probs=None) -> Tensor:
        """Each part's term, summed over the views: ``student_logits`` and ``target_logits`` are one
        tensor or one per view (weak first), ``masks`` one [P, N] tensor or one per view."""
        if target_probs is not None:
            raise ValueError("MLKD distils at several temperatures from logits; it takes no probability target: "
                             "use rectify='swap' or 'none'")
        total = None
        for instance, relation, m in self._view_terms(self._views(student_logits, target_logits, masks), reduction):
            term = masked_means(instance, m.to(instance.dtype), reduction, self.group) + relation
            total = term if total is None else total + term
        return total

    def per_sample(self, student_logits: Views, teacher_logits: Optional[Views], labels: Tensor,
                   target_probs=None) -> Tensor:
        """Each sample's instance terms plus the whole batch's relation terms (so that the batch mean
        is the loss), summed over the views given."""
        if target_probs is not None:
            raise ValueError("MLKD distils at several temperatures from logits; it takes no probability target")
        students = as_views(student_logits)
        whole = torch.ones((1, students[0].shape[0]), device=students[0].device)
        out = None
        for instance, relation, _ in self._view_terms(self._views(student_logits, teacher_logits, whole), "subset"):
            term = instance + relation[0]
            out = term if out is None else out + term
        return out

    def extra_repr(self) -> str:
        return (f"taus={self.taus}, weights=({self.instance_weight}, {self.batch_weight}, {self.class_weight}), "
                f"relation_views={self.relation_views!r}, batch_terms={self.batch_terms!r}"
                + (", authors_code=True" if self.authors_code else ""))


#: Samples per class in a batch of the authors' CIFAR-100 recipe (batch 64, 100 classes).
RECIPE_SAMPLES_PER_CLASS = 64 / 100


def class_term_scale(host: HostLoss, batch: int, num_classes: int) -> Optional[float]:
    """How many times larger MLKD's class-level term is at this batch and class count than in its
    authors' CIFAR-100 recipe: ((batch / classes) / (64 / 100))^2, the term being a sum over C x C
    entries of P'P, each a sum over the batch, divided by C only. None for another host (or LS
    around one) or a class weight of 0."""
    inner = getattr(host, "inner", host)
    if not isinstance(inner, MLKD) or inner.class_weight == 0:
        return None
    return ((batch / num_classes) / RECIPE_SAMPLES_PER_CLASS) ** 2
