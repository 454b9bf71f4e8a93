"""The training step: one teacher forward per lane, shared by the students of that lane, each student
with its own loss and optimizer, run eagerly or replayed from a CUDA graph.

A *lane* is one stream of batches (one seed: its data order and augmentation). The students of a
lane see byte-identical batches and the very same teacher logits, so they differ in their loss only;
several lanes train several seeds side by side in one step.

Both modes run the same code (`_body`), so the fast path computes the same function. Everything that
changes between steps lives in device tensors updated in place: the learning rate (a tensor held
by the optimizer), the loss weights and the host's epoch scale (DKD warm-up), and the metric
accumulators. So a captured graph stays valid for the whole run, and no step synchronises with the
host: metrics are read once per epoch.
"""

from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..bias import teacher_right
from ..losses.base import Distill
from ..strategy import BTKD
from .evaluate import autocast_for, forward_precision

__all__ = ["TrainStep"]

Batch = Union[Tensor, Sequence[Tensor]]


def raise_recompile_limit(versions: int) -> None:
    """Let torch.compile keep ``versions`` compiled versions of one function (and some to spare)."""
    import torch._dynamo.config as dynamo

    name = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    setattr(dynamo, name, max(getattr(dynamo, name), versions + 8))


class TrainStep:
    """``step(x, y)`` trains every student on one batch per lane; metrics are read once per epoch.

    Args:
        students, optimizers, losses: one per student; a loss is ``None`` (cross-entropy), a
            ``Distill`` or a ``BTKD`` module.
        teacher: the frozen teacher in eval mode, or None.
        epochs: the length of training (for the schedules).
        amp_dtype: autocast dtype (bf16) or None for fp32.
        cuda_graph: capture the whole step (forward, backward, optimizer) in one CUDA graph at the
            first call and replay it afterwards; needs fused SGD with a tensor learning rate.
        compile_loss: wrap each loss's ``compute`` in ``torch.compile``.
        lanes: the lane of each student (default: all in lane 0). ``step(x, y)`` then takes one
            ``x`` and one ``y`` per lane (plain tensors when there is a single lane).
            A lane's ``x`` is one tensor, or a tuple of views ``(weak, strong)`` when a student of
            the lane has a two-view host (MLKD): that student and the teacher see both views (one
            forward each), the others the weak view only.
        teacher_precision: the teacher's forward (its argmax decides BTKD's split): ``"same"`` as
            the students, ``"fp32"`` (IEEE float32: TF32 off, even when the students autocast) or
            ``"tf32"`` (float32 with TF32 tensor cores).
        world_size: processes under DDP. DDP averages the students' gradients; the gradients of a
            loss's own parameters (CTKD's temperature) are averaged here, so every process keeps
            the same ones.
    """

    def __init__(self, students: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer],
                 losses: Sequence[Optional[nn.Module]], teacher: Optional[nn.Module], epochs: int,
                 amp_dtype: Optional[torch.dtype] = None, cuda_graph: bool = False, compile_loss: bool = False,
                 lanes: Optional[Sequence[int]] = None, teacher_precision: str = "same", world_size: int = 1):
        if not (len(students) == len(optimizers) == len(losses)) or not students:
            raise ValueError("need one optimizer and one loss per student, and at least one student")
        lanes = [0] * len(students) if lanes is None else [int(lane) for lane in lanes]
        if len(lanes) != len(students) or sorted(set(lanes)) != list(range(max(lanes) + 1)):
            raise ValueError(f"lanes must give each student a lane numbered 0, 1, ... with none empty, got {lanes}")
        self.students, self.optimizers, self.losses = list(students), list(optimizers), list(losses)
        self.lanes, self.num_lanes = lanes, max(lanes) + 1
        # How many views each student distils, and how many each lane's teacher must see.
        self.views = [getattr(getattr(loss, "host", None), "views", 1) for loss in self.losses]
        self.lane_views = [max(v for v, lane in zip(self.views, lanes) if lane == i) for i in range(self.num_lanes)]
        self.teacher, self.epochs, self.amp_dtype = teacher, epochs, amp_dtype
        self.device = next(self.students[0].parameters()).device
        if cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs the models on a CUDA device")
        self.cuda_graph = cuda_graph
        # Autocast's weight cache is off in both modes: a captured graph needs it off, and with it on an
        # eager step would add up a weight's gradients from two views (MLKD's) in bf16 through the one
        # cached cast, where the graph adds them in float32: the eager fallback would compute another function.
        self._autocast = autocast_for(amp_dtype, self.device, cache_enabled=False)
        self._teacher_autocast = (self._autocast if teacher_precision == "same" else
                                  forward_precision(teacher_precision, self.device, cache_enabled=False))
        # torch.compile fuses the loss's many small kernels (worth it when launch-bound). Every loss
        # of another host or options is one more compiled version of the same `compute`; past
        # dynamo's limit (8) the rest would run uncompiled (a bench of 11 hosts), so it is raised.
        if compile_loss:
            raise_recompile_limit(len(self.losses))
        self.computes = [None if loss is None else (torch.compile(loss.compute) if compile_loss else loss.compute)
                         for loss in self.losses]
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        dev = self.device
        # Per-student loss weights, host scale and beta as device tensors (see `set_epoch`).
        self.weights = [
            {k: torch.zeros((), device=dev) for k in ("ce", "distill_right", "distill_rectified", "scale", "beta")}
            for _ in self.students
        ]
        # Per student, one accumulator: the loss terms in sorted order, then samples, correct and teacher
        # correct (made at the first step, when the terms are known; see `_accumulate`).
        self.metric_names: List[List[str]] = [[] for _ in self.students]
        self.sums: List[Optional[Tensor]] = [None] * len(self.students)
        self._factors: Dict[tuple, Tensor] = {}
        self._zero, self._one = torch.zeros((), device=dev), torch.ones((), device=dev)
        self.world_size = world_size
        self.loss_params = [[p for p in loss.parameters() if p.requires_grad] if loss is not None and world_size > 1
                            else [] for loss in self.losses]
        self.set_epoch(0)  # a step taken before any set_epoch trains with epoch 0's weights
        # Students taken out of training (diverged in a grid); skipped in eager mode. A captured
        # graph keeps computing them, harmlessly: nothing reads their results.
        self.active = [True] * len(self.students)

    # ------------------------------------------------------------------ per-epoch / per-step state

    def set_epoch(self, epoch: float) -> None:
        """Write the epoch's loss weights into the device tensors, and the losses' own epoch state
        (CTKD's curriculum, SLD's switch) into their buffers, in place (no host sync)."""
        for loss, w in zip(self.losses, self.weights):
            if loss is not None:
                loss.set_epoch(epoch, self.epochs)
            if isinstance(loss, BTKD):
                values = loss.weights(epoch, self.epochs)
                values["beta"] = loss.beta(epoch, self.epochs)
                values["scale"] = loss.host.scale(epoch)
            elif isinstance(loss, Distill):
                values = {"scale": loss.host.scale(epoch)}
            else:
                continue
            for k, v in values.items():
                w[k].fill_(v)

    def set_lr(self, lr: Union[float, Sequence[float]]) -> None:
        """Set the learning rate of every student (one value, or one per student)."""
        rates = [lr] * len(self.optimizers) if isinstance(lr, (int, float)) else list(lr)
        for opt, rate in zip(self.optimizers, rates):
            for group in opt.param_groups:
                if isinstance(group["lr"], Tensor):
                    group["lr"].fill_(rate)
                else:
                    group["lr"] = rate

    # ------------------------------------------------------------------ the step

    def _body(self, xs: Sequence[Sequence[Tensor]], ys: Sequence[Tensor], streams: bool = False) -> None:
        """One step. With ``streams`` (used while capturing) each lane's teacher forward runs on its
        own stream beside the student forwards, and each of several students on its own stream: at
        batch 64 single kernels leave most of the GPU idle, so independent work overlaps."""
        main = torch.cuda.current_stream() if streams else None
        # teacher_logits[lane][view]: one forward per view a student of the lane needs
        teacher_logits: List[List[Optional[Tensor]]] = [[None] * len(x) for x in xs]
        if self.teacher is not None:
            for lane in range(self.num_lanes):
                stream = self._teacher_streams[lane] if streams else None
                with self._on(stream, main), torch.no_grad(), self._teacher_autocast():
                    for v in range(self.lane_views[lane]):
                        teacher_logits[lane][v] = self.teacher(xs[lane][v])
        several = streams and len(self.students) > 1
        for k, (student, opt, loss) in enumerate(zip(self.students, self.optimizers, self.losses)):
            if not self.active[k] and not streams and not self.cuda_graph:
                continue
            lane, n_views = self.lanes[k], self.views[k]
            views, y, t_views = xs[lane][:n_views], ys[lane], teacher_logits[lane][:n_views]
            with self._on(self._student_streams[k] if several else None, main):
                with self._autocast():
                    # one forward per view (as MLKD's authors: each view has its own BN statistics)
                    logit_views = [student(x) for x in views]
                if streams and t_views[0] is not None:
                    torch.cuda.current_stream().wait_stream(self._teacher_streams[lane])
                logits, t_logits = logit_views[0], t_views[0]
                # a one-view loss takes tensors, a two-view loss one tensor per view
                s_in, t_in = (logits, t_logits) if n_views == 1 else (logit_views, t_views)
                w = self.weights[k]
                if loss is None:
                    ce = F.cross_entropy(logits.float(), y)
                    terms = {"ce": ce, "total": ce}
                elif isinstance(loss, BTKD):
                    weights = {name: w[name] for name in ("ce", "distill_right", "distill_rectified")}
                    terms = self.computes[k](s_in, t_in, y, weights, scale=w["scale"], beta=w["beta"])
                else:
                    terms = self.computes[k](s_in, t_in, y, scale=w["scale"])
                opt.zero_grad(set_to_none=True)
                terms["total"].backward()
                if self.loss_params[k]:
                    self._average_loss_grads(k)
                opt.step()
                self._accumulate(k, terms, logits, t_logits, y)
        if streams:
            joined = (self._teacher_streams if self.teacher is not None else []) + \
                (self._student_streams if several else [])
            for stream in joined:
                main.wait_stream(stream)

    def _average_loss_grads(self, k: int) -> None:
        import torch.distributed as tdist

        for p in self.loss_params[k]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)  # every process joins the collective
            tdist.all_reduce(p.grad)
            p.grad /= self.world_size

    @staticmethod
    def _on(stream, main):
        if stream is None:
            return contextlib.nullcontext()
        stream.wait_stream(main)  # fork from the capturing stream, so the branch joins the graph
        return torch.cuda.stream(stream)

    def _accumulate(self, k: int, terms: Dict[str, Tensor], logits: Tensor, teacher_logits: Optional[Tensor],
                    y: Tensor) -> None:
        """Add the batch's terms (each a batch mean, made a sum by the batch size; the counts n_wrong
        and n_rectified as they are) and counts to student k's accumulator: one stack, one product and
        one sum for them all, not a few small kernels per term (each one a launch, or a node of the
        captured graph). The same float32 operations as term by term, so the same sums, bit for bit."""
        n = y.numel()
        names = sorted(terms)
        values = [terms[name].detach() for name in names]
        values.append(self._one)  # times n: the samples
        values.append((logits.detach().argmax(1) == y).sum())
        # the teacher's right samples as BTKD's split counts them (a label tied for the top is right)
        values.append(teacher_right(teacher_logits, y).sum() if teacher_logits is not None else self._zero)
        batch = torch.stack(values).float() * self._factor(names, n)
        if self.sums[k] is None:
            self.metric_names[k], self.sums[k] = names, batch
        else:
            self.sums[k] += batch

    def _factor(self, names: List[str], n: int) -> Tensor:
        """What each entry of the accumulator is multiplied by: n for a mean (and the samples), 1 for
        a count. Made once per batch size, before a graph is captured (its warm-up has the same batch)."""
        key = (tuple(names), n)
        if key not in self._factors:
            factor = torch.full((len(names) + 3,), float(n), device=self.device)  # fills: no host copy
            for i, name in enumerate(names + ["samples", "correct", "teacher correct"]):
                if name in ("n_wrong", "n_rectified", "correct", "teacher correct"):
                    factor[i:i + 1].fill_(1.0)
            self._factors[key] = factor
        return self._factors[key]

    def __call__(self, x: Batch, y: Batch) -> None:
        xs = [x] if isinstance(x, Tensor) else list(x)
        ys = [y] if isinstance(y, Tensor) else list(y)
        if len(xs) != self.num_lanes or len(ys) != self.num_lanes:
            raise ValueError(f"this step has {self.num_lanes} lane(s): pass one x and one y per lane, "
                             f"got {len(xs)} and {len(ys)}")
        xs = [(x,) if isinstance(x, Tensor) else tuple(x) for x in xs]  # each lane: a tuple of views
        for lane, x in enumerate(xs):
            if len(x) < self.lane_views[lane]:
                raise ValueError(f"lane {lane} has a student with a two-view host (MLKD): its x must be a tuple "
                                 f"(weak, strong) of {self.lane_views[lane]} views, got {len(x)}; build the "
                                 "training loader with a strong view (ResidentLoader(..., strong_view=True))")
        if not self.cuda_graph:
            self._body(xs, ys)
            return
        if self.graph is None:
            self._capture(xs, ys)
        shapes, captured = _batch_shapes(xs, ys), _batch_shapes(self.static_x, self.static_y)
        if shapes != captured:  # copy_ would broadcast a batch of one into the captured batch, silently
            raise ValueError(f"a CUDA graph replays the batch shapes it captured, {captured}; got {shapes}. "
                             "Give every step a full batch (drop the last partial one, as btkd's training loaders "
                             "do), or train without the graph (cuda_graph=False)")
        for static, new in zip(self.static_x, xs):
            for s_view, n_view in zip(static, new):
                s_view.copy_(n_view)
        for static, new in zip(self.static_y, ys):
            static.copy_(new)
        self.graph.replay()

    # ------------------------------------------------------------------ CUDA graph

    def _capture(self, xs: List[Tensor], ys: List[Tensor]) -> None:
        """Warm up on a side stream, put every weight, buffer and momentum back, then capture.

        The warm-up steps are undone so that the captured run trains exactly like an eager one:
        parameters and BN statistics are copied back in place, and momentum buffers that did not
        exist before are zeroed (SGD's first step, buf = grad, equals buf = 0.9 * 0 + grad).
        """
        self.static_x = [tuple(v.clone() for v in x) for x in xs]
        self.static_y = [y.clone() for y in ys]
        # Students and losses (a loss may hold learnable parts, CTKD's temperature) are put back.
        trained = self.students + [loss for loss in self.losses if loss is not None]
        saved = [{k: v.detach().clone() for k, v in s.state_dict().items()} for s in trained]
        had_momentum = [{id(p) for p in opt.state if "momentum_buffer" in opt.state[p] and
                         opt.state[p]["momentum_buffer"] is not None} for opt in self.optimizers]
        saved_momentum = [{id(p): opt.state[p]["momentum_buffer"].clone() for p in opt.state
                           if id(p) in had} for opt, had in zip(self.optimizers, had_momentum)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._body(self.static_x, self.static_y)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for module, state in zip(trained, saved):
                for name, value in module.state_dict().items():
                    value.copy_(state[name])
            for opt, had, mom in zip(self.optimizers, had_momentum, saved_momentum):
                for p, st in opt.state.items():
                    buf = st.get("momentum_buffer")
                    if buf is not None:
                        buf.copy_(mom[id(p)]) if id(p) in had else buf.zero_()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self._teacher_streams = [torch.cuda.Stream() for _ in range(self.num_lanes)]
        self._student_streams = [torch.cuda.Stream() for _ in self.students]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body(self.static_x, self.static_y, streams=True)
        self.reset_metrics()

    # ------------------------------------------------------------------ metrics

    def reset_metrics(self) -> None:
        for sums in self.sums:
            if sums is not None:
                sums.zero_()

    def metric_tensor(self, k: int = 0) -> tuple[List[str], Tensor]:
        """(names, packed sums) of student k: the loss terms in sorted order, then the 3 counts."""
        if self.sums[k] is None:  # no step yet
            return [], torch.zeros(3, device=self.device)
        return list(self.metric_names[k]), self.sums[k].clone()

    def all_metrics(self) -> tuple[List[List[str]], Tensor]:
        """Every student's (names, packed sums) in one tensor, so an epoch needs one host sync."""
        parts = [self.metric_tensor(k) for k in range(len(self.students))]
        return [names for names, _ in parts], torch.cat([packed for _, packed in parts])


def _batch_shapes(xs, ys) -> tuple:
    """The shapes of a step's inputs: every lane's views, then every lane's labels."""
    return [[tuple(v.shape) for v in x] for x in xs], [tuple(y.shape) for y in ys]
