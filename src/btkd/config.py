"""Typed run configuration: YAML files that may inherit from one another, ``key=value`` overrides,
and validation at load time (an unknown key or a bad value names the key, the value and what is
allowed)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

__all__ = ["Config", "ConfigError", "load_config", "config_from_dict", "config_to_dict", "builtin_configs",
           "resolve_config_path", "validate", "default_run_name", "derived_run_name", "NAMED_KEYS"]

BUILTIN_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be used as written."""


def choice(default, *allowed, doc: str = ""):
    """A string field that must be one of ``allowed``; ``doc`` says what it means (docs/CONFIG.md)."""
    return field(default=default, metadata={"choices": allowed, "doc": doc})


def plain(default, *, doc: str = ""):
    """A field without a range or a list of choices; a list or dict default is copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def section(cls, *, doc: str = ""):
    """A nested section of keys (a dataclass of its own)."""
    return field(default_factory=cls, metadata={"doc": doc})


@dataclass(frozen=True)
class Range:
    """The allowed values of a number: ``lo``/``hi`` bounds (None: unbounded), open or closed."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, x) -> bool:
        return ((self.lo is None or (x > self.lo if self.lo_open else x >= self.lo))
                and (self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)))

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{'<' if self.hi_open else '<='} {self.hi:g}"


def bounded(default, lo=None, hi=None, *, lo_open=False, hi_open=False, doc: str = ""):
    """A numeric field (or a list of numbers) with an allowed range; a None default allows null."""
    meta = {"range": Range(lo, hi, lo_open, hi_open), "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# Every field carries a `doc`: docs/CONFIG.md is generated from these dataclasses
# (`python scripts/make_config_reference.py`; tests/test_config.py fails when the file is stale).


@dataclass
class DataConfig:
    name: str = plain("cifar100", doc="the dataset: a name in `btkd.data.DATASETS`, or `imagefolder` (a folder tree "
                                      "read by Pillow)")
    root: Optional[str] = plain(None, doc="the dataset's folder, relative to the current directory; null searches "
                                          "`$BTKD_DATA/<name>`, `data/<name>` and `../shared/data/<name>` (and "
                                          "`/usr/share/datasets/fashion-mnist` for fashion_mnist)")
    batch_size: int = bounded(64, 1, doc="training batch per process; the effective batch is batch_size x world size")
    global_batch_size: Optional[int] = bounded(
        None, 1, doc="the batch over all processes, kept on any number of them (batch_size is then global / world "
                     "size); null: batch_size per process")
    eval_batch_size: int = bounded(500, 1, doc="batch size of the test-set evaluation")
    crop_padding: int = bounded(4, 0, doc="random crop to the image size after zero padding by this many pixels; "
                                          "0 disables it (not imagefolder, whose training crop is the "
                                          "random-resized one: `data.options` `scale`, `ratio`)")
    flip: bool = plain(True, doc="random horizontal flip of training images")
    train_subset: Optional[int] = bounded(
        None, 1, doc="train on a seeded, class-stratified random draw of this many training images; null: all of them")
    test_subset: Optional[int] = bounded(None, 1, doc="test on such a draw of this many test images; null: all")
    subset_seed: int = bounded(0, 0, doc="the seed of both draws: the same subsets for every run seed")
    image_size: int = bounded(224, 1, doc="imagefolder only: the side of the (cropped, resized) training and test "
                                          "images")
    workers: Optional[int] = bounded(None, 0, doc="imagefolder only: DataLoader worker processes; null: sized to "
                                     "the machine (its CPUs shared among torchrun's local processes, at most 8)")
    options: Dict[str, Any] = plain({}, doc="extra keyword arguments of the dataset's loader, e.g. "
                                            "`{size: 512, num_classes: 10, image_size: 16, prototypes: true}` for "
                                            "synthetic")


@dataclass
class ModelConfig:
    student: str = plain("resnet8x4", doc="the model that is trained (the teacher itself in a `btkd train` run): a "
                                          "name from `btkd models`")
    teacher: Optional[str] = plain(None, doc="the teacher's model name; null for a cross-entropy run "
                                             "(distill.method=ce)")
    teacher_checkpoint: Optional[str] = plain(
        None, doc="the teacher's weights, relative to the current directory: a btkd run's `last.safetensors` or "
                  "`checkpoint.pt`, a published mdistiller / RepDistiller `.pth` (`{model: state_dict}`), or "
                  "`weights:NAME` (btkd's published weights, `btkd.weights`)")
    student_options: Dict[str, Any] = plain({}, doc="extra builder options of the student, e.g. `{width: 16}` for "
                                                    "convnet")
    teacher_options: Dict[str, Any] = plain({}, doc="extra builder options of the teacher")


@dataclass
class OptimConfig:
    epochs: int = bounded(240, 1, doc="training epochs")
    lr: float = bounded(0.05, 0, lo_open=True, doc="the initial learning rate of SGD")
    momentum: float = bounded(0.9, 0, 1, hi_open=True, doc="SGD momentum")
    weight_decay: float = bounded(5e-4, 0, doc="L2 weight decay")
    nesterov: bool = plain(False, doc="Nesterov momentum")
    lr_schedule: str = choice("multistep", "multistep", "cosine",
                              doc="multistep: the rate is multiplied by gamma at each milestone; cosine: half a "
                                  "cosine from lr to 0 over the epochs")
    milestones: List[int] = bounded([150, 180, 210], 1, doc="multistep: the epochs after which the rate drops; "
                                                            "strictly increasing, below epochs")
    gamma: float = bounded(0.1, 0, 1, lo_open=True, doc="multistep: the factor of each drop")
    warmup_epochs: int = bounded(0, 0, doc="linear learning-rate warm-up over this many first epochs; below epochs")


@dataclass
class BTKDConfig:
    enabled: bool = plain(False, doc="wrap the host loss (distill.method) in BTKD; the other distill.btkd keys do "
                                     "nothing without it (a run given them says so)")
    rectify: str = choice("swap", "swap", "reweight", "none",
                          doc="what is done to the teacher's output on the samples it gets wrong: swap (exchange the "
                              "label and top logits), reweight (move probability mass to the label), none (drop "
                              "those samples: elimination only; the right part then takes the whole distillation "
                              "weight, beta held at 1)")
    reduction: str = choice("subset", "subset", "batch",
                            doc="subset: each part (right, rectified) averaged over its own size; batch: over the "
                                "whole batch")
    schedule: str = plain("cos2", doc="the dynamic weight beta of the right part (1 - beta goes to the rectified "
                                      "part): cos2 per epoch, cos2_iter per iteration, linear, linear_iter, constant, "
                                      "step, or a name you add to `btkd.schedules.SCHEDULES` (through `imports`); "
                                      "only cos2 with rectify=none or split=false, where beta is held")
    schedule_options: Dict[str, Any] = plain({}, doc="options of the schedule, e.g. `{value: 0.5}` for constant (its "
                                                     "default), `{at: 120}` for step (default: half of optim.epochs; "
                                                     "beta `before: 1.0`, then `after: 0.0`)")
    split: bool = plain(True, doc="false: rectify every sample and distil the batch as one part (an ablation; "
                                     "beta held at 0)")


@dataclass
class DistillConfig:
    method: str = plain("kd", doc="`ce` (cross-entropy only: a teacher, or a student alone) or a host loss from "
                                  "`btkd methods`")
    ce_weight: Optional[float] = bounded(None, 0, doc="weight of the cross-entropy term; null: the host framework's "
                                                      "own (KD 0.1, DKD 1.0)")
    kd_weight: Optional[float] = bounded(None, 0, doc="weight of the distillation terms; null: the host framework's "
                                                      "own (KD 0.9, DKD 1.0)")
    options: Dict[str, Any] = plain({}, doc="the host's options (`btkd methods` lists each host's), e.g. "
                                            "`{tau: 4.0}` for kd, `{alpha: 1.0, beta: 8.0, tau: 4.0, warmup: 20}` "
                                            "for dkd")
    btkd: BTKDConfig = section(BTKDConfig, doc="BTKD around the host loss")


@dataclass
class RuntimeConfig:
    device: str = plain("auto", doc="auto (the GPU of the process's local rank if CUDA is available, else "
                                    "the CPU), cpu, cuda, cuda:N")
    precision: str = choice("auto", "auto", "fp32", "bf16", doc="auto: bf16 autocast on CUDA, fp32 on the CPU")
    channels_last: str = choice("auto", "auto", "on", "off", doc="the channels_last memory format; auto: on CUDA")
    compile: str = choice("auto", "auto", "on", "off",
                          doc="torch.compile the models and the loss; auto: on with a CUDA graph (one GPU, resident "
                              "data), the fastest measured path; off on a CPU, where compiling costs more than it "
                              "saves")
    cuda_graph: str = choice("auto", "auto", "on", "off",
                             doc="capture the whole training step in one CUDA graph; auto: on for one CUDA GPU with "
                                 "resident data")
    fold_teacher_bn: str = choice("auto", "auto", "on", "off",
                                  doc="fold the frozen teacher's BatchNorm into its convolutions; auto: on CUDA. "
                                      "Skipped, with a warning, for a model torch.fx cannot trace (VGG, "
                                      "ShuffleNetV2); meta.json's teacher_bn_folded says what happened")
    teacher_precision: str = choice("same", "same", "fp32", "tf32",
                                    doc="the teacher's forward (whose argmax decides BTKD's split): `same` as the "
                                        "students; `fp32`, IEEE float32 (no TF32 tensor cores, even when the "
                                        "students autocast to bf16; several times slower than bf16 on a GPU); "
                                        "`tf32`, float32 tensors with TF32 tensor cores (PyTorch's default for "
                                        "convolutions on Ampere and newer GPUs). The teacher's test accuracy "
                                        "(meta.json, summary) is measured in this forward too. `btkd inspect-teacher "
                                        "--compare-bf16` counts the split decisions each of them changes")
    progress: bool = plain(True, doc="a progress bar per epoch (a line per epoch when the output is not a terminal)")
    tensorboard: bool = plain(False, doc="also write every logged number as TensorBoard events into the run folder")
    threads: Optional[int] = bounded(None, 1, doc="CPU threads; null leaves torch's default")
    time_limit: Optional[float] = bounded(
        None, 0, lo_open=True, doc="stop at the end of the epoch that the next one would carry past this many "
                                   "minutes of training (checkpointed; continue with --resume): for jobs with a "
                                   "wall-clock limit. The next epoch is taken to last as long as the longest since "
                                   "the process's first, which also compiles and captures")


@dataclass
class Config:
    """A whole run's settings, validated: what `load_config` returns and `btkd.engine.Trainer` trains.

    Sections are dataclasses of their own (``cfg.data``, ``cfg.model``, ``cfg.optim``,
    ``cfg.distill`` with ``cfg.distill.btkd``, ``cfg.runtime``); docs/CONFIG.md gives every key, its
    default and its allowed values. Build one with `load_config` rather than by hand: the
    constructor checks nothing. A config changed in place is not checked again; load it again with
    overrides (``load_config(config_to_dict(cfg), ["optim.lr=0.1"])``) to have the change validated.
    """

    name: str = plain("run", doc="the run's name: its folder is `output_dir/name`. The `btkd` command derives it "
                                 "when no config file sets it, or when overrides change what a built-in config's "
                                 "name stands for (see Run names)")
    seed: int = bounded(0, 0, doc="the run's seed: initial weights, data order, augmentation")
    imports: List[str] = plain([], doc="Python modules imported when the config is loaded, before anything is "
                                       "built: your own hosts (`@btkd.register_host`), models "
                                       "(`@btkd.models.register_model`) and datasets (`btkd.data.DATASETS`), "
                                       "e.g. `[my_hosts]` for my_hosts.py in the current directory")
    output_dir: str = plain("runs", doc="the folder that holds run folders, relative to the current directory")
    data: DataConfig = section(DataConfig, doc="the dataset, its batches and augmentation")
    model: ModelConfig = section(ModelConfig, doc="the student and the teacher")
    optim: OptimConfig = section(OptimConfig, doc="SGD and the learning-rate schedule")
    distill: DistillConfig = section(DistillConfig, doc="the loss: cross-entropy, a host loss, BTKD")
    runtime: RuntimeConfig = section(RuntimeConfig, doc="where and how it runs")


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with validation


def config_from_dict(data: Dict[str, Any], cls=Config, where: str = "") -> Any:
    """A validated `Config` from a nested mapping of keys (as a YAML file or `config_to_dict` gives
    it), taken as it is: no ``inherit:`` and no overrides (`load_config` does those).

    Each value is checked against its key's type, choices and range, the modules in ``imports`` are
    imported, and the keys are checked against each other (`validate`). A key left out keeps its
    default. An unknown key or a bad value is a ConfigError naming it. ``cls`` and ``where`` are for
    the nested sections (a section's dataclass and its dotted prefix)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'} must be a mapping of keys to values, got {data!r}"
                          + (f"; set its keys, e.g. {where}{dataclasses.fields(cls)[0].name}=..." if where else ""))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean '{where}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key {path!r}; allowed keys here: {sorted(fields)}.{hint}")
        kwargs[key] = _coerce(value, hints[key], fields[key], path)
    out = cls(**kwargs)
    if cls is Config:
        import_modules(out.imports)
        validate(out)
    return out


#: The schedules btkd.schedules.SCHEDULES holds before a user adds any.
BUILTIN_SCHEDULES = ("cos2", "cos2_iter", "linear", "linear_iter", "constant", "step")


def import_modules(names: Sequence[str]) -> None:
    """Import the config's ``imports`` (a user's registrations), from the environment or the current
    directory, as ``python -m`` would find them."""
    if not names:
        return
    import importlib
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name.split(".")[0] and err.name != name:  # the module exists; something it imports does not
                raise ConfigError(f"imports: {name!r} failed while importing: {err}") from None
            raise ConfigError(f"imports: cannot import {name!r} ({err}); name a module importable from the Python "
                              "environment or the current directory (my_hosts.py here is 'my_hosts')") from None
        except Exception as err:  # a SyntaxError or an exception raised by the user's module
            import traceback

            where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
            at = f" ({where.filename}, line {where.lineno})" if where and not isinstance(err, SyntaxError) else ""
            raise ConfigError(f"imports: {name!r} raised {type(err).__name__}: {err}{at}; fix the module") from None


def validate(cfg: Config) -> None:
    """The checks between keys, after each key has passed its own (`config_from_dict` runs them):
    a schedule that exists and switches within the run, a run name that is a folder inside
    ``output_dir``, a loss with some weight, a warm-up and milestones within ``optim.epochs``.
    Raises ConfigError saying what to write instead; returns None when the config is consistent."""
    schedule = cfg.distill.btkd.schedule
    if schedule not in BUILTIN_SCHEDULES:  # the registry imports torch: only for a name of a user's
        from .schedules import SCHEDULES

        if schedule not in SCHEDULES:
            close = difflib.get_close_matches(schedule, list(SCHEDULES), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"distill.btkd.schedule={schedule!r} is not a schedule; allowed: {list(SCHEDULES)} (add "
                              f"your own to btkd.schedules.SCHEDULES in a module named in imports).{hint}")
    at = cfg.distill.btkd.schedule_options.get("at")
    if cfg.distill.btkd.schedule == "step" and isinstance(at, int) and at >= cfg.optim.epochs:
        raise ConfigError(f"distill.btkd.schedule_options.at={at} never switches in optim.epochs={cfg.optim.epochs}; "
                          f"give at below {cfg.optim.epochs}, or distill.btkd.schedule=constant")
    parts = Path(cfg.name).parts
    if not parts or Path(cfg.name).is_absolute() or ".." in parts or cfg.name.strip() in (".", ""):
        raise ConfigError(f"name={cfg.name!r} must name a folder inside output_dir (the run writes output_dir/name); "
                          "set output_dir=... to choose where, and name=... to a plain folder name")
    d = cfg.distill
    if d.method != "ce" and d.ce_weight == 0 and d.kd_weight == 0:
        raise ConfigError("distill.ce_weight=0 and distill.kd_weight=0 leave no loss: the student would not train; "
                          "give one of them a weight > 0 (null takes the host's own)")
    o = cfg.optim
    if o.warmup_epochs >= o.epochs:
        raise ConfigError(f"optim.warmup_epochs={o.warmup_epochs} must be below optim.epochs={o.epochs}; "
                          "the warm-up is part of training")
    if o.lr_schedule == "multistep":
        ms = o.milestones
        if any(a >= b for a, b in zip(ms, ms[1:])) or any(m >= o.epochs for m in ms):
            example = sorted({m for m in (o.epochs // 2, o.epochs * 4 // 5) if 1 <= m < o.epochs})
            such_as = f"such as optim.milestones={example}, " if example else ""
            below = f"give milestones below {o.epochs}, {such_as}or " if example else "give "
            raise ConfigError(
                f"optim.milestones={ms} must be strictly increasing epochs in [1, optim.epochs={o.epochs}) "
                f"with optim.lr_schedule=multistep; {below}optim.milestones=[] for a constant rate")


def _coerce(value, hint, fld, path):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return config_from_dict(value if value is not None else {}, hint, path + ".")
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, fld, path)
    if origin in (list, List):
        if not isinstance(value, list):
            example = f"[{value!r}]" if isinstance(value, (str, int, float)) else str(fld.default_factory())
            raise ConfigError(f"{path}={value!r} must be a list, e.g. {example}")
        return [_coerce(v, args[0], fld, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if value is None:  # `key=null` clears an inherited mapping (`key={}` merges into it)
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}={value!r} must be a mapping, e.g. {{tau: 4.0}}, or null to clear it")
        for k, v in value.items():  # the keys become keyword arguments of a loss, model or dataset
            if not isinstance(k, str):
                raise ConfigError(f"{path}: the key {k!r} is not a name; options are named, e.g. {{tau: 4.0}}")
            if v is None and ":" in k:  # {tau:2} is the key 'tau:2' without a value
                raise ConfigError(f"{path}: {k!r} reads as one key without a value; put a space after the colon: "
                                  f"{{{k.replace(':', ': ', 1)}}}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}={value!r} must be an integer")
        return _check_range(value, fld, path, "an integer")
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}={value!r} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{path}={value!r} must be a finite number")
        return _check_range(float(value), fld, path, "a number")
    if hint is str:
        allowed = fld.metadata.get("choices") or ()
        if isinstance(value, bool) and "on" in allowed:  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        if value is None:
            raise ConfigError(f"{path} is empty; it needs a string, e.g. {path}=...")
        if isinstance(value, bool):  # its text was yes/no/on/off/true/false: True is not what was written
            raise ConfigError(f"{path}={value!r} must be a string; YAML reads an unquoted yes, no, on, off, true or "
                              "false as a boolean: quote the word")
        if not isinstance(value, str):  # YAML reads name=123 as a number
            raise ConfigError(f"{path}={value!r} must be a string; quote it: {path}='{value}'")
        allowed = fld.metadata.get("choices")
        if allowed and value not in allowed:
            close = difflib.get_close_matches(value, list(allowed), n=1)
            raise ConfigError(f"{path}={value!r} is not allowed; expected one of {list(allowed)}"
                              + (f". Did you mean {close[0]!r}?" if close else ""))
        return value
    if hint is typing.Any:
        return value
    raise TypeError(f"unsupported config type {hint} at {path}")  # a bug in this file, not the user's


def _check_range(value, fld, path, kind):
    allowed = fld.metadata.get("range")
    if allowed is not None and value not in allowed:
        null = " (or null)" if fld.default is None else ""
        raise ConfigError(f"{path}={value!r} is out of range: expected {kind} {allowed.describe()}{null}")
    return value


def config_to_dict(cfg) -> Dict[str, Any]:
    """The config as nested plain dicts and lists (every key, defaults included): what a run folder's
    ``config.yaml`` holds, and what `config_from_dict` and `load_config` read back."""
    return dataclasses.asdict(cfg)


def config_keys(cfg=None, prefix: str = "") -> List[str]:
    """Every settable key of a config, dotted: ``optim.epochs``, ``distill.btkd.rectify``, ..."""
    cfg = Config() if cfg is None else cfg
    keys: List[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += config_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


# ---------------------------------------------------------------------------------------------
# files, inheritance and overrides


def builtin_configs() -> List[str]:
    """Names of the configs shipped with btkd, e.g. ``cifar100/kd/res32x4_res8x4``."""
    return sorted(str(p.relative_to(BUILTIN_DIR).with_suffix("")) for p in BUILTIN_DIR.rglob("*.yaml")
                  if not p.name.startswith("_"))


def resolve_config_path(name_or_path: str) -> Path:
    """The file a config name stands for: an existing file as it is, else the built-in config of
    that name (``cifar100/kd/res32x4_res8x4``, with or without ``.yaml``). Anything else, a run or
    bench folder included, is a ConfigError (with close built-in names, or the folder's saved config)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = BUILTIN_DIR / (name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml")
    if builtin.is_file():
        return builtin
    for saved in ("config.yaml", "bench.yaml"):  # a run or bench folder: its saved config is in it
        if path.is_dir() and (path / saved).is_file():
            raise ConfigError(f"{name_or_path} is a folder; its config is {path / saved}: pass that file (or "
                              "--resume the folder to continue its run)")
    close = difflib.get_close_matches(name_or_path, builtin_configs(), n=3)
    hint = f" Close built-in names: {close}." if close else " `btkd configs` lists the built-in ones."
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a built-in config name.{hint}")


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
# Numbers as YAML 1.2 reads them, not as PyYAML's YAML 1.1 does: there 1e-3 (no dot) is a string
# (refused as a host's tau), 017 is octal 15 and 1:30 is 90 (base 60), a meaning nobody writes a
# config for. Here 1e-3 is a number, 017 is 17 and 1:30 a string (refused where a number belongs).
_INT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+|0b[01_]+)$")
_FLOAT_RE = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
                            |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                            |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)


def _construct_int(loader, node) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    digits = text.lstrip("+-")
    base = {"0x": 16, "0o": 8, "0b": 2}.get(digits[:2].lower(), 10)
    return (-1 if text.startswith("-") else 1) * int(digits if base == 10 else digits[2:], base)


class _Loader(yaml.SafeLoader):
    """safe_load with YAML 1.2 numbers (above); never constructs Python objects."""

    yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


_Loader.add_implicit_resolver(_INT, _INT_RE, list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))
_Loader.add_constructor(_INT, _construct_int)


class _Dumper(yaml.SafeDumper):
    """safe_dump that quotes a string either reading would take for a number (``'1e3'``), so that
    what btkd writes (a run's config.yaml) reads back the same here and with plain ``yaml.safe_load``."""


_Dumper.add_implicit_resolver(_INT, _INT_RE, list("-+0123456789"))
_Dumper.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """A YAML document as btkd reads configs (safe, YAML 1.2 numbers)."""
    return yaml.load(text, Loader=_Loader)


def yaml_dump(data: Any, **kwargs) -> str:
    """``yaml.safe_dump`` whose output `yaml_load` (and ``yaml.safe_load``) reads back unchanged."""
    return yaml.dump(data, Dumper=_Dumper, **kwargs)


class _UniqueKeyLoader(_Loader):
    """safe_load that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = []
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges; a later key overrides it
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (the first would be ignored); merge them "
                    "into one", key_node.start_mark)
            seen.append(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path, seen: tuple = ()) -> Dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"config inheritance loops back to {path}")
    text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    except ValueError as err:  # a number YAML reads but Python will not convert (4300 digits and more)
        raise ConfigError(f"{path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    parents = data.pop("inherit", None)
    if parents is None:
        return data
    merged: Dict[str, Any] = {}
    for parent in _parent_list(path, parents):
        merged = _merge(merged, _read_yaml(_parent_path(path, parent), seen + (path.resolve(),)))
    # the file over its parents as an override over a config: a method, model or dataset it changes
    # drops the parent's settings that belong to it (KD's tau is no option of another host)
    return merge_overrides(merged, [data])


def _read_text(path: Path) -> str:
    """A config file's text: UTF-8 (YAML's own encoding), whatever the locale says."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                          "save it as UTF-8") from None


def _parent_list(path: Path, parents) -> List[str]:
    parents = [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list) or not all(isinstance(p, str) and p for p in parents):
        raise ConfigError(f"{path}: inherit: must be a file name or a built-in config name, or a list of them; "
                          f"got {parents!r}")
    return parents


def _parent_path(path: Path, parent: str) -> Path:
    """Where ``inherit: parent`` of the file ``path`` points: a file relative to ``path``'s folder if there
    is one, else the built-in config of that name (``cifar100/kd/res32x4_res8x4``)."""
    relative = path.parent / parent
    if relative.is_file():
        return relative
    builtin = BUILTIN_DIR / (parent if parent.endswith(".yaml") else parent + ".yaml")
    if builtin.is_file():
        return builtin
    close = difflib.get_close_matches(parent, builtin_configs(), n=1)
    hint = f" Did you mean the built-in {close[0]!r}?" if close else ""
    raise ConfigError(f"{path}: inherit: {parent!r} not found (looked for {relative}, and for a built-in config of "
                      f"that name: `btkd configs` lists them).{hint}")


def _name_source(path: Path, seen: tuple = ()) -> Optional[Path]:
    """The file whose ``name:`` a config file ends up with (itself or an ancestor), or None."""
    if path.resolve() in seen:
        return None  # _read_yaml reports the loop
    try:
        data = yaml_load(_read_text(path)) or {}
    except (yaml.YAMLError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if "name" in data:
        return path
    parents = data.get("inherit")
    if parents is None:
        return None
    for parent in reversed(_parent_list(path, parents)):  # a later parent overrides an earlier one
        found = _name_source(_parent_path(path, parent), seen + (path.resolve(),))
        if found is not None:
            return found
    return None


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> Dict[str, Any]:
    """``optim.lr=0.1`` -> ``{"optim": {"lr": 0.1}}``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. optim.lr=0.1")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml_load(raw) if raw else None
    except yaml.YAMLError as err:
        if raw[:1] in "[{":  # a list or mapping cut short: taken as a string, it would be refused as one
            raise ConfigError(f"{key}={raw} is not a valid YAML list or mapping ({getattr(err, 'problem', err)}); "
                              "e.g. optim.milestones=[5, 8], distill.options={tau: 2.0}") from None
        value = raw  # a string that YAML cannot read unquoted (@x, a lone quote): the text as written
    except ValueError as err:  # a tag YAML cannot convert (!!int x)
        raise ConfigError(f"{key}={raw}: {err}") from None
    parts = key.split(".")
    fld = _string_field(parts)
    if fld is not None and value is not None and not isinstance(value, (str, list, dict)) \
            and not (isinstance(value, bool) and "on" in (fld.metadata.get("choices") or ())):
        # YAML reads yes, 123 or 2024-01-01 as a boolean, a number or a date: name the text as written,
        # quoted for the shell too (name='123' reaches btkd as name=123)
        raise ConfigError(f"{key}={raw} must be a string, but YAML reads it as {type(value).__name__} {value}; "
                          f"quote it: \"{key}='{raw}'\"")
    out: Dict[str, Any] = {}
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _string_field(parts: List[str]):
    """The field of a dotted Config key whose value is a string (``name``, ``model.teacher``), or None."""
    cls: Any = Config
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return None
        hint = typing.get_type_hints(cls)[part]
        if dataclasses.is_dataclass(hint):
            cls = hint
            continue
        inner = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is Union \
            else [hint]
        return fields[part] if i == len(parts) - 1 and inner == [str] else None
    return None


# ---------------------------------------------------------------------------------------------
# run names

#: What a run's name describes: a config's name is kept while these keys are what the file that set
#: the name says; when they differ, the ``btkd`` command derives the name instead (`derived_run_name`).
NAMED_KEYS = ("data.name", "model.student", "model.teacher", "distill.method", "distill.btkd.enabled")


def _get_key(data: Dict[str, Any], dotted: str) -> Any:
    """The value of a dotted key in a config dict, or its default where the dict does not set it."""
    node: Any = data
    default: Any = Config()
    for part in dotted.split("."):
        default = getattr(default, part)
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def default_run_name(cfg: Config, kind: Optional[str] = None) -> str:
    """The run name derived from a resolved config: ``[<dataset>_]<what>_[<teacher>_]<student>``.

    ``<what>`` is ``kind`` if given (``bench``), else ``teacher`` for a cross-entropy run (distill.method=ce:
    the name `btkd train cifar100/teachers/...` uses, and where distillation configs look for teachers),
    else the method, with ``_btkd`` when BTKD is on. ``<dataset>_`` is left out for cifar100 (the default
    dataset, as in the built-in CIFAR-100 names). Examples: ``kd_btkd_resnet32x4_resnet8x4``,
    ``teacher_resnet56``, ``cifar10_dkd_wrn_40_2_wrn_16_2``."""
    d = cfg.distill
    what = kind or ("teacher" if d.method == "ce" else d.method + ("_btkd" if d.btkd.enabled else ""))
    models = [cfg.model.teacher] if cfg.model.teacher and d.method != "ce" else []
    parts = ([] if cfg.data.name == DataConfig().name else [cfg.data.name]) + [what] + models + [cfg.model.student]
    return "_".join(str(p) for p in parts)


def derived_run_name(source: Union[str, Path, Dict[str, Any], None], overrides: List[str] = (),
                     kind: Optional[str] = None) -> Optional[str]:
    """The name the ``btkd`` command gives a run of ``source`` with ``overrides``, where it differs from the
    config's own ``name``; None where the config's name stands.

    - ``name=...`` among the overrides: that name (None here).
    - No file in the config's inheritance chain sets ``name``: `default_run_name`.
    - The name comes from a file of the user's: that name (None here).
    - The name comes from a built-in config: kept while the run's student, teacher, method, BTKD switch
      and dataset (`NAMED_KEYS`) are the built-in's; if the overrides, or a file that inherits the
      built-in without a name of its own, change any of them, `default_run_name`. With ``kind``
      (a bench, whose methods vary), only the dataset, student and teacher count, and a name from a
      built-in that is not a bench (``cifar100/kd/...``: a single run's folder) is never kept.

    A dict or None ``source`` gives None: only the command line derives names, from files.
    """
    if any(text.split("=", 1)[0].strip() == "name" for text in overrides):
        return None
    if source is None or isinstance(source, dict):
        return None
    path = resolve_config_path(str(source))
    data = _read_yaml(path)
    data.pop("bench", None)
    final = data
    for text in overrides:
        final = _merge(final, parse_override(text))
    final.pop("bench", None)
    origin = _name_source(path)
    if origin is not None:
        if not _is_builtin(origin):
            return None  # a name the user wrote is theirs
        named = _read_yaml(origin)
        if kind is not None and "bench" not in named:
            # a bench built on a single run's built-in would otherwise take that run's folder
            return default_run_name(config_from_dict(final), kind)
        keys = NAMED_KEYS if kind is None else tuple(k for k in NAMED_KEYS if not k.startswith("distill."))
        if all(_get_key(named, k) == _get_key(final, k) for k in keys):
            return None
    return default_run_name(config_from_dict(final), kind)


def _is_builtin(path: Path) -> bool:
    try:
        path.resolve().relative_to(BUILTIN_DIR.resolve())
        return True
    except ValueError:
        return False


def load_config(source: Union[str, Path, Dict[str, Any], None] = None, overrides: List[str] = ()) -> Config:
    """Load a config file (or a built-in name, or a dict), apply ``key=value`` overrides, validate.

    ``source`` is a YAML file (its ``inherit:`` parents merged first), a built-in config name
    (``"cifar100/kd_btkd/res32x4_res8x4"``: `builtin_configs` lists them), a dict of keys (taken as
    it is, without ``inherit:``) or None (every key at its default). ``overrides`` are
    ``"key=value"`` strings with a dotted key and a YAML value (``"optim.epochs=10"``,
    ``"distill.options={tau: 2.0}"``), applied in order; one that changes the method, a model or the
    dataset drops the settings that belonged to the old one. The modules in ``imports`` are imported.

    Returns the validated `Config`; its ``name`` is used as loaded (the ``btkd`` command's derived
    run names are `derived_run_name`'s). A missing file, an unknown key or a bad value is a
    ConfigError that names the key, the value and what is allowed.
    """
    if source is None:
        data: Dict[str, Any] = {}
    elif isinstance(source, dict):
        data = dict(source)
    else:
        data = _read_yaml(resolve_config_path(str(source)))
    return config_from_dict(merge_overrides(data, [parse_override(text) for text in overrides]))


def merge_overrides(data: Dict[str, Any], overrides: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """``overrides`` (nested mappings, e.g. from ``parse_override``) merged over ``data`` in order.

    A setting that they change drops ``data``'s settings that belong to it: KD's tau and 0.1/0.9 are
    not DKD's, a convnet's width is no option of an mlp, a dataset's options are its own. The new
    method or model starts from its own defaults, as a bench method does, plus what the overrides
    set. distill.btkd is the plug-in's and stays."""
    merged = data
    for over in overrides:
        merged = _merge(merged, over)
    dropped: Dict[str, tuple] = {}
    for (section, key), belonging in _BELONGING_SETTINGS.items():
        own = _section_key(data, section, key)
        if own is not None and _section_key(merged, section, key) != own:
            dropped[section] = dropped.get(section, ()) + belonging
    if not dropped:
        return merged
    merged = {**data, **{section: {k: v for k, v in data[section].items() if k not in names}
                         for section, names in dropped.items()}}
    for over in overrides:
        merged = _merge(merged, over)
    return merged


def _section_key(data: Dict[str, Any], section: str, key: str) -> Any:
    """``data[section][key]``, or None; a section that is no mapping (distill=1) is config_from_dict's to refuse."""
    return data[section].get(key) if isinstance(data.get(section), dict) else None


_BELONGING_SETTINGS = {("distill", "method"): ("options", "ce_weight", "kd_weight"),
                       ("model", "student"): ("student_options",),
                       ("model", "teacher"): ("teacher_options",),
                       ("data", "name"): ("options",)}  # synthetic's size is no option of CIFAR
