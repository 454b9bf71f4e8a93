"""Atomic checkpoints that load without executing code.

A checkpoint is a dict of tensors and plain Python values written with ``torch.save`` to a temporary
file in the same folder, flushed to disk, then renamed over the old one: a run killed at any moment
leaves either the previous checkpoint or the new one, never a torn file. Loading uses
``weights_only=True``. Final weights are also exported as safetensors.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Optional

import torch

__all__ = ["write_atomic", "save_atomic", "load_checkpoint_file", "rng_state", "set_rng_state", "export_weights"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import (changing it is not thread-safe): mkstemp makes its files 0600, and a file
# renamed into place should be as readable as one opened plainly, e.g. by a team on a shared disk.
_UMASK = _read_umask()
_FILE_MODE = 0o666 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK  # likewise for a folder made by mkdtemp (0700) and renamed into place


def write_atomic(path: os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """The one atomic writer: ``write(f)`` fills a temp file beside ``path``, which is flushed to
    disk and renamed over ``path``. A kill leaves the old file or the new one, and at most a temp
    file that the run folder removes when it is next opened."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT) and err.filename is None:
            # a full disk fails a write, which names no file: name the one it was writing
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def save_atomic(obj: Any, path: os.PathLike) -> None:
    """``torch.save`` of plain data (tensors, numbers, strings, dicts), atomically."""

    def save(f: BinaryIO) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as err:
            # torch's zip writer, closing after a write that failed (a full disk), raises its own
            # "unexpected pos" error over the OSError: raise the OSError, which says what happened
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise

    write_atomic(path, save)


def load_checkpoint_file(path: os.PathLike) -> Dict[str, Any]:
    """Read a checkpoint written by `save_atomic`; a damaged one is a DamagedFileError naming it."""
    from .._checks import load_torch_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; is this the run folder of a started run?")
    return load_torch_file(path, "delete it and rerun (the run starts again), or restore it from a copy")


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export_weights(model: torch.nn.Module, path: os.PathLike, half: bool = False,
                   epoch: Optional[int] = None) -> None:
    """Write the model's state dict as safetensors (atomically), optionally in half precision;
    ``epoch`` (1-based) is recorded in the file's metadata."""
    from safetensors.torch import save

    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    metadata = None if epoch is None else {"epoch": str(int(epoch))}
    write_atomic(path, lambda f: f.write(save(state, metadata=metadata)))


def weights_epoch(path: os.PathLike) -> Optional[int]:
    """The epoch recorded in a safetensors file written by `export_weights`, or None (no file, no
    record, or a file that cannot be read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            value = (f.metadata() or {}).get("epoch")
    except Exception:  # missing or damaged: the caller rewrites it
        return None
    return int(value) if value is not None and value.isdigit() else None
