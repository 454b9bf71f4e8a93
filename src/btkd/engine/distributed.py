"""torchrun support: read the process group from the environment torchrun sets."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init() -> Context:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    env = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    try:
        world = int(env["WORLD_SIZE"] or 1)
        rank, local = int(env["RANK"] or 0), int(env["LOCAL_RANK"] or 0)
    except ValueError:
        raise ValueError(f"torchrun's environment is not integers: {env}; start btkd with torchrun, or unset "
                         "WORLD_SIZE, RANK and LOCAL_RANK for one process") from None
    if world <= 1:
        return Context()
    if env["RANK"] is None or not 0 <= rank < world:
        raise ValueError(f"WORLD_SIZE={world} but RANK={env['RANK']}: a process group needs 0 <= RANK < WORLD_SIZE "
                         "(torchrun sets both); start btkd with torchrun, or unset WORLD_SIZE for one process")
    if not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        tdist.init_process_group(backend=backend)
    return Context(rank=rank, local_rank=local, world_size=world)


def leave() -> bool:
    """Leave the process group, if this process joined one (True then). A process that exits without
    it can die in a gloo thread's destructor ("terminate called without an active exception"),
    which turns a finished run into a failed one; the CLI also exits without the interpreter's
    teardown after it (``btkd.cli``)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
        return True
    return False


def all_reduce_sum(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.world_size > 1:
        t = t.clone()
        tdist.all_reduce(t)
    return t


def barrier(ctx: Context) -> None:
    if ctx.world_size > 1:
        tdist.barrier()
