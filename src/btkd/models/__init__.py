"""The model zoo: the CIFAR models with the architectures and state-dict names of RepDistiller /
mdistiller, and the ImageNet models ``resnet18`` / ``resnet34`` / ``resnet50`` (torchvision's names)
and ``MobileNetV1`` (mdistiller's).

Build a model by name with :func:`build_model`; load published RepDistiller / mdistiller teacher
checkpoints (``{"model": state_dict, ...}``), torchvision's published ImageNet weights, plain state
dicts or safetensors files with :func:`load_checkpoint`. Every model's ``forward`` returns logits
``[N, num_classes]`` only.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import numbers
import os
from typing import Any

import torch
from torch import nn
from torch.torch_version import TorchVersion

from .._checks import load_torch_file, reading
from . import (  # noqa: F401  (fills MODELS)
    imagenet_resnet, mobilenetv1, mobilenetv2, resnet, shufflenetv1, shufflenetv2, small, vgg, wrn,
)
from ._registry import MODELS, register_model

__all__ = ["MODELS", "register_model", "build_model", "load_checkpoint", "CheckpointMismatchError"]


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not fit the model it is loaded into."""


def build_model(name: str, num_classes: int = 100, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` (`MODELS`) with a ``num_classes``-way head.

    ``kwargs`` go to its builder (a convnet's ``width``; ``in_channels`` for the models that take it). An
    unknown name (with the closest one) or a ``num_classes`` that is not a positive integer is a
    ValueError. The weights are freshly initialised (from torch's global RNG); `load_checkpoint`
    loads trained ones."""
    try:
        builder = MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(MODELS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid names: {', '.join(sorted(MODELS))}") from None
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer (the head's width), got {num_classes!r}")
    return builder(num_classes=num_classes, **kwargs)


def _numpy_safe_globals() -> list[Any]:
    """Numpy scalar and dtype globals that published checkpoints may pickle (e.g. ``best_acc``)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
    scalar = multiarray.scalar
    globs: list[Any] = [scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 may pickle the dtype classes
    if dtypes is not None:
        globs += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    # Checkpoints written under numpy 1.x name numpy.core.multiarray.scalar, under 2.x numpy._core...;
    # torch >= 2.6 accepts (object, "pickled.name") pairs, so allow both names whichever numpy is installed.
    if TorchVersion(torch.__version__) >= "2.6":
        globs += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    return globs


_ADVICE = "re-copy or re-download it, or export it again"


def _read_file(path: str | os.PathLike[str]) -> Any:
    """Read a safetensors file or a torch checkpoint (``weights_only=True``, numpy scalars allowed);
    a file that cannot be read is a DamagedFileError naming it."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header size, then a JSON header; torch: a zip ("PK") or a pickle.
    if path.endswith(".safetensors") or (len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")):
        from ..weights import read_weights

        with reading(path, "a safetensors file", _ADVICE):
            return read_weights(path)  # all its shards, when it is one (NAME-00001-of-00002.safetensors)
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    with safe_globals(_numpy_safe_globals()) if safe_globals is not None else contextlib.nullcontext():
        return load_torch_file(path, _ADVICE)


def _extract_state_dict(obj: Any, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("members"), dict) and "format" in obj:
        # a btkd run's checkpoint.pt: its student's weights, as of the epoch it was written at
        members = obj["members"]
        if len(members) != 1:
            raise ValueError(f"{path} is a bench's checkpoint holding {len(members)} students "
                             f"({_examples(sorted(map(str, members)))}); load one student's "
                             "last.safetensors from its folder under runs/ in the bench folder")
        (label, entry), = members.items()
        if not isinstance(entry, dict) or entry.get("student") is None:
            raise ValueError(f"{path}: the run's student {label!r} holds no weights (it diverged in its first "
                             "epoch); train it again")
        obj = entry["student"]
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(
            f"{path}: expected a state dict of tensors, or a dict holding one under 'model', 'state_dict' or "
            f"'model_state_dict', got {type(obj).__name__}" + (f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else "")
        )
    return {_strip_wrappers(k): v for k, v in obj.items()}


def _strip_wrappers(key: str) -> str:
    """A key without the prefixes that wrappers add: ``module.`` (DDP), ``_orig_mod.`` (torch.compile)."""
    stripped = True
    while stripped:  # in any order: a compiled DDP model saves _orig_mod.module.<name>
        stripped = False
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def _examples(keys: list[str], n: int = 4) -> str:
    # BatchNorm's step counters last: weights say more about which layers differ
    shown = ", ".join(sorted(keys, key=lambda k: k.endswith("num_batches_tracked"))[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


_COUNTER = "num_batches_tracked"


def _fill_batch_counters(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Give a BatchNorm saved before PyTorch 0.4.1, which had no ``num_batches_tracked`` buffer, the
    counter 0, as ``torch.nn.BatchNorm`` itself does for such state: torchvision's published ResNet
    weights are in that layout. Only a counter whose layer's ``running_mean`` is in ``state`` is filled
    (the counter is used only by BN with ``momentum=None``)."""
    for key, value in expected.items():
        if key.endswith("." + _COUNTER) and key not in state:
            if key[: -len(_COUNTER)] + "running_mean" in state:
                state[key] = torch.zeros_like(value)


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load weights into ``model`` strictly and return it.

    ``path`` is a safetensors file (or the first of its shards, ``NAME-00001-of-0000n.safetensors``: all
    are read) or a torch checkpoint holding a state dict, either plainly or under
    ``"model"`` (the RepDistiller / mdistiller layout, which may also hold ``epoch``, ``best_acc`` and
    optimizer state), ``"state_dict"`` or ``"model_state_dict"``, or a btkd run's ``checkpoint.pt`` (its
    student). Leading ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) are stripped. BatchNorm layers
    saved without ``num_batches_tracked`` (PyTorch < 0.4.1, e.g. torchvision's published ResNet
    weights) get the counter 0. Mismatched keys or shapes raise `CheckpointMismatchError` (a
    ValueError) naming them; a file that cannot be read raises ``btkd.DamagedFileError``.
    """
    path = os.fspath(path)
    state = _extract_state_dict(_read_file(path), path)
    expected = model.state_dict()
    _fill_batch_counters(state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches ({_examples(mismatched, 3)})")
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit {type(model).__name__}: " + "; ".join(parts)
            + ". Likely cause: the checkpoint is for a different model name, or was trained with a "
            "different num_classes (compare the classifier weight's first dimension)."
        )
    model.load_state_dict(state, strict=True)
    return model
