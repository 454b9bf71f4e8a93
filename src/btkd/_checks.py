"""Argument checks shared by the core: every error names the argument and what was expected.

Also the one error for a file that cannot be used as it is (`DamagedFileError`).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import math
import numbers
import pickle
import re
import zipfile
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor


class DamagedFileError(ValueError):
    """A data or checkpoint file that is truncated, corrupt or not what it should be.

    The message names the file, what is wrong and what to do. A ValueError, so the command line
    prints it in one line; built from the message alone, so a DataLoader worker can re-raise it.
    """


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the btkd extra that brings it
    (``pip install 'btkd[digits]'``). The command line prints it in one line, as a user error."""


def damaged(path: object, problem: str, advice: str = "re-copy it from its source") -> DamagedFileError:
    """``DamagedFileError("<path>: <problem>; <advice>")``."""
    return DamagedFileError(f"{path}: {problem}; {advice}")


def reason(err: BaseException) -> str:
    """A one-line description of a low-level read error, for a `damaged` message. Library advice
    to enable pickle loading is dropped: btkd never loads a file that way."""
    text = " ".join(str(err).split())
    if "WeightsUnpickler error:" in text:  # torch: keep the cause, not the advice around it
        text = text.split("WeightsUnpickler error:", 1)[1].split(" Check the documentation")[0]
    if "allow_pickle" in text or "weights_only" in text:
        text = "the data holds Python objects, not plain arrays and tensors"
    text = text.strip()
    text = text if len(text) <= 200 else text[:200] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextlib.contextmanager
def reading(path: object, what: str, advice: str) -> Iterator[None]:
    """Turn any error raised while decoding ``path`` into one `DamagedFileError` saying it cannot
    be read as ``what``. Parsers of damaged bytes raise every kind of exception (EOFError, zlib.error,
    BadZipFile, UnpicklingError, struct.error, ...); a missing or unreadable file keeps its own error."""
    try:
        yield
    except (DamagedFileError, FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:
        raise damaged(path, f"cannot be read as {what} ({reason(err)})", advice) from None


def check_zip_crcs(path: object) -> None:
    """Read every member of a zip file so that zipfile checks its CRC-32 (raises BadZipFile).
    torch.load does not check them, so a flipped byte in a tensor would load as a wrong weight.
    A member with CRC 0 is skipped: ``torch.save`` with ``compute_crc32=False`` records none."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.CRC:
                with zf.open(info) as f:
                    while f.read(1 << 24):
                        pass


def load_torch_file(path: object, advice: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with the zip CRCs checked first; a file
    that cannot be read is one `DamagedFileError` (``advice`` says what to do)."""
    with reading(path, "a torch checkpoint", advice):
        try:
            if zipfile.is_zipfile(path):
                check_zip_crcs(path)
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"GLOBAL (\S+)", str(err))
            if found is None:
                raise  # damaged pickled data: `reading` names it
            raise damaged(path, f"is not a plain tensor checkpoint: it holds the Python object {found.group(1)}, "
                          "and btkd will not execute code from a file",
                          "save the weights as tensors (torch.save(model.state_dict(), path)) or as safetensors"
                          ) from None


def keyword_options(fn: Any, exclude: Iterable[str] = ()) -> list[str] | None:
    """The keyword options ``fn`` takes, in order, less ``exclude``; None when it takes any (``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    skip = set(exclude)
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip]


def check_choice(arg: str, value: object, valid: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``valid``; otherwise raise a ValueError listing them."""
    valid = list(valid)
    if isinstance(value, str) and value in valid:
        return value
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value, valid, n=1)
        if close:
            hint = f" Did you mean {close[0]!r}?"
    raise ValueError(f"{arg}={value!r} is not a valid option; expected one of {valid}.{hint}")


def check_logits(arg: str, logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise ValueError(f"{arg} must be a torch.Tensor of shape [N, C], got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{arg} must have shape [N, C] (batch, classes), got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError(f"{arg} is an empty batch (shape {tuple(logits.shape)}); pass at least one sample")
    if logits.shape[1] < 2:
        raise ValueError(f"{arg} must have at least 2 classes, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{arg} must be a floating-point tensor, got dtype {logits.dtype}")
    if not bool(torch.isfinite(logits).all()):
        if not bool((torch.isnan(logits) | (logits == math.inf)).any()):
            # only -inf: often a class masked on purpose, which the generic message below would misdiagnose
            raise ValueError(
                f"{arg} contains -inf entries, which most losses turn into NaN (DKD, LS, RLD, CTKD, the swap): "
                "to mask a class, give it a large finite negative logit instead, such as -1e4; otherwise check "
                "the model output (fp16 overflow)"
            )
        raise ValueError(
            f"{arg} contains NaN or infinite values; check the model output "
            "(a diverged run, a too-high learning rate, or fp16 overflow)"
        )
    rows = logits.detach().float()
    if bool((rows >= 0).all()) and bool(((rows.sum(1) - 1).abs() < 1e-3).all()):
        # a warning, not an error: small logits can look so by chance (one sample, two classes: [0, 1])
        import warnings

        warnings.warn(f"{arg} look like probabilities (every row >= 0 and sums to 1); if they are, pass the logits, "
                      "the model's output before softmax", stacklevel=4)


def check_labels(labels: Tensor, num_samples: int, num_classes: int, arg: str = "labels") -> None:
    if not isinstance(labels, Tensor):
        raise ValueError(f"{arg} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise ValueError(
            f"{arg} must be an integer tensor of class indices (torch.long), got dtype {labels.dtype}; "
            "one-hot or soft labels are not accepted: pass labels.argmax(1)"
        )
    if labels.shape != (num_samples,):
        raise ValueError(f"{arg} must have shape [{num_samples}] to match the logits, got {tuple(labels.shape)}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{arg} must lie in [0, {num_classes}) for {num_classes} classes, got values in [{lo}, {hi}]")


def check_pair(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> None:
    """Validate one distillation batch: student and teacher logits [N, C] and labels [N]."""
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must have the same shape [N, C], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}; do the two models "
            "have the same number of classes?"
        )
    check_labels(labels, student_logits.shape[0], student_logits.shape[1])


def check_real(arg: str, value: object) -> int | float:
    """One real number: a Python int or float, a numpy scalar or a 0-d tensor (bool refused).
    Returns a Python int for integer types, else a float (NaN is kept: callers check ranges)."""
    expected = f"{arg} must be a real number (int, float, numpy scalar or 0-d tensor)"
    if isinstance(value, Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.is_complex():
            raise ValueError(f"{expected}, got a {value.dtype} tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{expected}, got {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def check_weight(arg: str, value: object) -> float:
    """A loss weight or option: a finite number >= 0, as a float."""
    x = check_real(arg, value)
    if not (math.isfinite(x) and x >= 0):
        raise ValueError(f"{arg}={x!r} must be a finite number >= 0")
    return float(x)


def check_positive(arg: str, value: object) -> float:
    """A finite number > 0 (e.g. a temperature), as a float."""
    x = check_real(arg, value)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{arg}={x!r} must be a finite number > 0")
    return float(x)


def check_epoch(epoch: object, epochs: object) -> tuple[int | float, int]:
    """Validate and return ``(epoch, epochs)`` as Python numbers: ``epoch`` a real number in
    [0, epochs) (an int stays an int), ``epochs`` a positive integer."""
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer (the length of training), got {epochs!r}")
    epochs = int(epochs)
    epoch = check_real("epoch", epoch)
    if not (0 <= epoch < epochs):  # False for NaN too
        raise ValueError(
            f"epoch must lie in [0, epochs) = [0, {epochs}) (0-based), got {epoch!r}; "
            "pass the 0-based epoch index, e.g. epoch=e for e in range(epochs)"
        )
    return epoch, epochs


def same_definition(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` come from the same source definition (module and qualified name)."""
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == \
        (getattr(b, "__module__", None), getattr(b, "__qualname__", None))
