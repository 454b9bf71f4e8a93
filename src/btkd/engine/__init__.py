"""The layer above the core: building a run from its config (build), the loop that trains K >= 1
students against one teacher (grid), run folders (run_folder), checkpoints and evaluation."""

from .build import lr_factor, make_loss
from .grid import Grid, MemberSpec
from .trainer import Trainer

__all__ = ["Trainer", "Grid", "MemberSpec", "make_loss", "lr_factor"]
