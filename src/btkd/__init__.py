"""btkd: knowledge distillation without the teacher's bias.

The core (``bias``, ``schedules``, ``losses``, ``strategy``) is pure tensor code; the trainer, data,
models and CLI sit on top of it.
"""

from . import models  # btkd.models.register_model / build_model after a plain `import btkd`
from ._checks import DamagedFileError
from .bias import rectify, rectify_reweight, rectify_swap, teacher_right
from .losses import (CTKD, DIST, DKD, DKDLS, HOSTS, KD, KDLS, MLKD, NKD, RLD, SLD, Distill, HostLoss, LabelSwapKD,
                     Standardized, make_host, register_host)
from .schedules import Balancer, Constant, Cos2, DynamicBalancer, Linear, Step, cos2_weight, make_schedule
from .strategy import AUTHORS_WEIGHTS, BTKD

__version__ = "0.1.0"

__all__ = [
    "BTKD", "AUTHORS_WEIGHTS", "Distill", "DamagedFileError", "HostLoss", "KD", "DKD", "HOSTS", "register_host", "make_host",
    "NKD", "DIST", "CTKD", "MLKD", "RLD", "SLD", "LabelSwapKD", "Standardized", "KDLS", "DKDLS",
    "teacher_right", "rectify_swap", "rectify_reweight", "rectify",
    "cos2_weight", "make_schedule", "Cos2", "Linear", "Constant", "Step", "Balancer", "DynamicBalancer",
]
