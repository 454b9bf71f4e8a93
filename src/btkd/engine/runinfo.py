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
    """The commit of the btkd checkout this package runs from; else BTKD_GIT_COMMIT (a copy of the
    tree without .git, e.g. on a remote machine, is told its commit that way). A package installed
    into another project's repository (its .venv, say) is not that project's commit."""
    package = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=package)
        lines = out.stdout.split("\n") if out.returncode == 0 else []
        ours = len(lines) >= 2 and Path(lines[0]).resolve() / "src" / "btkd" == package
        commit = lines[1].strip() if ours else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit or os.environ.get("BTKD_GIT_COMMIT") or None
