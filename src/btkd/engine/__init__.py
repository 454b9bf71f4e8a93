"""The layer above the core: training, checkpoints, run folders."""

from .trainer import Trainer, lr_factor, make_loss

__all__ = ["Trainer", "make_loss", "lr_factor"]
