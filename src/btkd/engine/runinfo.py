"""What a run folder records besides its log: versions, device, world size, timing."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device, world_size: int, batch_size: int) -> Dict[str, Any]:
    from .. import __version__

    return {
        "btkd_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "cuda_version": torch.version.cuda,
        "device": device_name(device),
        "world_size": world_size,
        "batch_size_per_process": batch_size,
        "effective_batch_size": batch_size * world_size,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    """The commit of the git checkout whose HEAD holds this package (btkd's own, or a project that
    vendors btkd as a committed folder); else BTKD_GIT_COMMIT (a copy of the tree without .git, e.g. on a
    remote machine, is told its commit that way). A package installed into an untracked folder of
    another repository (a project's ignored .venv, say) takes no commit: that commit does not hold it."""
    package = Path(__file__).resolve().parents[1]
    try:  # in HEAD itself: a copy added to the index but not committed is not in that commit
        tracked = subprocess.run(["git", "cat-file", "-e", "HEAD:./__init__.py"], capture_output=True,
                                 text=True, timeout=5, cwd=package)
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=package)
        commit = head.stdout.strip() if tracked.returncode == 0 and head.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit or os.environ.get("BTKD_GIT_COMMIT") or None
