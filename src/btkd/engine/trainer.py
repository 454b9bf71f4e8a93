"""`Trainer`: one run (teacher training, or one student's distillation) as a grid of one.

``Trainer(cfg).fit()`` trains ``cfg.model.student`` into the run folder ``output_dir/name`` and
returns its summary; ``Trainer.from_run_dir(folder)`` continues a killed run. The loop itself is
`Grid` (grid.py); building from the config is in build.py; the folder's files in run_folder.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from ..config import Config, config_from_dict, load_config
from .build import lr_factor, make_loss
from .grid import Grid, MemberSpec
from .run_folder import RunFolder

__all__ = ["Trainer", "make_loss", "lr_factor"]


class Trainer:
    """Train one model from a config. ``Trainer(cfg).fit()`` returns the run summary."""

    def __init__(self, cfg: Config, run_dir: Optional[os.PathLike] = None, resume: bool = False,
                 echo: Callable[[str], None] = print):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.output_dir) / cfg.name
        self.grid = Grid([MemberSpec(cfg.name, cfg, self.run_dir)], self.run_dir, resume=resume, echo=echo)
        self.member = self.grid.members[0]

    @classmethod
    def from_run_dir(cls, run_dir: os.PathLike, overrides: Sequence[str] = (), **kwargs) -> "Trainer":
        """Resume the run in ``run_dir`` with the config it was started with; ``overrides``
        (``key=value``) may change the learning rate and runtime settings, and are logged."""
        run_dir = Path(run_dir)
        saved = RunFolder(run_dir).read_config()
        cfg = load_config(saved, list(overrides)) if overrides else config_from_dict(saved)
        return cls(cfg, run_dir=run_dir, resume=True, **kwargs)

    def fit(self) -> Dict[str, Any]:
        return self.grid.fit()[0]

    # The pieces a caller (a benchmark, a test) may want to look at.
    @property
    def student(self):
        return self.member.student

    @property
    def teacher(self):
        return self.grid.teacher

    @property
    def optimizer(self):
        return self.member.optimizer

    @property
    def loss_fn(self):
        return self.member.loss_fn

    @property
    def step(self):
        return self.grid.step

    @property
    def ctx(self):
        return self.grid.ctx

    @property
    def cuda_graph(self) -> bool:
        return self.grid.cuda_graph

    @property
    def start_epoch(self) -> int:
        return self.grid.start_epoch

    @property
    def num_classes(self) -> int:
        return self.grid.data.num_classes

    @property
    def train_size(self) -> int:
        return self.grid.data.train_size

    @property
    def test_size(self) -> int:
        return self.grid.data.test_size

    @property
    def train_loader(self):
        return self.grid.train_loaders[0]

    @property
    def test_loader(self):
        return self.grid.data.test_loader
