"""Typed run configuration: YAML files that may inherit from one another, ``key=value`` overrides,
and validation at load time (an unknown key or a bad value names the key, the value and what is
allowed)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

__all__ = ["Config", "ConfigError", "load_config", "config_from_dict", "config_to_dict", "builtin_configs",
           "resolve_config_path"]

BUILTIN_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be used as written."""


def choice(default, *allowed):
    return field(default=default, metadata={"choices": allowed})


@dataclass
class DataConfig:
    name: str = "cifar100"  # a name in btkd.data.DATASETS, or "imagefolder"
    root: Optional[str] = None  # None: the dataset's default location
    batch_size: int = 64  # per process; the effective batch is batch_size * world size
    eval_batch_size: int = 500
    crop_padding: int = 4  # random crop with this zero padding; 0 disables it
    flip: bool = True
    train_subset: Optional[int] = None  # use only the first N training images (quick runs)
    test_subset: Optional[int] = None
    image_size: int = 224  # imagefolder only
    workers: int = 4  # imagefolder only
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
    epochs: int = 240
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_schedule: str = choice("multistep", "multistep", "cosine")
    milestones: List[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear learning-rate warm-up


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
    ce_weight: Optional[float] = None  # None: the host framework's own recipe
    kd_weight: Optional[float] = None
    options: Dict[str, Any] = field(default_factory=dict)  # host options: tau, alpha, beta, warmup, ...
    btkd: BTKDConfig = field(default_factory=BTKDConfig)


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = choice("auto", "auto", "fp32", "bf16")  # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: str = choice("auto", "auto", "on", "off")
    compile: bool = False
    # capture the whole training step in one CUDA graph; auto: on for one CUDA GPU with resident data
    cuda_graph: str = choice("auto", "auto", "on", "off")
    fold_teacher_bn: str = choice("auto", "auto", "on", "off")  # auto: on CUDA; folds BN into convs
    progress: bool = True
    threads: Optional[int] = None  # CPU threads; None leaves torch's default


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
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
    return cls(**kwargs)


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
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}={value!r} must be a number")
        return float(value)
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
