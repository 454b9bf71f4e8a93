"""The training loop: K >= 1 students against one frozen teacher, in lockstep epochs.

Each student (a *member*) has its own config (method, host and BTKD options, optimizer, learning
rate schedule), its own run folder with a per-epoch log, and its own state in the grid's one
checkpoint. Members with the same seed share a *lane*: the same batches, the same augmentation and
the same teacher logits (one teacher forward per batch), and students of one architecture and seed
start from the same weights, so two members of a lane differ in their loss only. `btkd train` and
`btkd distill` are grids of one; `btkd bench` is a grid of methods x seeds.

One atomic ``checkpoint.pt`` in the grid's root folder holds every member's state, so a kill at any
moment resumes all of them from the same epoch, to the results an uninterrupted run gives.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..config import BTKDConfig, Config, ConfigError, config_to_dict
from ..losses.mlkd import class_term_scale
from . import distributed as dist
from .build import (build_data, build_student, build_teacher, lr_factor, make_loss, make_optimizer,
                    per_iteration, per_process_batch, setup_runtime)
from .checkpoint import export_weights, load_checkpoint_file, rng_state, save_atomic, set_rng_state, weights_epoch
from .evaluate import autocast_for, eval_result, eval_sums, float32_forward, forward_precision, precision_name
from .fusion import is_folded
from .run_folder import (BEST, CONFIG, LAST, SUMMARY, TENSORBOARD, RunFolder, RunLock, bench_of_member, config_text,
                         create_locked, remove_stale_temp_files, write_text_atomic)
from .runinfo import environment
from .step import TrainStep
from ..weights import checkpoint_sha256, resolve_checkpoint

__all__ = ["Grid", "Member", "MemberSpec", "CHECKPOINT_FORMAT", "SHARED_KEYS", "RESUME_CHANGEABLE"]

CHECKPOINT_FORMAT = "btkd-checkpoint-2"
# What every member of a grid must agree on: they share data, teacher, device and length.
SHARED_KEYS = ("data", "runtime", "output_dir", "model.teacher", "model.teacher_checkpoint", "model.teacher_options",
               "optim.epochs")
# What a resume may change (logged in meta.json and in the next line of log.jsonl): a lower learning
# rate after a divergence, more epochs for a finished run (the schedules then follow the new length),
# where the same data now lies, and how and where the run computes.
RESUME_CHANGEABLE = ("optim.lr", "optim.epochs", "data.root", "runtime.device", "runtime.precision", "runtime.teacher_precision",
                     "runtime.compile", "runtime.cuda_graph", "runtime.progress", "runtime.threads",
                     "runtime.channels_last", "runtime.time_limit")


def match_param_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (SGD's momentum) its parameter's memory layout.
    load_state_dict keeps the layout a buffer was saved with, and fused SGD (the trainer's on a GPU)
    pairs elements by storage order: after a resume that changes runtime.channels_last, or moves a
    CPU run to a GPU, where it is on, each momentum entry would be added to another weight."""
    for p, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p).copy_(value)


#: The students the standard CIFAR recipe trains with lr 0.01 instead of 0.05.
LIGHT_CIFAR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


@dataclass
class MemberSpec:
    """What to train: a label (unique in the grid), the member's config and its run folder."""

    label: str
    cfg: Config
    run_dir: Path


@dataclass
class Member:
    """One student of a grid, with everything the loop needs about it."""

    label: str
    cfg: Config
    folder: RunFolder
    student: nn.Module  # the plain model: state dicts and exports
    model: nn.Module  # what is called: the student, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    loss_fn: Optional[nn.Module]
    lane: int
    best_acc: float = -1.0
    best_epoch: int = 0  # 1-based; 0 = none yet
    diverged: Optional[Dict[str, Any]] = None  # {"epoch", "reason"}: trained no further
    frozen: Optional[Dict[str, Any]] = None  # a diverged member's last good checkpoint entry
    resumes: Optional[List[Dict[str, Any]]] = None  # what each resume changed (meta.json)
    pending_changes: Optional[Dict[str, Any]] = None  # a resume's changes, for the next log line


def _get(d: Dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k not in ("options", "student_options", "teacher_options",
                                                   "schedule_options"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


#: What a resume records of where it ran (the run's meta.json keeps where it started).
RESUME_ENV_KEYS = ("device", "torch_version", "btkd_version", "git_commit", "world_size")


def resume_changes(saved: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    """The keys a resume changes, {key: (old, new)}; a key outside `RESUME_CHANGEABLE` is an error."""
    a, b = _flatten(saved), _flatten(new)
    changed = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    bad = [k for k in changed if k not in RESUME_CHANGEABLE]
    if bad:
        raise ConfigError(f"a resume cannot change {bad} (the run was started with {[changed[k][0] for k in bad]}); "
                          f"it may change only {list(RESUME_CHANGEABLE)}. Start a new run to change the rest")
    return changed


class Grid:
    """Train the members of ``specs`` together; ``fit()`` returns one summary per member.

    Members with the same seed see the same batches and the same teacher logits (one teacher
    forward per batch), and students of one architecture and seed start from the same weights, so
    two members of a seed differ in their loss only. One ``checkpoint.pt`` in ``root`` holds every
    member, so a killed grid resumes all of them from the same epoch. `btkd.engine.Trainer` is a grid
    of one; `btkd.bench.run_bench` builds a grid of methods x seeds (use it for a bench: it adds the
    statistics and the report).

    Args:
        specs: the members; they must agree on what they share (``data``, ``runtime``,
            ``output_dir``, the teacher and ``optim.epochs``), else a ConfigError.
        root: the grid's folder (checkpoint and lock); for a single run, its run folder.
        resume: continue from ``root/checkpoint.pt`` (the members' configs may differ from the
            saved ones only in the keys marked *resume* in docs/CONFIG.md, else a ConfigError).
        echo: where progress lines go.
        title: the name shown on progress bars and lines.
        root_files: {file name: text} written into ``root`` when the run opens it (a bench's
            ``bench.yaml``).
        option_prefixes: {member label: how its host options are set}, for the warnings that name
            one (default ``distill.options.``; a bench method's own ``bench.methods.<m>.distill.options.``).
    """

    def __init__(self, specs: Sequence[MemberSpec], root: Path, resume: bool = False,
                 echo: Callable[[str], None] = print, title: Optional[str] = None,
                 root_files: Optional[Dict[str, str]] = None, option_prefixes: Optional[Dict[str, str]] = None):
        if not specs:
            raise ValueError("a grid needs at least one member")
        self.specs = list(specs)
        self._check_specs()
        cfg = self.cfg = self.specs[0].cfg
        self.root = RunFolder(root)
        self.title = title or cfg.name
        self.resume = resume
        self.root_files = dict(root_files or {})
        self.option_prefixes = dict(option_prefixes or {})
        self.rt = setup_runtime(cfg)
        self.ctx = self.rt.ctx
        self.echo = echo if self.ctx.is_main else (lambda *_: None)
        self.epochs = cfg.optim.epochs
        self._check_root(resume)  # may turn a resume without a checkpoint into a fresh start
        self.lock = RunLock(self.root.path)

        self.data = build_data(cfg, self.rt)
        losses = [make_loss(s.cfg) for s in self.specs]
        distils = [s.label for s, loss in zip(self.specs, losses) if loss is not None]
        if distils and not cfg.model.teacher:
            raise ConfigError(f"distill.method={self.specs[0].cfg.distill.method!r} needs a teacher: set model.teacher "
                              "and model.teacher_checkpoint (or use distill.method=ce to train without one)")
        self.teacher = build_teacher(cfg, self.data, self.rt) if distils else None
        # what happened, not what was asked: folding is skipped (with a warning) for a model fx cannot trace
        self.teacher_bn_folded = self.teacher is not None and is_folded(self.teacher)
        self.seeds = list(dict.fromkeys(s.cfg.seed for s in self.specs))  # one lane per seed, in order
        self._warn_mlkd_scale(losses)
        self._warn_long_warmup(losses)
        self._warn_recipe_lr()
        self._warn_unused_btkd()
        # A two-view host (MLKD) makes every lane carry a strong view too; the others use the weak one.
        self.views = max([loss.host.views for loss in losses if loss is not None], default=1)
        self.train_loaders = [self.data.train_loader(seed, views=self.views) for seed in self.seeds]

        graph_ok = self.rt.on_cuda and self.ctx.world_size == 1 and self.data.resident
        if cfg.runtime.cuda_graph == "on" and not graph_ok:
            raise ConfigError("runtime.cuda_graph=on needs one CUDA GPU, no torchrun and a dataset held on the "
                              "device (not imagefolder); use runtime.cuda_graph=auto or off")
        self.cuda_graph = graph_ok and cfg.runtime.cuda_graph != "off"
        self.compile = cfg.runtime.compile == "on" or (cfg.runtime.compile == "auto" and self.cuda_graph)
        self.members: List[Member] = []
        for spec, loss in zip(self.specs, losses):
            if loss is not None:
                loss.to(self.rt.device)  # its buffers (CTKD's curriculum) must live beside the step
                if self.ctx.world_size > 1:  # the parts' means over the global batch, as one process
                    try:
                        loss.distribute("world")
                    except ValueError as err:
                        raise ConfigError(f"{spec.label}: {err}") from None
            student = build_student(spec.cfg, self.data, self.rt)
            model = student
            if self.ctx.world_size > 1:
                ids = [self.rt.device.index] if self.rt.on_cuda else None
                model = nn.parallel.DistributedDataParallel(student, device_ids=ids)
            if self.compile:
                model = torch.compile(model)
            optimizer = make_optimizer(spec.cfg, student, self.rt, tensor_lr=self.cuda_graph, loss=loss)
            self.members.append(Member(label=spec.label, cfg=spec.cfg, folder=RunFolder(spec.run_dir),
                                       student=student, model=model, optimizer=optimizer, loss_fn=loss,
                                       lane=self.seeds.index(spec.cfg.seed)))
        if self.teacher is not None and self.compile:
            self.teacher = torch.compile(self.teacher)
        self.step = TrainStep([m.model for m in self.members], [m.optimizer for m in self.members],
                              [m.loss_fn for m in self.members], self.teacher, self.epochs, self.rt.amp_dtype,
                              cuda_graph=self.cuda_graph, compile_loss=self.compile,
                              lanes=[m.lane for m in self.members],
                              teacher_precision=cfg.runtime.teacher_precision, world_size=self.ctx.world_size)
        self.per_iteration = any(per_iteration(m.loss_fn) for m in self.members)
        self.autocast = autocast_for(self.rt.amp_dtype, self.rt.device)
        # The teacher's test accuracy is measured in the forward the step gives it (whose argmax decides
        # BTKD's split), not the students' autocast: with runtime.teacher_precision=fp32 on a GPU the two differ.
        tp = cfg.runtime.teacher_precision
        self.teacher_autocast = self.autocast if tp == "same" else forward_precision(tp, self.rt.device)
        self.teacher_precision = precision_name(self.rt.amp_dtype) if tp == "same" else tp
        self.start_epoch = 0  # epochs already done when this process started
        self.epochs_done = 0
        self.paused = False  # stopped by runtime.time_limit, to be resumed
        self.teacher_test_acc: Optional[float] = None
        self.teacher_test_precision: Optional[str] = None  # the forward it was measured in
        self.wall_time = 0.0
        self._writers: Dict[str, Any] = {}  # TensorBoard, opened at the first epoch's end
        if cfg.runtime.tensorboard:
            try:
                import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
            except ImportError:
                raise ConfigError("runtime.tensorboard=true needs the tensorboard package: "
                                  "pip install 'btkd[tensorboard]'") from None
        if self.resume:
            try:
                self._resume()
            except BaseException:  # a refused resume leaves the folder free for the next try
                self.lock.release()
                raise

    # ------------------------------------------------------------------ setup

    def _warn_mlkd_scale(self, losses: List[Optional[nn.Module]]) -> None:
        """MLKD's class-level term grows as (batch / classes)^2: say so when it is far from its recipe."""
        batch = per_process_batch(self.cfg, self.ctx.world_size) * self.ctx.world_size  # its relations span the batch
        for spec, loss in zip(self.specs, losses):
            scale = class_term_scale(loss.host, batch, self.data.num_classes) if loss is not None else None
            if scale is not None and scale > 10:
                self.echo(f"warning: {spec.label}: MLKD's class-level term is a sum over the batch divided by the class "
                          f"count only, so it grows as (batch / classes)^2: at ({batch} / {self.data.num_classes})^2 it "
                          f"is {scale:.0f} times its size in the authors' CIFAR-100 recipe (64 / 100). On Fashion-MNIST "
                          "(128 / 10, 400 times) it collapsed training to chance (benchmarks/results/fashion_mnist/"
                          f"mlkd_levels); {self._option_key(spec, 'class_weight')}={1 / scale:.2g} restores the recipe's size")

    def _option_key(self, spec: MemberSpec, option: str) -> str:
        """How a user sets a member's host option: ``distill.options.X``, or in a bench whose method has
        its own distill section, that method's key (the base's would not reach it)."""
        return self.option_prefixes.get(spec.label, "distill.options.") + option

    def _warn_long_warmup(self, losses: List[Optional[nn.Module]]) -> None:
        """A host warm-up (DKD's, RLD's: 20 epochs in the recipe) as long as the run never reaches the
        host's full weight: a short run (optim.epochs=10) is then not the method it names."""
        for spec, loss in zip(self.specs, losses):
            warmup = getattr(getattr(loss, "host", None), "warmup", 0) or 0
            if isinstance(warmup, (int, float)) and warmup >= self.epochs:
                # the factor is (epoch + 1) / warmup: full weight in the last epoch when they are equal
                reach = "reaches its full weight in the last epoch only" if warmup == self.epochs \
                    else "never reaches its full weight"
                self.echo(f"warning: {spec.label}: distill.options.warmup={warmup:g} epochs is not below "
                          f"optim.epochs={self.epochs}, so {loss.host.name}'s loss {reach}; "
                          f"give a shorter warm-up for a short run (e.g. {self._option_key(spec, 'warmup')}="
                          f"{max(self.epochs // 4, 1)})")

    def _warn_recipe_lr(self) -> None:
        """The CIFAR recipe's lr is 0.01 for MobileNet/ShuffleNet students and 0.05 for the others
        (RepDistiller picks it by the student's name): a config whose student was switched by an
        override keeps its pair's lr, so a leftover of the other value is said once per student."""
        if self.cfg.data.name not in ("cifar100", "cifar10"):
            return
        said = set()
        for spec in self.specs:
            student, lr = spec.cfg.model.student, spec.cfg.optim.lr
            light = student in LIGHT_CIFAR_STUDENTS
            want, leftover = (0.01, 0.05) if light else (0.05, 0.01)
            if lr == leftover and student not in said:
                said.add(student)
                self.echo(f"warning: optim.lr={lr:g} with model.student={student}: the standard CIFAR recipe trains "
                          f"{'MobileNet and ShuffleNet students' if light else 'this student'} with lr {want:g} "
                          f"(RepDistiller, mdistiller); give optim.lr={want:g} for the recipe")

    def _warn_unused_btkd(self) -> None:
        """BTKD's options do nothing while distill.btkd.enabled is false: a run given them without it is
        its plain host, and would be read as BTKD. Said once per set of options, naming the members."""
        default = config_to_dict(BTKDConfig())
        unused: Dict[str, List[str]] = {}
        for spec in self.specs:
            b = config_to_dict(spec.cfg.distill.btkd)
            if not b["enabled"]:
                keys = [f"distill.btkd.{k}={b[k]}" for k in b if k != "enabled" and b[k] != default[k]]
                if keys:
                    unused.setdefault(", ".join(keys), []).append(spec.label)
        for keys, labels in unused.items():
            if len(self.specs) == 1:
                method = self.specs[0].cfg.distill.method
                who, what = "", "the run is " + ("cross-entropy alone" if method == "ce" else f"{method} without BTKD")
            else:
                who, what = f"{', '.join(labels)}: ", "each of them runs its method without BTKD"
            self.echo(f"warning: {who}{keys} set while distill.btkd.enabled=false, so it does nothing and {what}; "
                      "add distill.btkd.enabled=true to use it (or drop it)")

    def _check_specs(self) -> None:
        labels = [s.label for s in self.specs]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"grid members need distinct labels, got {labels}")
        dirs = [Path(s.run_dir).resolve() for s in self.specs]
        if len(set(dirs)) != len(dirs):
            raise ConfigError("grid members need distinct run folders")
        first = config_to_dict(self.specs[0].cfg)
        for spec in self.specs[1:]:
            other = config_to_dict(spec.cfg)
            for key in SHARED_KEYS:
                if _get(first, key) != _get(other, key):
                    raise ConfigError(f"members of one grid share {key}; {self.specs[0].label!r} has "
                                      f"{_get(first, key)!r} but {spec.label!r} has {_get(other, key)!r}")

    def _check_root(self, resume: bool) -> None:
        if resume and not self.root.has_checkpoint():
            if self._stopped_in_first_epoch():
                # Nothing to continue and nothing to lose: it starts again from its saved config, as the same
                # command without --resume would (so a job requeued with --resume works).
                self.echo(f"{self.root.path} has no checkpoint yet (stopped during its first epoch): starting it "
                          "again from epoch 1")
                self.resume = False
                return
            finished = [n for n in (SUMMARY, LAST) if self.root.file(n).is_file()]
            if finished:
                raise FileNotFoundError(f"cannot resume: {self.root.path} holds a finished run's {', '.join(finished)} "
                                        "but no checkpoint.pt to continue from; to train again, start a new run under "
                                        "another name (name=...)")
            raise FileNotFoundError(f"cannot resume: no checkpoint.pt in {self.root.path}; start the run without "
                                    "--resume")
        if not resume and not self.root.has_checkpoint():
            for spec in self.specs:  # clear() would delete what is there: refuse unless it is a first-epoch leftover
                folder = RunFolder(spec.run_dir)
                finished = [n for n in (SUMMARY, LAST) if folder.file(n).is_file()]
                if finished or folder.holds_foreign_config(config_to_dict(spec.cfg)):
                    what = (f"a finished run's {', '.join(finished)} (its checkpoint.pt is gone)" if finished
                            else "a config.yaml that btkd did not write (your config file?)")
                    raise FileExistsError(f"{folder.path} holds {what}; starting a run there would delete it. Pick "
                                          "another name (name=...) or output folder (output_dir=...), or move it away")
        if not resume and self.root.has_checkpoint():
            probe = RunLock(self.root.path)  # a run still training there: say that, not "resume it"
            probe.acquire()
            probe.release()
            raise FileExistsError(f"{self.root.path} already holds a run; pass --resume to continue it, or pick "
                                  "another name (name=...) or output folder (output_dir=...)")

    def _stopped_in_first_epoch(self) -> bool:
        """Whether the root is a run (or bench) that was started here and stopped before it finished
        any epoch: its saved config is there, no folder of it holds an epoch's record or weights, it
        is not a member of a bench (whose checkpoint is the bench's), and the overrides change only
        what a resume may change."""
        root = self.root
        if not any(root.file(n).is_file() for n in (CONFIG, *self.root_files)):
            return False
        if bench_of_member(root.path) is not None:
            return False  # a bench's member folder: the bench resumes it
        grid_root = root.read_meta().get("grid", {}).get("root")
        if grid_root is not None and Path(grid_root).resolve() != root.path.resolve():
            return False
        for spec in self.specs:
            folder = RunFolder(spec.run_dir)
            # the first epoch's log line is written just before its checkpoint: a kill in between leaves it
            if any(r.get("epoch") != 1 for r in folder.read_log()) \
                    or any(folder.file(n).is_file() for n in (SUMMARY, BEST, LAST)):
                return False
            if folder.file(CONFIG).is_file():
                resume_changes(folder.read_config(), config_to_dict(spec.cfg))  # refuses what a resume may not change
        return True

    def _resume(self) -> None:
        if self.ctx.is_main:
            self.lock.acquire()  # before reading: nobody else may be writing it
        state = load_checkpoint_file(self.root.checkpoint)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.root.checkpoint} was written by another btkd version (format "
                             f"{state.get('format')!r}, this version reads {CHECKPOINT_FORMAT!r}); finish it with "
                             "that version or start the run again")
        saved = state["members"]
        if len(self.members) == 1 and len(saved) == 1:  # a single run: its label may be its folder's
            saved = {self.members[0].label: next(iter(saved.values()))}
        missing = [m.label for m in self.members if m.label not in saved]
        if missing or len(saved) != len(self.members):
            raise ValueError(f"{self.root.checkpoint} holds members {sorted(saved)}, but this grid has "
                             f"{[m.label for m in self.members]}; resume with the config the run was started with")
        # before any weights load: a changed model would fail there, unexplained
        changes_of = {}
        for m in self.members:
            # Changes are counted from the config the checkpointed epochs were trained with (checkpoints
            # of older versions do not hold it: then from config.yaml), so an edit of config.yaml is one.
            on_disk = m.folder.read_config()
            started = saved[m.label].get("config") or on_disk
            try:
                changes_of[m.label] = resume_changes(started, config_to_dict(m.cfg))
            except ConfigError as err:
                if started == on_disk:
                    raise
                raise ConfigError(f"{err}. {m.folder.file(CONFIG)} was edited since the last checkpoint: restore "
                                  "it, and pass what a resume may change as key=value after --resume") from None
        for k, m in enumerate(self.members):
            entry = saved[m.label]
            m.diverged = entry.get("diverged")
            m.frozen = entry if m.diverged else None
            self.step.active[k] = not m.diverged
            if entry["student"] is None:  # diverged in its first epoch: no good state to load
                continue
            m.student.load_state_dict(entry["student"])
            if m.loss_fn is not None:
                m.loss_fn.load_state_dict(entry.get("loss", {}))  # learnable host parts (CTKD)
            m.optimizer.load_state_dict(entry["optimizer"])
            match_param_layouts(m.optimizer)
            for group in m.optimizer.param_groups:  # the saved lr may be a (CPU) tensor or a float
                lr = float(group["lr"])
                group["lr"] = torch.tensor(lr, device=self.rt.device) if self.cuda_graph else lr
            m.best_acc, m.best_epoch = float(entry["best_acc"]), int(entry["best_epoch"])
        self._check_world_size(int(state.get("world_size", 1)))
        set_rng_state(state["rng"])
        self.start_epoch = self.epochs_done = int(state["epoch"])
        if self.start_epoch > self.epochs:
            raise ConfigError(f"optim.epochs={self.epochs} is below the {self.start_epoch} epochs this run has done; "
                              "a resume may extend a run, not shorten it")
        self.teacher_test_acc = state.get("teacher_test_acc")
        self.teacher_test_precision = state.get("teacher_test_precision")
        self.wall_time = float(state.get("wall_time", 0.0))
        self._export_missing_best()
        for m in self.members:
            m.resumes = list(m.folder.read_meta().get("resumes", []))
            changes = changes_of[m.label]
            if changes and self.start_epoch == self.epochs:  # finished: nothing would use them
                raise ConfigError(f"{self.root.path} has finished its {self.epochs} epochs, so "
                                  f"{', '.join(changes)} would change nothing it trains; raise optim.epochs to train "
                                  "it further, or start a new run")
            if self.start_epoch < self.epochs:  # every resume that trains, with what it changed (if anything)
                m.resumes.append({"at_epoch": self.start_epoch, "time": time.time(),
                                  "changes": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
                # a run extended past its end is not finished: its old summary would say so (a diverged
                # member's stays: it trains no more, and its summary holds why)
                if self.ctx.is_main and not m.diverged:
                    m.folder.file(SUMMARY).unlink(missing_ok=True)
            if changes:
                m.pending_changes = m.resumes[-1]["changes"]  # written into the next log line
                self.echo(f"{m.label}: resuming with " + ", ".join(f"{k}={b!r} (was {a!r})"
                                                                 for k, (a, b) in changes.items()))
        self.echo(f"resuming {self.root.path} after epoch {self.start_epoch} of {self.epochs}")

    def _check_world_size(self, saved: int) -> None:
        """Resuming on another number of processes keeps the run's batches only with a global batch."""
        now = self.ctx.world_size
        if saved == now:
            return
        if self.cfg.data.global_batch_size is None:
            raise ConfigError(
                f"{self.root.path} was trained on {saved} process(es) with data.batch_size={self.cfg.data.batch_size} "
                f"each (a global batch of {saved * self.cfg.data.batch_size}); resuming on {now} would change the "
                f"global batch. Resume on {saved} process(es), or start runs with data.global_batch_size, which "
                "keeps the global batch on any number of processes")
        self.echo(f"resuming on {now} process(es) (the run started on {saved}); the global batch stays "
                  f"{self.cfg.data.global_batch_size}")

    # ------------------------------------------------------------------ the run

    def fit(self) -> List[Dict[str, Any]]:
        """Train every member to ``optim.epochs`` and return their summaries, in the order of
        ``specs`` (each as `btkd.engine.Trainer.fit` describes it, ``name`` being the member's label)."""
        started = self.resume
        try:
            self._open_folders()
            self._check_teacher()
            self._write_meta()
            self._loop()
            started = True
            if self.paused:
                return [{"name": m.label, "paused": True, "epochs_done": self.epochs_done, "epochs": self.epochs,
                         "run_dir": str(m.folder.path)} for m in self.members]
            return self._finish()
        except BaseException as err:
            # Only a folder this process holds (not one another live run refused us) is tidied.
            removed = not started and self.lock.held and not self.root.has_checkpoint()
            if removed:
                self._remove_unstarted()
            # Say what Ctrl-C (or the CLI's SIGTERM, a KeyboardInterrupt of its own type, kept) left.
            if isinstance(err, KeyboardInterrupt) and not str(err) and self.ctx.is_main:
                if removed:
                    raise type(err)(f"stopped before its first checkpoint, so nothing was kept ({self.root.path} "
                                    "is removed); start it again without --resume") from None
                if self.root.has_checkpoint():
                    raise type(err)("the last finished epoch is checkpointed; continue with: "
                                    f"{self._resume_command()}") from None
            raise
        finally:
            for writer in self._writers.values():
                writer.close()
            self.lock.release()

    def _resume_command(self) -> str:
        """The command that continues this grid: a bench's (its folder holds bench.yaml), or a run's."""
        command = "bench" if "bench.yaml" in self.root_files else "train" if self.members[0].loss_fn is None \
            else "distill"
        return f"btkd {command} --resume {self.root.path}"

    def _remove_unstarted(self) -> None:
        """A run that fails before its first checkpoint leaves no folder behind (only btkd's own
        files are removed; a folder that holds anything else stays)."""
        root = self.root.path.resolve()
        for m in self.members:
            m.folder.remove_if_unstarted()
            parent = m.folder.path.resolve().parent
            while parent != root and root in parent.parents:  # e.g. a bench's runs/
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent
        for name in self.root_files:
            self.root.file(name).unlink(missing_ok=True)
        self.lock.release()
        self.root.remove_if_unstarted()

    def _open_folders(self) -> None:
        if not self.ctx.is_main:
            return
        if not self.resume:
            # A new folder appears with what --resume reads (config.yaml, a bench's bench.yaml) inside.
            files = dict(self.root_files)
            for m in self.members:
                if m.folder.path.resolve() == self.root.path.resolve():
                    files[CONFIG] = config_text(config_to_dict(m.cfg))
            self.lock = create_locked(self.root.path, files) or self.lock
        self.root.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        self._check_root(self.resume)  # again, now that we hold the lock
        for folder in [self.root] + [m.folder for m in self.members]:
            folder.path.mkdir(parents=True, exist_ok=True)
            if self.resume:
                folder.remove_stale_temp_files()
            else:
                # a run killed before its first checkpoint starts clean; its config.yaml stays until it
                # is rewritten below, so that a kill in between leaves a folder --resume can start again
                folder.clear(keep=(CONFIG,))
        remove_stale_temp_files(self.root.path, self.root_files)  # e.g. a bench's bench.yaml
        for name, text in self.root_files.items():
            write_text_atomic(self.root.file(name), text)
        for m in self.members:
            if self.resume:
                m.folder.keep_log_before(self.start_epoch)
            m.folder.write_config(config_to_dict(m.cfg))

    def _write_meta(self) -> None:
        if not self.ctx.is_main or (self.resume and self.start_epoch >= self.epochs):
            return  # a resume of a finished run trains nothing: its record stays as the run made it
        teacher_sha = None
        if self.teacher is not None:
            teacher_sha = checkpoint_sha256(resolve_checkpoint(self.cfg.model.teacher_checkpoint))
        env = environment(self.rt.device, self.ctx.world_size, per_process_batch(self.cfg, self.ctx.world_size))
        for m in self.members:
            started = env
            if self.resume and m.resumes:
                # where the run started stays on top; this resume's machine and commit go with its entry
                started = {k: m.folder.read_meta().get(k, v) for k, v in env.items()}
                m.resumes[-1]["environment"] = {k: env[k] for k in RESUME_ENV_KEYS}
            m.folder.write_meta({
                **started, "seed": m.cfg.seed, "train_size": self.data.train_size, "test_size": self.data.test_size,
                "num_classes": self.data.num_classes, "precision": precision_name(self.rt.amp_dtype),
                "channels_last": self.rt.channels_last, "cuda_graph": self.cuda_graph, "compile": self.compile,
                "loss": repr(m.loss_fn),
                "data_subsets": self.data.subsets, "teacher_checkpoint_sha256": teacher_sha,
                "teacher_test_acc": self.teacher_test_acc,
                # the teacher's forward, whose argmax decides BTKD's split
                "teacher_precision": None if self.teacher is None else self.teacher_precision,
                "teacher_bn_folded": None if self.teacher is None else self.teacher_bn_folded,
                "grid": {"root": str(self.root.path), "label": m.label, "members": len(self.members),
                         "lanes": len(self.seeds)},
                "resumes": m.resumes or [],
            })

    def _check_teacher(self) -> None:
        # Measured again by a resume that trains with another teacher forward (runtime.teacher_precision,
        # or the precision or device under `same`), so it stays the accuracy of the forward training uses.
        if self.teacher is None or (self.teacher_test_acc is not None and (
                self.teacher_test_precision == self.teacher_precision or self.start_epoch >= self.epochs)):
            return
        self.teacher_test_acc = self.evaluate(self.teacher, self.teacher_autocast)["acc"]
        self.teacher_test_precision = self.teacher_precision
        self.echo(f"teacher {self.cfg.model.teacher} ({self.cfg.model.teacher_checkpoint}): test acc "
                  f"{self.teacher_test_acc:.2f}%")

    def evaluate(self, model: nn.Module, autocast=None) -> Dict[str, float]:
        """``model`` on the test set (summed over the processes under torchrun): ``{"acc", "top5"}`` in
        %, the mean cross-entropy ``"loss"`` and the number of images ``"n"``. ``autocast`` is a
        context-manager factory for the forward (default: the run's precision)."""
        stats = dist.all_reduce_sum(eval_sums(model, self.data.test_loader, autocast or self.autocast), self.ctx)
        return eval_result(stats)

    def _loop(self) -> None:
        from tqdm.auto import tqdm

        show = self.cfg.runtime.progress and self.ctx.is_main
        steps = len(self.train_loaders[0])
        limit = self.cfg.runtime.time_limit
        started, first, longest = time.perf_counter(), None, 0.0
        for epoch in range(self.start_epoch, self.epochs):
            # disable=None: a bar per epoch on a terminal; in a log file, one line per epoch instead.
            with tqdm(total=steps, disable=None if show else True, desc=f"{self.title} {epoch + 1}/{self.epochs}",
                      unit="step", dynamic_ncols=True) as bar:
                t0 = time.perf_counter()
                train = self.train_epoch(epoch, bar)
                if self.rt.on_cuda:
                    torch.cuda.synchronize()
                train_time = time.perf_counter() - t0
                tests = [None if m.diverged else self.evaluate(m.model) for m in self.members]
                epoch_time = time.perf_counter() - t0
                self.wall_time += epoch_time
                records = self._end_epoch(epoch, train, tests, train_time, epoch_time)
                self._progress(epoch, records, bar, show)
            self.epochs_done = epoch + 1
            dist.barrier(self.ctx)
            took = time.perf_counter() - t0
            if first is None:
                first = took
            else:
                longest = max(longest, took)
            if limit and self.epochs_done < self.epochs:
                # The next epoch may take as long as the longest since this process's first: the first
                # also compiled the models and captured the CUDA graph (on a GPU, a minute or more where
                # an epoch then takes seconds), so it alone would pause a window's run minutes early.
                # Every process must take the same decision: stop if any would run out of time.
                late = time.perf_counter() - started + (longest or first) > 60 * limit
                if dist.all_reduce_sum(torch.tensor([float(late)], device=self.rt.device), self.ctx).item() > 0:
                    self.paused = True  # the caller says how to continue
                    return

    def train_epoch(self, epoch: int, bar=None) -> List[Optional[Dict[str, float]]]:
        """Train every member for one epoch (0-based); their training metrics, one dict each (None
        for a member that diverged earlier)."""
        self.step.set_lr([m.cfg.optim.lr * lr_factor(m.cfg, epoch) for m in self.members])
        self.step.set_epoch(epoch)
        for m in self.members:
            m.model.train()
        for loader in self.train_loaders:
            loader.set_epoch(epoch)
        steps = len(self.train_loaders[0])
        for i, batches in enumerate(zip(*self.train_loaders)):
            if self.per_iteration and i:
                self.step.set_epoch(epoch + i / steps)
            self.step([x for x, _ in batches], [y for _, y in batches])
            if bar is not None:
                bar.update(1)
        names, packed = self.step.all_metrics()
        values = dist.all_reduce_sum(packed, self.ctx).tolist()  # the epoch's one host sync
        self.step.reset_metrics()
        out, at = [], 0
        for m, keys in zip(self.members, names):
            part = values[at:at + len(keys) + 3]
            at += len(keys) + 3
            out.append(None if m.diverged else self._train_record(m, epoch, keys, part))
        return out

    def _train_record(self, m: Member, epoch: int, keys: List[str], values: List[float]) -> Dict[str, float]:
        n_seen, correct, teacher_correct = values[len(keys):]
        rec: Dict[str, float] = {}
        for k, v in zip(keys, values):
            if k == "n_rectified":
                rec[k] = v  # a count over the epoch
            elif k == "beta":
                rec[k] = v / n_seen
            elif k != "n_wrong":  # the same as the teacher's error count below (the split's)
                rec[f"loss_{k}"] = v / n_seen
        rec["train_acc"] = 100.0 * correct / n_seen
        if self.teacher is not None:
            rec["teacher_train_acc"] = 100.0 * teacher_correct / n_seen
            rec["frac_wrong"] = 1.0 - teacher_correct / n_seen
        rec["lr"] = m.cfg.optim.lr * lr_factor(m.cfg, epoch)
        rec["samples"] = int(n_seen)
        return rec

    def _problem(self, m: Member, train: Dict[str, float], test: Dict[str, float]) -> Optional[str]:
        """Why this epoch of ``m`` must not be checkpointed, or None."""
        if not math.isfinite(train["loss_total"]):
            return f"the training loss became {train['loss_total']}"
        tensors = {k: v for k, v in m.student.state_dict().items() if v.is_floating_point()}
        finite = torch.stack([torch.isfinite(v).all() for v in tensors.values()]).tolist()  # one sync
        if not all(finite):
            bad = [k for k, ok in zip(tensors, finite) if not ok]
            return f"the weights hold NaN or infinite values (in {', '.join(bad[:3])})"
        if not math.isfinite(test["loss"]):
            return f"the test loss became {test['loss']}"
        return None

    def _end_epoch(self, epoch: int, train: List[Dict], tests: List[Optional[Dict]], train_time: float,
                   epoch_time: float) -> List[Optional[Dict]]:
        done = epoch + 1
        records: List[Optional[Dict]] = []
        for m, tr, test in zip(self.members, train, tests):
            if m.diverged:
                records.append(None)
                continue
            problem = self._problem(m, tr, test)
            if problem:
                self._diverge(m, done, problem)
                records.append(None)
                continue
            if test["acc"] > m.best_acc:
                m.best_acc, m.best_epoch = test["acc"], done
            records.append({"epoch": done, **tr, "test_acc": test["acc"], "test_top5": test["top5"],
                            "test_loss": test["loss"], "best_acc": m.best_acc, "best_epoch": m.best_epoch,
                            "images_per_s": tr["samples"] / train_time, "epoch_time": epoch_time,
                            "wall_time": self.wall_time})
        if self.ctx.is_main:
            for m, record in zip(self.members, records):
                if record is not None:
                    if m.pending_changes:
                        record["resume_changes"], m.pending_changes = m.pending_changes, None
                    m.folder.append_log(record)
                    self._tensorboard(m, record)
            save_atomic(self._state(done), self.root.checkpoint)
            # The best epoch's weights only after the checkpoint that records it: a kill in between
            # is repaired on resume (`_export_missing_best`); written first, a rerun of the epoch
            # (not bit-identical on a GPU) could leave weights no run history holds.
            for m, record in zip(self.members, records):
                if record is not None and m.best_epoch == done:
                    export_weights(m.student, m.folder.file(BEST), epoch=done)
        return records

    def _export_missing_best(self) -> None:
        """After a resume: a member whose best epoch is the checkpoint's own epoch may have been killed
        before its best weights were written; the loaded weights are those weights."""
        if not self.ctx.is_main:
            return
        for m in self.members:
            if not m.diverged and m.best_epoch and m.best_epoch == self.start_epoch \
                    and weights_epoch(m.folder.file(BEST)) != m.best_epoch:
                export_weights(m.student, m.folder.file(BEST), epoch=m.best_epoch)

    def _tensorboard(self, m: Member, record: Dict[str, Any]) -> None:
        """Every number of the epoch's record as a TensorBoard scalar (runtime.tensorboard=true)."""
        if not self.cfg.runtime.tensorboard:
            return
        if m.label not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            # a resume reruns the epochs after its checkpoint, which a killed process may have written
            # already: TensorBoard drops the earlier events from purge_step on, so none shows twice
            self._writers[m.label] = SummaryWriter(log_dir=str(m.folder.file(TENSORBOARD)),
                                                   purge_step=self.start_epoch + 1 if self.start_epoch else None)
        writer = self._writers[m.label]
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(key, value, global_step=record["epoch"])
        writer.flush()

    def _diverge(self, m: Member, done: int, problem: str) -> None:
        """A member whose epoch went wrong: with one member, stop with the last good checkpoint kept;
        in a larger grid, freeze it at its last good state and train the others on."""
        resume = f"btkd {'train' if m.loss_fn is None else 'distill'} --resume {self.root.path} optim.lr=<lower>"
        if len(self.members) == 1 and not self.root.has_checkpoint():  # its first epoch: nothing to resume
            raise FloatingPointError(
                f"{m.label}: {problem} in epoch {done}, its first, so nothing was saved to resume from. Run the "
                f"same command again with a lower learning rate (optim.lr=..., e.g. half of {m.cfg.optim.lr:g}) "
                "or with runtime.precision=fp32")
        if len(self.members) == 1:
            raise FloatingPointError(
                f"{m.label}: {problem} in epoch {done}; nothing of that epoch was saved and the checkpoint holds "
                f"epoch {done - 1}. Resume with a lower learning rate ({resume}, e.g. half of {m.cfg.optim.lr:g}) "
                "or with runtime.precision=fp32")
        m.diverged = {"epoch": done, "reason": problem}
        self.step.active[self.members.index(m)] = False
        previous = load_checkpoint_file(self.root.checkpoint)["members"][m.label] if self.root.has_checkpoint() \
            else None
        m.frozen = {**(previous or {"student": None, "optimizer": None, "best_acc": -1.0, "best_epoch": 0}),
                    "diverged": m.diverged}
        self.echo(f"warning: {m.label}: {problem} in epoch {done}; it is not trained further (its last good "
                  f"epoch is kept) and the bench reports it as diverged")

    def _state(self, done: int) -> Dict[str, Any]:
        members = {}
        for m in self.members:
            if m.frozen is not None:
                members[m.label] = m.frozen
                continue
            members[m.label] = {"student": m.student.state_dict(), "optimizer": m.optimizer.state_dict(),
                                "loss": m.loss_fn.state_dict() if m.loss_fn is not None else {},
                                "best_acc": m.best_acc, "best_epoch": m.best_epoch, "diverged": None,
                                "config": config_to_dict(m.cfg)}
        return {"format": CHECKPOINT_FORMAT, "epoch": done, "members": members, "rng": rng_state(),
                "teacher_test_acc": self.teacher_test_acc, "teacher_test_precision": self.teacher_test_precision,
                "wall_time": self.wall_time, "world_size": self.ctx.world_size}

    def _progress(self, epoch: int, records: List[Optional[Dict]], bar, show: bool) -> None:
        live = [(m, r) for m, r in zip(self.members, records) if r is not None]
        if not live:
            return
        if len(live) == 1:
            m, r = live[0]
            bar.set_postfix(loss=f"{r['loss_total']:.4f}", acc=f"{r['test_acc']:.2f}", best=f"{m.best_acc:.2f}",
                            img_s=f"{r['images_per_s']:.0f}")
            # what BTKD works on (the teacher's errors on these batches), the lr the schedule set, the time
            teacher = "" if "frac_wrong" not in r else f", teacher wrong {100 * r['frac_wrong']:.1f}%" + (
                f" ({r['n_rectified']:,.0f} rectified)" if "n_rectified" in r else "")
            line = (f"loss {r['loss_total']:.4f}, train acc {r['train_acc']:.2f}%, test acc {r['test_acc']:.2f}% "
                    f"(best {m.best_acc:.2f}%){teacher}, lr {r['lr']:.4g}, {r['epoch_time']:.1f} s, "
                    f"{r['images_per_s']:.0f} img/s")
        else:
            accs = [r["test_acc"] for _, r in live]
            bar.set_postfix(students=len(live), acc_min=f"{min(accs):.2f}", acc_max=f"{max(accs):.2f}")
            line = (f"{len(live)} students, test acc mean {sum(accs) / len(accs):.2f}% (min {min(accs):.2f}%, "
                    f"max {max(accs):.2f}%), {live[0][1]['epoch_time']:.1f} s")
        if show and bar.disable:
            self.echo(f"{self.title} epoch {epoch + 1}/{self.epochs}: {line}")

    def _finish(self) -> List[Dict[str, Any]]:
        summaries = []
        for m in self.members:
            log = m.folder.read_log() if self.ctx.is_main else []
            last = log[-1] if log else {}
            # The epochs' test accuracy is taken under the run's autocast (bf16 on a GPU); the published
            # recipes evaluate in fp32, so the last weights are also scored that way, once.
            last_fp32 = last.get("test_acc")
            if self.rt.amp_dtype is not None and not m.diverged:
                # the plain student (not its compiled wrapper, which would compile again for fp32)
                stats = eval_sums(m.student, self.data.test_loader, lambda: float32_forward(tf32=False))
                last_fp32 = eval_result(dist.all_reduce_sum(stats, self.ctx))["acc"]
            d = m.cfg.distill
            summary = {
                "name": m.label, "run": m.cfg.name, "student": m.cfg.model.student, "teacher": m.cfg.model.teacher,
                "method": d.method, "btkd": d.btkd.enabled,
                "btkd_options": config_to_dict(d.btkd) if d.btkd.enabled else None, "seed": m.cfg.seed,
                "epochs": self.epochs, "epochs_done": last.get("epoch", 0), "last_acc": last.get("test_acc"),
                "last_acc_fp32": None if m.diverged else last_fp32,
                "best_acc": m.best_acc if m.best_epoch else None, "best_epoch": m.best_epoch or None,
                "teacher_test_acc": self.teacher_test_acc, "diverged": m.diverged, "wall_time": self.wall_time,
                "grid_members": len(self.members),
                "images_per_s_mean": _mean([r["images_per_s"] for r in log]),
                "frac_wrong_mean": _mean([r["frac_wrong"] for r in log if "frac_wrong" in r]),
            }
            if self.ctx.is_main:
                if not m.diverged:
                    export_weights(m.student, m.folder.file(LAST), epoch=last.get("epoch"))
                m.folder.write_summary(summary)
            summaries.append(summary)
        return summaries


def _mean(xs):
    return sum(xs) / len(xs) if xs else None
