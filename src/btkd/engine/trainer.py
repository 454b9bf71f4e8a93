"""The training engine: teacher training (cross-entropy) and distillation (a host loss, with or
without BTKD), evaluation every epoch, a run folder with a per-epoch JSONL log, atomic resumable
checkpoints, and multi-GPU through torchrun (DDP)."""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from ..config import Config, ConfigError, config_from_dict, config_to_dict
from ..data import imagefolder_loader, load_split
from ..data.gpu import ResidentLoader
from ..losses import Distill, make_host
from ..models import build_model, load_checkpoint
from ..strategy import BTKD
from . import distributed as dist
from .checkpoint import export_weights, load_checkpoint_file, rng_state, save_atomic, set_rng_state
from .runinfo import environment, read_log, write_json
from .fusion import fold_batchnorm
from .step import TrainStep

__all__ = ["Trainer", "make_loss", "lr_factor", "resolve_device"]

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={name!r} but no CUDA GPU is visible; use runtime.device=cpu or auto")
    return device


def make_loss(cfg: Config) -> Optional[nn.Module]:
    """The loss module a config asks for: None for plain cross-entropy, else Distill or BTKD."""
    d = cfg.distill
    if d.method == "ce":
        if d.btkd.enabled:
            raise ConfigError("distill.btkd.enabled=true needs a distillation method (distill.method=kd, dkd, ...), "
                              "not 'ce'")
        return None
    try:
        host = make_host(d.method, **d.options)
    except ValueError as err:
        raise ConfigError(f"distill.method / distill.options: {err}") from None
    ce = host.default_ce_weight if d.ce_weight is None else d.ce_weight
    kd = host.default_kd_weight if d.kd_weight is None else d.kd_weight
    if not d.btkd.enabled:
        return Distill(host, ce_weight=ce, kd_weight=kd, validate=False)
    b = d.btkd
    try:
        # Inside a host framework, keep that framework's own weights, temperature and warm-up.
        return BTKD(host, rectify=b.rectify, reduction=b.reduction, schedule=b.schedule, ce_weight=ce,
                    kd_weight=kd, split=b.split, schedule_options=b.schedule_options, validate=False)
    except ValueError as err:
        raise ConfigError(f"distill.btkd: {err}") from None


def lr_factor(cfg: Config, epoch: int) -> float:
    """The learning-rate multiplier of an epoch: a pure function of the epoch, so a resumed run
    needs no scheduler state."""
    o = cfg.optim
    if o.warmup_epochs and epoch < o.warmup_epochs:
        return (epoch + 1) / o.warmup_epochs
    if o.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / o.epochs))
    return o.gamma ** sum(epoch >= m for m in o.milestones)


class Trainer:
    """Train a model from a config. ``Trainer(cfg).fit()`` returns the run summary."""

    def __init__(self, cfg: Config, run_dir: Optional[os.PathLike] = None, resume: bool = False,
                 echo: Callable[[str], None] = print):
        self.cfg = cfg
        self.ctx = dist.init()
        self.echo = echo if self.ctx.is_main else (lambda *_: None)
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        self.device = resolve_device(cfg.runtime.device, self.ctx.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
            # precision=fp32 means fp32: no TF32 in convolutions and matrix products.
            tf32 = cfg.runtime.precision != "fp32"
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.output_dir) / cfg.name
        self._check_run_dir(resume)
        on_cuda = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if (cfg.runtime.precision == "bf16" or
                                             (cfg.runtime.precision == "auto" and on_cuda)) else None
        self.channels_last = cfg.runtime.channels_last == "on" or (cfg.runtime.channels_last == "auto" and on_cuda)

        torch.manual_seed(cfg.seed)
        self._build_data()
        self._build_models()
        self.loss_fn = make_loss(cfg)
        if self.loss_fn is not None and self.teacher is None:
            raise ConfigError(f"distill.method={cfg.distill.method!r} needs a teacher: set model.teacher and "
                              "model.teacher_checkpoint (or use distill.method=ce to train without one)")
        graph_ok = on_cuda and self.ctx.world_size == 1 and isinstance(self.train_loader, ResidentLoader)
        if cfg.runtime.cuda_graph == "on" and not graph_ok:
            raise ConfigError("runtime.cuda_graph=on needs one CUDA GPU, no torchrun and a dataset held on the "
                              "device (not imagefolder); use runtime.cuda_graph=auto or off")
        graph = graph_ok and cfg.runtime.cuda_graph != "off"
        self.cuda_graph = graph
        # Fused SGD on CUDA; a tensor learning rate lets a captured step see each epoch's value.
        lr = torch.tensor(cfg.optim.lr, device=self.device) if graph else cfg.optim.lr
        fused = {"fused": True} if on_cuda else {}
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=lr, momentum=cfg.optim.momentum,
                                         weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov, **fused)
        self.step = TrainStep([self.model], [self.optimizer], [self.loss_fn], self.teacher, cfg.optim.epochs,
                              self.amp_dtype, cuda_graph=graph, compile_loss=cfg.runtime.compile)
        self.per_iteration = _per_iteration(self.loss_fn)
        self.start_epoch = 0
        self.best_acc, self.best_epoch = -1.0, -1
        self.teacher_test_acc: Optional[float] = None
        if resume:
            self._resume()

    # ------------------------------------------------------------------ setup

    def _check_run_dir(self, resume: bool) -> None:
        ckpt = self.run_dir / CHECKPOINT
        if resume and not ckpt.is_file():
            raise FileNotFoundError(f"cannot resume: no {CHECKPOINT} in {self.run_dir}; start the run without --resume")
        if not resume and ckpt.is_file():
            raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume to continue it, or pick "
                                  "another name (name=...) or output folder (output_dir=...)")
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def _build_data(self) -> None:
        d = self.cfg.data
        if d.name == "imagefolder":
            return self._build_imagefolder()
        try:
            train = load_split(d.name, d.root, "train", **d.options)
            test = load_split(d.name, d.root, "test", **d.options)
        except TypeError as err:
            raise ConfigError(f"data.options: {err}") from None
        if d.train_subset:
            train = _subset(train, d.train_subset)
        if d.test_subset:
            test = _subset(test, d.test_subset)
        self.num_classes = train.num_classes
        self.in_channels = train.images.shape[1]
        common = dict(mean=train.mean, std=train.std, device=self.device, channels_last=self.channels_last,
                      rank=self.ctx.rank, world_size=self.ctx.world_size)
        self.train_loader = ResidentLoader(train.images, train.labels, d.batch_size, train=True,
                                           crop_padding=d.crop_padding, flip=d.flip, seed=self.cfg.seed, **common)
        self.test_loader = ResidentLoader(test.images, test.labels, d.eval_batch_size, train=False, **common)
        self.train_size, self.test_size = len(train), len(test)

    def _build_imagefolder(self) -> None:
        """ImageNet-style trees stream through a standard DataLoader with worker processes."""
        d = self.cfg.data
        if not d.root:
            raise ConfigError("data.name=imagefolder needs data.root, a folder holding train/<class>/ and val/<class>/")
        if self.ctx.world_size > 1:
            raise ConfigError("data.name=imagefolder does not run under torchrun yet; use one process")
        opts = dict(image_size=d.image_size, workers=d.workers, seed=self.cfg.seed, **d.options)
        train = imagefolder_loader(d.root, "train", d.batch_size, **opts)
        test = imagefolder_loader(d.root, "val", d.eval_batch_size, **opts)
        self.num_classes = len(train.dataset.classes)
        self.in_channels = 3
        self.train_loader = StreamLoader(train, self.device, self.channels_last, self.cfg.seed)
        self.test_loader = StreamLoader(test, self.device, self.channels_last, self.cfg.seed)
        self.train_size, self.test_size = len(train.dataset), len(test.dataset)

    def _model(self, name: str, options: Dict[str, Any]) -> nn.Module:
        return build_for_data(name, options, self.num_classes, self.in_channels)

    def _build_models(self) -> None:
        m = self.cfg.model
        memory = torch.channels_last if self.channels_last else torch.contiguous_format
        self.student = self._model(m.student, m.student_options).to(self.device, memory_format=memory)
        self.teacher: Optional[nn.Module] = None
        if m.teacher:
            if not m.teacher_checkpoint:
                raise ConfigError(
                    f"model.teacher={m.teacher!r} needs model.teacher_checkpoint: train one with "
                    f"`btkd train` (its run folder holds best.safetensors) or pass a published "
                    "mdistiller/RepDistiller .pth file")
            if not Path(m.teacher_checkpoint).is_file():
                raise FileNotFoundError(f"model.teacher_checkpoint: no file at {m.teacher_checkpoint}")
            teacher = self._model(m.teacher, m.teacher_options)
            load_checkpoint(teacher, m.teacher_checkpoint)
            teacher = teacher.to(self.device, memory_format=memory).eval().requires_grad_(False)
            fold = self.cfg.runtime.fold_teacher_bn
            if fold == "on" or (fold == "auto" and self.device.type == "cuda"):
                x, _ = next(iter(self.test_loader))
                teacher = fold_batchnorm(teacher, x[:8].float())
            self.teacher = teacher
        self.model = self.student
        if self.ctx.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
        if self.cfg.runtime.compile:
            self.model = torch.compile(self.model)
            if self.teacher is not None:
                self.teacher = torch.compile(self.teacher)

    # ------------------------------------------------------------------ checkpoints

    def _state(self, next_epoch: int) -> Dict[str, Any]:
        return {
            "format": "btkd-checkpoint-1",
            "epoch": next_epoch,
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "teacher_test_acc": self.teacher_test_acc,
            "wall_time": self.wall_time,
        }

    def _resume(self) -> None:
        state = load_checkpoint_file(self.run_dir / CHECKPOINT)
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the saved lr may be a (CPU) tensor or a float
            lr = float(group["lr"])
            group["lr"] = torch.tensor(lr, device=self.device) if self.cuda_graph else lr
        set_rng_state(state["rng"])
        self.start_epoch = int(state["epoch"])
        self.best_acc, self.best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        self.teacher_test_acc = state.get("teacher_test_acc")
        self._resumed_wall = float(state.get("wall_time", 0.0))
        # Epochs logged after the checkpoint was written (killed in between) are run again.
        log = [r for r in read_log(self.run_dir / LOG) if r["epoch"] < self.start_epoch]
        if self.ctx.is_main:
            (self.run_dir / LOG).write_text("".join(_json_line(r) for r in log))
        self.echo(f"resuming {self.run_dir} at epoch {self.start_epoch}")

    # ------------------------------------------------------------------ running

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def evaluate(self, model: nn.Module, loader: ResidentLoader) -> Dict[str, float]:
        stats = dist.all_reduce_sum(eval_sums(model, loader, self.autocast), self.ctx)
        return _eval_result(stats)

    def train_epoch(self, epoch: int, progress) -> Dict[str, float]:
        cfg = self.cfg
        lr = cfg.optim.lr * lr_factor(cfg, epoch)
        step = self.step
        step.set_lr(lr)
        step.set_epoch(epoch)
        self.model.train()
        loader = self.train_loader
        loader.set_epoch(epoch)
        steps = len(loader)
        for i, (x, y) in enumerate(loader):
            if self.per_iteration and i:
                step.set_epoch(epoch + i / steps)
            step(x, y)
            progress.update(1)
        names, packed = step.metric_tensor(0)
        values = dist.all_reduce_sum(packed, self.ctx).tolist()  # the epoch's one host sync
        step.reset_metrics()
        n_seen, correct, teacher_correct = values[len(names):]
        out: Dict[str, float] = {}
        for k, v in zip(names, values):
            if k == "n_rectified":
                out[k] = v  # a count over the epoch
            elif k == "beta":
                out[k] = v / n_seen
            elif k != "n_wrong":  # the same as the teacher's error count below
                out[f"loss_{k}"] = v / n_seen
        if not math.isfinite(out["loss_total"]):
            raise FloatingPointError(
                f"the training loss became {out['loss_total']} in epoch {epoch}; lower optim.lr or use "
                "runtime.precision=fp32. The last good checkpoint is kept for --resume.")
        out["train_acc"] = 100.0 * correct / n_seen
        if self.teacher is not None:
            out["teacher_train_acc"] = 100.0 * teacher_correct / n_seen
            out["frac_wrong"] = 1.0 - teacher_correct / n_seen
        out["lr"] = lr
        out["samples"] = int(n_seen)
        return out

    def fit(self) -> Dict[str, Any]:
        cfg = self.cfg
        self.wall_time = getattr(self, "_resumed_wall", 0.0)
        if self.ctx.is_main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
            write_json(self.run_dir / "meta.json", {
                **environment(self.device, self.ctx.world_size, cfg.data.batch_size),
                "seed": cfg.seed, "train_size": self.train_size, "test_size": self.test_size,
                "num_classes": self.num_classes, "precision": str(self.amp_dtype or "fp32"),
                "channels_last": self.channels_last, "loss": repr(self.loss_fn),
            })
        if self.teacher is not None and self.teacher_test_acc is None:
            self.teacher_test_acc = self.evaluate(self.teacher, self.test_loader)["acc"]
            self.echo(f"teacher {cfg.model.teacher}: test acc {self.teacher_test_acc:.2f}%")
        from tqdm.auto import tqdm

        total_steps = (cfg.optim.epochs - self.start_epoch) * len(self.train_loader)
        show = cfg.runtime.progress and self.ctx.is_main
        # disable=None: a bar on a terminal; in a log file, one line per epoch instead.
        with tqdm(total=total_steps, disable=None if show else True, desc=cfg.name, unit="step",
                  dynamic_ncols=True) as bar:
            for epoch in range(self.start_epoch, cfg.optim.epochs):
                t0 = time.perf_counter()
                train = self.train_epoch(epoch, bar)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                train_time = time.perf_counter() - t0
                test = self.evaluate(self.model, self.test_loader)
                epoch_time = time.perf_counter() - t0
                self.wall_time += epoch_time
                if test["acc"] > self.best_acc:
                    self.best_acc, self.best_epoch = test["acc"], epoch
                    if self.ctx.is_main:
                        export_weights(self.student, self.run_dir / "best.safetensors")
                record = {"epoch": epoch, **train, "test_acc": test["acc"], "test_top5": test["top5"],
                          "test_loss": test["loss"], "best_acc": self.best_acc, "best_epoch": self.best_epoch,
                          "images_per_s": train["samples"] / train_time, "epoch_time": epoch_time,
                          "wall_time": self.wall_time}
                if self.ctx.is_main:
                    with open(self.run_dir / LOG, "a") as f:
                        f.write(_json_line(record))
                    save_atomic(self._state(epoch + 1), self.run_dir / CHECKPOINT)
                bar.set_postfix(acc=f"{test['acc']:.2f}", best=f"{self.best_acc:.2f}")
                if show and bar.disable:
                    self.echo(f"{cfg.name} epoch {epoch + 1}/{cfg.optim.epochs}: loss {train['loss_total']:.4f}, "
                              f"train acc {train['train_acc']:.2f}%, test acc {test['acc']:.2f}% "
                              f"(best {self.best_acc:.2f}%), {record['images_per_s']:.0f} img/s")
                dist.barrier(self.ctx)
        return self.finish()

    def finish(self) -> Dict[str, Any]:
        log = read_log(self.run_dir / LOG)
        last = log[-1] if log else {}
        summary = {
            "name": self.cfg.name, "student": self.cfg.model.student, "teacher": self.cfg.model.teacher,
            "method": self.cfg.distill.method, "btkd": self.cfg.distill.btkd.enabled, "seed": self.cfg.seed,
            "epochs": self.cfg.optim.epochs, "last_acc": last.get("test_acc"), "best_acc": self.best_acc,
            "best_epoch": self.best_epoch, "teacher_test_acc": self.teacher_test_acc,
            "wall_time": self.wall_time, "images_per_s_mean": _mean([r["images_per_s"] for r in log]),
        }
        if self.ctx.is_main:
            export_weights(self.student, self.run_dir / "last.safetensors")
            write_json(self.run_dir / "summary.json", summary)
        return summary

    @classmethod
    def from_run_dir(cls, run_dir: os.PathLike, **kwargs) -> "Trainer":
        """Resume the run in ``run_dir`` with the config it was started with."""
        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{run_dir} holds no config.yaml: is it a btkd run folder?")
        cfg = config_from_dict(yaml.safe_load(cfg_path.read_text()))
        return cls(cfg, run_dir=run_dir, resume=True, **kwargs)


@torch.no_grad()
def eval_sums(model: nn.Module, loader: ResidentLoader, autocast=contextlib.nullcontext) -> Tensor:
    """[correct@1, correct@5, summed CE loss, count] over ``loader``, accumulated on the device."""
    was_training = model.training
    model.eval()
    stats = None
    loader.set_epoch(0)
    for x, y in loader:
        with autocast():
            logits = model(x)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        batch = torch.stack([(top[:, 0] == y).sum().double(), (top == y[:, None]).any(dim=1).sum().double(),
                             F.cross_entropy(logits, y, reduction="sum").double(), torch.tensor(y.numel(), dtype=torch.float64, device=y.device)])
        stats = batch if stats is None else stats + batch
    model.train(was_training)
    return stats


def _eval_result(stats: Tensor) -> Dict[str, float]:
    c1, c5, loss, n = stats.tolist()
    return {"acc": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n, "n": int(n)}


def build_for_data(name: str, options: Dict[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    """A zoo model sized for the data: its class count, and its channel count when not RGB."""
    opts = dict(options)
    if in_channels != 3:
        opts.setdefault("in_channels", in_channels)
    try:
        return build_model(name, num_classes=num_classes, **opts)
    except TypeError as err:
        raise ConfigError(f"model {name!r} does not take options {sorted(opts)}: {err}") from None


def evaluate_checkpoint(cfg: Config, checkpoint: os.PathLike) -> Dict[str, float]:
    """Test accuracy of ``cfg.model.student`` with the weights in ``checkpoint`` on ``cfg.data``."""
    device = resolve_device(cfg.runtime.device)
    d = cfg.data
    test = load_split(d.name, d.root, "test", **d.options)
    if d.test_subset:
        test = _subset(test, d.test_subset)
    loader = ResidentLoader(test.images, test.labels, d.eval_batch_size, mean=test.mean, std=test.std,
                            train=False, device=device)
    model = build_for_data(cfg.model.student, cfg.model.student_options, test.num_classes, test.images.shape[1])
    load_checkpoint(model, checkpoint)
    model.to(device)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    return _eval_result(eval_sums(model, loader, amp))


class StreamLoader:
    """A DataLoader moved to the device, with the ResidentLoader's ``set_epoch`` contract: the
    shuffle order is a pure function of (seed, epoch). Worker augmentation draws are not, so an
    ImageFolder run resumes with the same order but other crops."""

    def __init__(self, loader, device: torch.device, channels_last: bool, seed: int):
        self.loader, self.device, self.channels_last, self.seed = loader, device, channels_last, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        from ..data.gpu import epoch_seed

        self.loader.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        memory = torch.channels_last if self.channels_last else torch.contiguous_format
        for x, y in self.loader:
            yield (x.to(self.device, non_blocking=True, memory_format=memory),
                   y.to(self.device, non_blocking=True))


def _per_iteration(loss) -> bool:
    """Whether the loss weights change within an epoch (then they are updated every step)."""
    if not isinstance(loss, BTKD):
        return False
    schedule = getattr(loss.balancer, "schedule", None)
    return schedule is None or getattr(schedule, "per_iteration", True)


def _subset(split, n: int):
    from dataclasses import replace

    return replace(split, images=split.images[:n], labels=split.labels[:n])


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _json_line(record: Dict[str, Any]) -> str:
    import json

    return json.dumps(record, sort_keys=True) + "\n"
