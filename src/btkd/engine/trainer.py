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
    """Train one model from a config. ``Trainer(cfg).fit()`` returns the run summary.

    Args:
        cfg: the run's config (`btkd.config.load_config`). ``distill.method: ce`` trains a model
            alone (a teacher); any other method distils ``model.student`` from ``model.teacher``,
            loaded from ``model.teacher_checkpoint``.
        run_dir: the run folder; default ``output_dir/name`` (relative to the current directory).
        resume: continue the run in ``run_dir`` from its ``checkpoint.pt`` (`from_run_dir` also
            reads its saved config).
        echo: where the progress lines go (``print``; ``lambda *_: None`` for none).

    Building it loads the data and the teacher and builds the student, its optimizer and the loss,
    so a bad setting fails here, before the run folder is written. A folder that already holds a run
    is a FileExistsError (pass ``resume=True``, or another ``name``); a config that cannot run is a
    ConfigError (or a FileNotFoundError for missing data or teacher weights), each saying what to
    change. Training, under `fit`, writes ``config.yaml``, ``meta.json``, ``log.jsonl`` (one line
    per epoch), ``checkpoint.pt``, ``best.safetensors``, ``last.safetensors`` and ``summary.json``
    into the run folder (README: "Command line" describes them).
    """

    def __init__(self, cfg: Config, run_dir: Optional[os.PathLike] = None, resume: bool = False,
                 echo: Callable[[str], None] = print):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.output_dir) / cfg.name
        self.grid = Grid([MemberSpec(cfg.name, cfg, self.run_dir)], self.run_dir, resume=resume, echo=echo)
        self.member = self.grid.members[0]

    @classmethod
    def from_run_dir(cls, run_dir: os.PathLike, overrides: Sequence[str] = (), **kwargs) -> "Trainer":
        """A trainer that resumes the run in ``run_dir`` with the config it was started with.

        ``overrides`` (``key=value``) may change only the keys a resume may change (the learning
        rate, the number of epochs, ``data.root`` and runtime settings: the keys marked *resume*
        in docs/CONFIG.md); the changes are logged. Another key is a ConfigError. ``kwargs`` go to
        the constructor (``echo``)."""
        run_dir = Path(run_dir)
        saved = RunFolder(run_dir).read_config()
        cfg = load_config(saved, list(overrides)) if overrides else config_from_dict(saved)
        return cls(cfg, run_dir=run_dir, resume=True, **kwargs)

    def fit(self) -> Dict[str, Any]:
        """Train to ``optim.epochs`` (from the checkpoint, when resuming) and return the run's summary,
        as ``summary.json`` holds it: ``last_acc`` and ``best_acc`` (test accuracy in %, last and best
        epoch), ``best_epoch``, ``epochs_done``, ``teacher_test_acc`` (%; None without a teacher),
        ``frac_wrong_mean`` (the fraction, not %, of augmented training samples the teacher got wrong:
        what BTKD rectifies), ``diverged`` (None here: see below), ``wall_time`` and the run's method
        and models. A run that ``runtime.time_limit`` pauses returns ``{"paused": True, "epochs_done",
        "epochs", ...}`` instead. A training loss, weights or test loss that become NaN or infinite
        raise a FloatingPointError naming the epoch: the checkpoint keeps the last good epoch (resume it with a
        lower ``optim.lr`` through `from_run_dir`), or, in the first epoch, nothing. (In a `Grid` of
        several members such a member is frozen instead and its ``diverged`` says the epoch and the
        reason.) Ctrl-C raises a KeyboardInterrupt that says what was kept: the last finished epoch's
        checkpoint (continue with `from_run_dir`), or nothing before the first."""
        return self.grid.fit()[0]

    # The pieces a caller (a benchmark, a test) may want to look at.
    @property
    def student(self):
        """The student model (not its DDP or compiled wrapper): its weights are the run's."""
        return self.member.student

    @property
    def teacher(self):
        """The frozen teacher as the step runs it (BatchNorm folded and compiled where the runtime
        says), or None for a run without one."""
        return self.grid.teacher

    @property
    def optimizer(self):
        """The student's SGD (it also trains a host's own parameters, such as CTKD's temperature)."""
        return self.member.optimizer

    @property
    def loss_fn(self):
        """The loss the config asks for (`btkd.engine.make_loss`): a ``BTKD`` or ``Distill`` module,
        or None for plain cross-entropy."""
        return self.member.loss_fn

    @property
    def step(self):
        """The training step (teacher forward, student forward, loss, backward, optimizer), eager or
        captured in a CUDA graph; an engine internal, for benchmarks and tests."""
        return self.grid.step

    @property
    def ctx(self):
        """The process's place in a distributed run: ``rank``, ``world_size``, ``is_main``."""
        return self.grid.ctx

    @property
    def cuda_graph(self) -> bool:
        """Whether the step is captured in a CUDA graph (``runtime.cuda_graph`` on one GPU)."""
        return self.grid.cuda_graph

    @property
    def start_epoch(self) -> int:
        """The epochs already done when this trainer was built (0, or the checkpoint's when resuming)."""
        return self.grid.start_epoch

    @property
    def num_classes(self) -> int:
        """The dataset's number of classes."""
        return self.grid.data.num_classes

    @property
    def train_size(self) -> int:
        """The number of training images (after ``data.train_subset``)."""
        return self.grid.data.train_size

    @property
    def test_size(self) -> int:
        """The number of test images (after ``data.test_subset``)."""
        return self.grid.data.test_size

    @property
    def train_loader(self):
        """The training batches (of the run's seed): a `btkd.data.ResidentLoader`, or for an
        ImageFolder tree a wrapper around its DataLoader."""
        return self.grid.train_loaders[0]

    @property
    def test_loader(self):
        """The test batches, in a fixed order, without augmentation."""
        return self.grid.data.test_loader
