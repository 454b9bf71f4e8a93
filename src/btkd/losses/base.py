"""The host-loss contract and the plain (no BTKD) distillation wrapper.

A host loss is a framework's distillation term. Most are computed *per sample*, so that BTKD can
average them over any subset of the batch (the right or the rectified samples) with 0/1 masks and no
indexing; a host with a batch-level term (DIST's intra-class relation) overrides ``parts``, which
computes every part's term from the whole batch and the part masks.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice, check_epoch, check_pair, check_weight, keyword_options, same_definition

__all__ = ["HostLoss", "HOSTS", "NEEDS", "REDUCTIONS", "BATCH_TERMS", "register_host", "make_host", "Distill",
           "Logits", "view_list", "sum_ce", "check_views",
           "compute_dtype", "masked_means", "part_factors", "check_taus", "check_warmup", "warmup_scale"]

#: How a part's terms are averaged: over the part's own samples, or over the whole batch.
REDUCTIONS = ("subset", "batch")
#: Which samples a batch-level host term (e.g. DIST's intra-class relation) of one part is computed on.
BATCH_TERMS = ("subset", "batch")
#: What a host may need from the training loop beyond the two models' logits and the labels.
NEEDS = {
    "epoch": "its loss changes with the epoch: call set_epoch(epoch, epochs) (or pass epoch= to the loss) "
             "before each epoch's steps",
    "learnable": "it has parameters to train: give loss.parameters() to the optimizer and keep them in the "
                 "checkpoint",
    "two_views": "it distils two augmented views of each image (weak, strong): pass a list of two logits tensors "
                 "per model (the trainer makes the strong view: RandAugment + Cutout, see btkd.data.randaugment)",
    "student_target": "it distils towards the student's own (detached) logits as well",
}


def compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """The dtype losses compute in: float32 for half inputs (exp and log lose too much in bf16/fp16),
    float64 when an input is float64 (so gradcheck works and fp64 results stay fp64)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def check_taus(taus: object) -> Tuple[float, ...]:
    """A non-empty list of temperatures > 0 (the several temperatures of MLKD and SLD)."""
    from .._checks import check_positive

    if isinstance(taus, (str, bytes)) or not hasattr(taus, "__iter__"):
        raise ValueError(f"taus must be a list of temperatures, got {taus!r}")
    out = tuple(check_positive("taus", t) for t in taus)
    if not out:
        raise ValueError("taus must hold at least one temperature")
    return out


def check_warmup(warmup: object) -> int:
    """A warm-up length: a whole number of epochs >= 0 (0 disables it)."""
    from .._checks import check_real

    warm = check_real("warmup", warmup)
    if not (math.isfinite(warm) and warm >= 0 and float(warm).is_integer()):
        raise ValueError(f"warmup={warm!r} must be a whole number of epochs >= 0 (0 disables the warm-up)")
    return int(warm)


def warmup_scale(epoch: float, warmup: int) -> float:
    """The linear warm-up factor min((floor(e) + 1) / warmup, 1) at the 0-based epoch e (mdistiller's
    ``min(epoch / warmup, 1)`` with its 1-based epoch); 1 when ``warmup`` is 0."""
    return 1.0 if warmup == 0 else min((math.floor(epoch) + 1) / warmup, 1.0)


def masked_means(values: Tensor, masks: Tensor, reduction: str = "subset", group: Any = None) -> Tensor:
    """Each part's mean of per-sample ``values`` [N] under 0/1 ``masks`` [P, N] -> [P].

    ``subset`` divides a part's sum by its own size (an empty part gives exactly 0), ``batch`` by the
    batch size N. One product with the masks, no indexing: nothing synchronises with the host.

    ``group`` (a torch.distributed process group, or ``"world"``): the batch is spread over the group's
    processes, and each part's mean is over the *global* part. The part sizes are all-reduced (no
    gradient flows through a size), and the local sum is scaled by the number of processes W, so that
    the average of the processes' gradients, as DDP takes it, is the gradient of the global mean:
    a run on W processes with batch b each equals one process with batch W * b. With ``batch`` the
    global denominator is W * N and the local value needs no change.
    """
    masks = masks.to(values.dtype)
    sums = (masks * values).sum(dim=1)  # not a matmul: no TF32 rounding
    if reduction != "subset":
        return sums / values.shape[0]
    counts = masks.sum(dim=1)
    if group is not None:
        import torch.distributed as tdist

        group = None if group == "world" else group
        counts = counts.detach().clone()
        tdist.all_reduce(counts, group=group)
        sums = sums * tdist.get_world_size(group)
    return sums / counts.clamp(min=1)


def part_factors(masks: Tensor, reduction: str = "subset") -> Tensor:
    """The factor a batch-level term of each part gets, so that it is reduced like the per-sample terms:
    1 for a non-empty part and 0 for an empty one (``subset``), or the part's share of the batch
    (``batch``, where a part's per-sample sum is divided by N). [P, N] -> [P]."""
    counts = masks.sum(dim=1)
    if reduction == "subset":
        return (counts > 0).to(counts.dtype)
    return counts / masks.shape[1]


class HostLoss(nn.Module):
    """Base class of host distillation losses.

    Subclasses implement ``per_sample(student_logits, teacher_logits, labels, target_probs=None)
    -> Tensor[N]``: the distillation term of each sample, with the host's own weights and temperature
    factor, and may override

    - ``scale(epoch)``: an epoch-dependent multiplier of the whole term, such as DKD's warm-up.
      Keeping it out of ``per_sample`` lets a captured training step (CUDA graph) feed it as a
      device tensor.
    - ``set_epoch(epoch, epochs)``: for a loss whose *inside* depends on the epoch (CTKD's curriculum,
      SLD's second target). It writes the epoch's values into buffers **in place** (``fill_``), so a
      captured graph that reads them sees the new values; it must be called before the epoch's steps
      (``Distill`` and ``BTKD`` call it in ``forward``; a trainer calling ``compute`` calls
      ``loss.set_epoch``).
    - ``parts(student_logits, target_logits, labels, masks, reduction, target_probs=None) -> Tensor[P]``:
      the term of each part of the batch (``masks`` [P, N], 0/1). The default averages
      ``per_sample`` under each mask (over the part's size with ``"subset"``, over the batch size
      with ``"batch"``); a host with a batch-level term overrides
      it to compute that term on each part (see DIST). ``Distill`` calls it with one all-ones part,
      BTKD with the right and the rectified parts. It must not synchronise with the host (no
      ``.item()``, no boolean indexing) and must give exactly 0 for an empty part.

    Calling the host gives ``scale(epoch) * per_sample(...)``.

    Class metadata (for listings such as ``btkd methods``): ``paper`` (short citation), ``needs``
    (a tuple of keys of ``NEEDS``), ``rectifies`` (the host already repairs the teacher's wrong
    predictions, so BTKD refuses it), ``batch_level`` (it has a batch-level term), ``takes_probs``
    (it can distil towards a probability target computed at temperature ``tau``; ``rectify="reweight"``
    needs it), ``views`` (2 for a host that distils a weak and a strong view of each image, as MLKD:
    ``Distill`` and ``BTKD`` then take a sequence of logits per model, one per view, weak first), ``default_ce_weight`` / ``default_kd_weight`` (the framework's own CIFAR recipe) and
    ``defaults()`` (the options and their default values).
    """

    name: str = "host"
    paper: str = ""
    needs: Tuple[str, ...] = ()
    rectifies: bool = False
    batch_level: bool = False
    #: how many augmented views of each image the host distils (2: a weak and a strong view; its
    #: ``parts`` then takes one logits tensor and one mask set per view, weak first)
    views: int = 1
    takes_probs: bool = False
    tau: float = 1.0
    #: the CE and KD weights the framework's own recipe uses (docs/BENCHMARKS.md)
    default_ce_weight: float = 1.0
    default_kd_weight: float = 1.0

    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        """The host's options and their default values (from ``__init__``'s signature)."""
        out = {}
        for name, p in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out[name] = None if p.default is inspect.Parameter.empty else p.default
        return out

    def per_sample(self, student_logits: Tensor, teacher_logits: Optional[Tensor], labels: Tensor,
                   target_probs: Optional[Tensor] = None) -> Tensor:
        """The distillation term of each sample, ``[N]``, for logits ``[N, C]`` and labels ``[N]``
        (int64): what a host implements. ``teacher_logits`` may already be rectified (BTKD's swap);
        ``target_probs``, when given (BTKD's ``rectify="reweight"``, hosts with ``takes_probs``),
        replaces the teacher's softmax at ``tau`` as the target. Without ``scale(epoch)``; the base
        class raises NotImplementedError."""
        raise NotImplementedError(f"host {self.name!r} ({type(self).__name__}) must implement per_sample(student_logits, "
                                  "teacher_logits, labels, target_probs=None) -> one value per sample, shape [N] "
                                  "(or override parts); see btkd.losses.HostLoss")

    def scale(self, epoch: float) -> float:
        """The epoch-dependent multiplier of the whole term at the 0-based ``epoch`` (DKD's warm-up);
        1 by default."""
        return 1.0

    def set_epoch(self, epoch: float, epochs: int) -> None:
        """Update epoch-dependent state in place (buffers); the default host has none."""

    #: Set by `distribute`: the process group over which the parts' means are taken (None: this process).
    group: Any = None

    def distribute(self, group: Any = "world") -> None:
        """Take each part's mean over the whole batch of ``group``'s processes (with ``"subset"`` the
        part sizes are all-reduced and the local sum scaled by the number of processes, so that DDP's
        average of the gradients is the global mean's); every process must then compute the loss at every step, as DDP
        training does. ``None`` undoes it. btkd's hosts all accept it (DIST and MLKD gather the global
        batch for their batch-level terms); a host of your own whose batch-level terms cannot be taken
        this way should raise ValueError here (the trainer reports it as a ConfigError)."""
        self.group = group

    def parts(self, student_logits: Tensor, target_logits: Optional[Tensor], labels: Tensor, masks: Tensor,
              reduction: str = "subset", target_probs: Optional[Tensor] = None) -> Tensor:
        """Each part's distillation term, without ``scale``: [P] for ``masks`` [P, N]. A multi-view host
        gets one logits tensor, one mask set (and one probability target, if any) per view; by default
        the views' terms add up."""
        if not isinstance(student_logits, Tensor):
            views = len(student_logits)
            probs = [None] * views if target_probs is None else list(target_probs)
            total = None
            for s, t, m, p in zip(student_logits, target_logits, masks, probs):
                term = self.parts(s, t, labels, m, reduction, p)
                total = term if total is None else total + term
            return total
        values = self.per_sample(student_logits, target_logits, labels, target_probs)
        n = student_logits.shape[0]
        if values.shape != (n,):  # a batch mean would give both of BTKD's parts the same value, silently
            raise ValueError(f"host {self.name!r}: per_sample returned shape {list(values.shape)} for {n} samples; it "
                             f"must return one value per sample, shape [{n}] (reduce over classes, not over the batch)")
        return masked_means(values, masks, reduction, self.group)

    def forward(self, student_logits: Tensor, teacher_logits: Optional[Tensor], labels: Tensor, *,
                epoch: float = 0, epochs: int = 1, target_probs: Optional[Tensor] = None) -> Tensor:
        """``scale(epoch) * per_sample(...)`` after ``set_epoch(epoch, epochs)``: pass the epoch to an
        epoch-dependent host (left out, it is epoch 0)."""
        self.set_epoch(epoch, epochs)
        labels = labels.long()  # as Distill and BTKD: the hosts gather and scatter with them (no uint8 index)
        return self.scale(epoch) * self.per_sample(student_logits, teacher_logits, labels, target_probs)


#: name -> host class: the hosts ``BTKD(host=name)``, ``Distill(host=name)``, ``make_host`` and a
#: config's ``distill.method`` can name. Filled by `register_host`.
HOSTS: Dict[str, Type[HostLoss]] = {}


def register_host(name: str) -> Callable[[Type[HostLoss]], Type[HostLoss]]:
    """Class decorator: make a host loss available by name to ``BTKD(host=name)`` and configs.

    Sets the class's ``name`` and puts it into `HOSTS`; returns the class unchanged. Running the
    same definition again (a notebook cell) replaces it; another class under a taken name, or a
    ``needs`` entry that is not a key of ``NEEDS``, is a ValueError."""

    def wrap(cls: Type[HostLoss]) -> Type[HostLoss]:
        old = HOSTS.get(name)
        # the same definition run again (a notebook cell re-run) replaces itself; another one is refused
        if old is not None and old is not cls and not same_definition(old, cls):
            raise ValueError(f"a host loss named {name!r} is already registered ({old.__module__}.{old.__qualname__}); "
                             "pick another name")
        unknown = sorted(set(getattr(cls, "needs", ())) - set(NEEDS))
        if unknown:
            raise ValueError(f"host {name!r} declares needs {unknown}; known needs are {sorted(NEEDS)}")
        cls.name = name
        HOSTS[name] = cls
        return cls

    return wrap


def make_host(host, **options) -> HostLoss:
    """A host loss from its registered name and options, or an instance passed through.

    ``host`` is a name in `HOSTS` (``"kd"``) or a `HostLoss` object; ``options`` are the named
    host's constructor arguments (``tau=4.0``). An unknown name, an option the host does not take,
    or options given with an object are a ValueError naming them."""
    if isinstance(host, HostLoss):
        if options:
            raise ValueError(
                f"options {sorted(options)} were given with a host object; set them on the object instead"
            )
        return host
    name = check_choice("host", host, HOSTS)
    accepted = keyword_options(HOSTS[name])  # None: it passes options on (ls: its inner host's)
    unknown = [] if accepted is None else sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"host {name!r} has no option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"its options are {', '.join(accepted) or 'none'}")
    try:
        return HOSTS[name](**options)
    except TypeError as err:
        raise ValueError(f"bad options for host {name!r}: {err}") from None


def kl_per_sample(target_probs: Tensor, student_log_probs: Tensor) -> Tensor:
    """KL(target || student) per row; 0 * log 0 counts as 0, with a finite gradient: xlogy(p, p) has a
    NaN one at p = 0, which a target that requires grad (a confident teacher trained online, its
    probability underflowing to 0) would get. The clamp only acts below the smallest normal number,
    where p log p is below 1e-36 (float32)."""
    tiny = torch.finfo(target_probs.dtype).tiny
    return (torch.xlogy(target_probs, target_probs.clamp(min=tiny)) - target_probs * student_log_probs).sum(dim=1)


def kl_log_per_sample(target_log_probs: Tensor, student_log_probs: Tensor) -> Tensor:
    """KL(target || student) per row from log-probabilities (finite where both are; a target that
    requires grad gets a finite gradient even where its probability underflows to 0)."""
    return (target_log_probs.exp() * (target_log_probs - student_log_probs)).sum(dim=1)


#: A model's logits: one tensor [N, C], or one per view (weak first) for a host with ``views`` 2.
Logits = Union[Tensor, Sequence[Tensor]]


def view_list(logits: Logits) -> List[Tensor]:
    """Logits as a list of views (one entry for a plain tensor)."""
    return [logits] if isinstance(logits, Tensor) else list(logits)


def sum_ce(students: Sequence[Tensor], labels: Tensor) -> Tensor:
    """The cross-entropy of every view, summed (MLKD trains on the labels of both views)."""
    ce = None
    for s in students:
        term = F.cross_entropy(s.to(compute_dtype(s)), labels)
        ce = term if ce is None else ce + term
    return ce


def check_views(host: HostLoss, student_logits: Logits, teacher_logits: Logits, labels: Tensor) -> None:
    """One logits tensor per model for a one-view host; for a multi-view host one tensor (a single
    view: the host's terms on that view alone) or a list with one per view. Each pair is checked
    like ``check_pair``."""
    students, teachers = view_list(student_logits), view_list(teacher_logits)
    if host.views == 1 and not (isinstance(student_logits, Tensor) and isinstance(teacher_logits, Tensor)):
        raise ValueError(f"host {host.name!r} distils one view: pass the student's and the teacher's logits as "
                         "one tensor each")
    if host.views > 1 and not (len(students) == len(teachers) and len(students) in (1, host.views)):
        raise ValueError(f"host {host.name!r} distils {host.views} views of each image (weak, strong): pass a "
                         f"list of {host.views} logits tensors per model (or one tensor each for a single view), "
                         f"got {len(students)} for the student and {len(teachers)} for the teacher")
    for s, t in zip(students, teachers):
        check_pair(s, t, labels)


def advise(host: HostLoss, student_logits: Logits, epochs: int) -> None:
    """The trainer's warnings for a loss called from a user's loop (with ``validate=True``): MLKD's
    class-level term far from its recipe's size, and a warm-up longer than the run."""
    import warnings

    from .mlkd import class_term_scale

    s = view_list(student_logits)[0]
    scale = class_term_scale(host, s.shape[0], s.shape[1])
    if scale is not None and scale > 10:
        warnings.warn(f"MLKD's class-level term grows as (batch / classes)^2: at ({s.shape[0]} / {s.shape[1]})^2 it is "
                      f"{scale:.0f} times its size in the authors' CIFAR-100 recipe (64 / 100) and can collapse "
                      f"training; class_weight={1 / scale:.2g} restores the recipe's size", stacklevel=5)
    warmup = getattr(getattr(host, "inner", host), "warmup", 0)
    if warmup and epochs < warmup:
        warnings.warn(f"host {host.name!r}: its {warmup}-epoch warm-up outlasts the {epochs} epochs of training, so its "
                      f"distillation term never reaches full weight (at most {epochs / warmup:.2g}); pass warmup=...",
                      stacklevel=5)


class Distill(nn.Module):
    """Plain distillation with a host loss (the baseline BTKD is compared against).

    Args:
        host: a registered host name (``"kd"``, ``"dkd"``, ...; `HOSTS`) or a `HostLoss` object.
        ce_weight, kd_weight: the weights of the cross-entropy and of the host's term; None takes
            the host framework's own (KD: 0.1 / 0.9, DKD: 1 / 1), as ``BTKD`` does.
        validate: check the inputs of every call and warn where the trainer would, as ``BTKD``.
        **host_options: options of a host given by name, e.g. ``tau=4.0``.

    Calling it returns the same kind of dict as ``BTKD``: ``ce``, ``distill`` and ``total``
    (``ce_weight * ce + kd_weight * distill``). The distillation term is ``host.parts`` on the whole
    batch (one all-ones part), so a host with a batch-level term is computed as its framework
    defines it. Unlike ``BTKD`` it takes every host, also those that repair the teacher themselves
    (label-swap KD, SLD, RLD). A bad host, option or weight is a ValueError.
    """

    def __init__(self, host="kd", ce_weight: Optional[float] = None, kd_weight: Optional[float] = None,
                 validate: bool = True, **host_options):
        super().__init__()
        self.host = make_host(host, **host_options)
        self.ce_weight = check_weight("ce_weight", self.host.default_ce_weight if ce_weight is None else ce_weight)
        self.kd_weight = check_weight("kd_weight", self.host.default_kd_weight if kd_weight is None else kd_weight)
        self.validate = validate

    def set_epoch(self, epoch: float, epochs: int) -> None:
        """The host's epoch-dependent state (in place; call once per epoch when calling ``compute``)."""
        self.host.set_epoch(epoch, epochs)

    def distribute(self, group: Any = "world") -> None:
        """Means over the batch of all of ``group``'s processes (DDP); see ``HostLoss.distribute``."""
        self.host.distribute(group)

    def forward(self, student_logits: Logits, teacher_logits: Logits, labels: Tensor, *,
                epoch: Optional[float] = None, epochs: Optional[int] = None) -> Dict[str, Tensor]:
        """The terms ``{"ce", "distill", "total"}`` of one batch (logits and labels as ``BTKD`` takes
        them). ``epoch`` (0-based) and ``epochs`` as ``BTKD`` takes them; a host whose loss does not
        depend on the epoch (KD, NKD, DIST, ...) may leave them out. Giving one without the other,
        or neither to a host that needs them (``"epoch"`` in its ``needs``: DKD, CTKD, ...), is a
        TypeError."""
        if (epoch is None) != (epochs is None):
            raise TypeError(f"Distill({self.host.name!r}) takes epoch= and epochs= together (the 0-based epoch and "
                            "the number of epochs), or neither for a host that does not depend on the epoch")
        if epoch is None:
            if "epoch" in self.host.needs:
                raise TypeError(
                    f"Distill({self.host.name!r}) needs epoch= and epochs= (the 0-based epoch and the number of "
                    f"epochs, as BTKD takes them): {self.host.name}'s loss depends on the epoch (a warm-up or a "
                    "curriculum), and without them it would stay at its first epoch's value")
            epoch, epochs = 0, 1
        if self.validate:
            check_views(self.host, student_logits, teacher_logits, labels)
            epoch, epochs = check_epoch(epoch, epochs)
            advise(self.host, student_logits, epochs)
        self.set_epoch(epoch, epochs)
        return self.compute(student_logits, teacher_logits, labels, scale=self.host.scale(epoch))

    def compute(self, student_logits: Logits, teacher_logits: Logits, labels: Tensor,
                scale: Union[float, Tensor] = 1.0) -> Dict[str, Tensor]:
        """The terms with the host's epoch scale given (a float, or a device tensor in a graph). With a
        two-view host the logits are one tensor per view, and ``ce`` is the sum of the views' CE."""
        labels = labels.long()
        students, teachers = view_list(student_logits), [t.detach() for t in view_list(teacher_logits)]
        ce = sum_ce(students, labels)
        whole = torch.ones((1, labels.shape[0]), dtype=compute_dtype(students[0], teachers[0]),
                           device=students[0].device)
        if self.host.views == 1:
            distill = self.host.parts(students[0], teachers[0], labels, whole, "subset")[0]
        else:
            distill = self.host.parts(students, teachers, labels, [whole] * len(students), "subset")[0]
        distill = scale * distill
        total = self.ce_weight * ce + self.kd_weight * distill
        return {"ce": ce, "distill": distill, "total": total}
