"""Atomic checkpoints that load without executing code.

A checkpoint is a dict of tensors and plain Python values written with ``torch.save`` to a temporary
file in the same folder, flushed to disk, then renamed over the old one: a run killed at any moment
leaves either the previous checkpoint or the new one, never a torn file. Loading uses
``weights_only=True``. Final weights are also exported as safetensors.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict

import torch

__all__ = ["save_atomic", "load_checkpoint_file", "rng_state", "set_rng_state", "export_weights"]


def save_atomic(obj: Any, path: os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint_file(path: os.PathLike) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; is this the run folder of a started run?")
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export_weights(model: torch.nn.Module, path: os.PathLike, half: bool = False) -> None:
    """Write the model's state dict as safetensors (atomically), optionally in half precision."""
    from safetensors.torch import save_file

    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
