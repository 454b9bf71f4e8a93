"""Typed run configuration: YAML files that may inherit from one another, ``key=value`` overrides,
and validation at load time (an unknown key or a bad value names the key, the value and what is
allowed)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

__all__ = ["Config", "ConfigError", "load_config", "config_from_dict", "config_to_dict", "builtin_configs",
           "resolve_config_path", "validate"]

BUILTIN_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be used as written."""


def choice(default, *allowed):
    return field(default=default, metadata={"choices": allowed})


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


def bounded(default, lo=None, hi=None, *, lo_open=False, hi_open=False):
    """A numeric field (or a list of numbers) with an allowed range; a None default allows null."""
    meta = {"range": Range(lo, hi, lo_open, hi_open)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    name: str = "cifar100"  # a name in btkd.data.DATASETS, or "imagefolder"
    root: Optional[str] = None  # None: the dataset's default location
    batch_size: int = bounded(64, 1)  # per process; the effective batch is batch_size * world size
    # the batch over all processes, kept on any number of them (batch_size is then global / world size);
    # null: batch_size per process
    global_batch_size: Optional[int] = bounded(None, 1)
    eval_batch_size: int = bounded(500, 1)
    crop_padding: int = bounded(4, 0)  # random crop with this zero padding; 0 disables it
    flip: bool = True
    train_subset: Optional[int] = bounded(None, 1)  # a seeded random, class-stratified draw of N images
    test_subset: Optional[int] = bounded(None, 1)
    subset_seed: int = bounded(0, 0)  # the draw's seed: the same subsets for every run seed
    image_size: int = bounded(224, 1)  # imagefolder only
    workers: int = bounded(4, 0)  # imagefolder only
    options: Dict[str, Any] = field(default_factory=dict)  # extra loader options (e.g. synthetic sizes)


@dataclass
class ModelConfig:
    student: str = "resnet8x4"
    teacher: Optional[str] = None
    teacher_checkpoint: Optional[str] = None  # a btkd, mdistiller or RepDistiller checkpoint, or safetensors
    student_options: Dict[str, Any] = field(default_factory=dict)  # extra builder options, e.g. {width: 16}
    teacher_options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    epochs: int = bounded(240, 1)
    lr: float = bounded(0.05, 0, lo_open=True)
    momentum: float = bounded(0.9, 0, 1, hi_open=True)
    weight_decay: float = bounded(5e-4, 0)
    nesterov: bool = False
    lr_schedule: str = choice("multistep", "multistep", "cosine")
    milestones: List[int] = bounded([150, 180, 210], 1)  # multistep: increasing, below epochs
    gamma: float = bounded(0.1, 0, 1, lo_open=True)
    warmup_epochs: int = bounded(0, 0)  # linear learning-rate warm-up; below epochs


@dataclass
class BTKDConfig:
    enabled: bool = False
    rectify: str = choice("swap", "swap", "reweight", "none")
    reduction: str = choice("subset", "subset", "batch")
    schedule: str = choice("cos2", "cos2", "cos2_iter", "linear", "linear_iter", "constant", "step")
    schedule_options: Dict[str, Any] = field(default_factory=dict)
    split: bool = True


@dataclass
class DistillConfig:
    method: str = "kd"  # "ce" (no teacher: teacher training or a student alone) or a host loss name
    ce_weight: Optional[float] = bounded(None, 0)  # None: the host framework's own recipe
    kd_weight: Optional[float] = bounded(None, 0)
    options: Dict[str, Any] = field(default_factory=dict)  # host options: tau, alpha, beta, warmup, ...
    btkd: BTKDConfig = field(default_factory=BTKDConfig)


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = choice("auto", "auto", "fp32", "bf16")  # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: str = choice("auto", "auto", "on", "off")
    # torch.compile the models and the loss; auto: on with a CUDA graph (one GPU, resident data),
    # the fastest measured path; off on a CPU, where compiling costs more than it saves
    compile: str = choice("auto", "auto", "on", "off")
    # capture the whole training step in one CUDA graph; auto: on for one CUDA GPU with resident data
    cuda_graph: str = choice("auto", "auto", "on", "off")
    fold_teacher_bn: str = choice("auto", "auto", "on", "off")  # auto: on CUDA; folds BN into convs
    # the teacher's forward (whose argmax decides BTKD's split): "same" as the students, or "fp32"
    teacher_precision: str = choice("same", "same", "fp32")
    progress: bool = True
    tensorboard: bool = False  # also write every logged number as TensorBoard events into the run folder
    threads: Optional[int] = bounded(None, 1)  # CPU threads; None leaves torch's default
    # stop at the end of the epoch that the next one would carry past this many minutes of training
    # (checkpointed; continue with --resume): for jobs with a wall-clock limit
    time_limit: Optional[float] = bounded(None, 0, lo_open=True)


@dataclass
class Config:
    name: str = "run"
    seed: int = bounded(0, 0)
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with validation


def config_from_dict(data: Dict[str, Any], cls=Config, where: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping of keys to values, got {data!r}")
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
        validate(out)
    return out


def validate(cfg: Config) -> None:
    """Checks between keys, after each key has passed its own."""
    o = cfg.optim
    if o.warmup_epochs >= o.epochs:
        raise ConfigError(f"optim.warmup_epochs={o.warmup_epochs} must be below optim.epochs={o.epochs}; "
                          "the warm-up is part of training")
    if o.lr_schedule == "multistep":
        ms = o.milestones
        if any(a >= b for a, b in zip(ms, ms[1:])) or any(m >= o.epochs for m in ms):
            example = sorted({m for m in (o.epochs // 2, o.epochs * 4 // 5) if 1 <= m < o.epochs})
            such_as = f"such as optim.milestones={example}, " if example else ""
            raise ConfigError(
                f"optim.milestones={ms} must be strictly increasing epochs in [1, optim.epochs={o.epochs}) "
                f"with optim.lr_schedule=multistep; give milestones below {o.epochs}, {such_as}"
                "or optim.milestones=[] for a constant rate")


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
            raise ConfigError(f"{path}={value!r} must be a list, e.g. [150, 180, 210]")
        return [_coerce(v, args[0], fld, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}={value!r} must be a mapping, e.g. {{tau: 4.0}}")
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
        if not isinstance(value, str):
            raise ConfigError(f"{path}={value!r} must be a string")
        allowed = fld.metadata.get("choices")
        if allowed and value not in allowed:
            raise ConfigError(f"{path}={value!r} is not allowed; expected one of {list(allowed)}")
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
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------
# files, inheritance and overrides


def builtin_configs() -> List[str]:
    """Names of the configs shipped with btkd, e.g. ``cifar100/kd/res32x4_res8x4``."""
    return sorted(str(p.relative_to(BUILTIN_DIR).with_suffix("")) for p in BUILTIN_DIR.rglob("*.yaml")
                  if not p.name.startswith("_"))


def resolve_config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = BUILTIN_DIR / (name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml")
    if builtin.is_file():
        return builtin
    close = difflib.get_close_matches(name_or_path, builtin_configs(), n=3)
    hint = f" Close built-in names: {close}." if close else " `btkd configs` lists the built-in ones."
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a built-in config name.{hint}")


def _read_yaml(path: Path, seen: tuple = ()) -> Dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"config inheritance loops back to {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    parents = data.pop("inherit", None)
    if parents is None:
        return data
    merged: Dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        parent_path = (path.parent / parent)
        if not parent_path.is_file():
            raise ConfigError(f"{path}: inherit: {parent!r} not found (looked for {parent_path})")
        merged = _merge(merged, _read_yaml(parent_path, seen + (path.resolve(),)))
    return _merge(merged, data)


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
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    out: Dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(source: Union[str, Path, Dict[str, Any], None] = None, overrides: List[str] = ()) -> Config:
    """Load a config file (or a built-in name, or a dict), apply ``key=value`` overrides, validate."""
    if source is None:
        data: Dict[str, Any] = {}
    elif isinstance(source, dict):
        data = dict(source)
    else:
        data = _read_yaml(resolve_config_path(str(source)))
    for text in overrides:
        data = _merge(data, parse_override(text))
    return config_from_dict(data)
