"""Host distillation losses, one file per method, registered by name."""

from .base import HOSTS, NEEDS, Distill, HostLoss, make_host, register_host
from .ctkd import CTKD
from .dist import DIST
from .dkd import DKD
from .kd import KD
from .ls import DKDLS, KDLS, Standardized, standardize
from .mlkd import MLKD
from .nkd import NKD
from .rld import RLD
from .swap import SLD, LabelSwapKD

__all__ = ["HOSTS", "NEEDS", "HostLoss", "register_host", "make_host", "Distill", "KD", "DKD", "NKD", "DIST",
           "CTKD", "MLKD", "RLD", "SLD", "LabelSwapKD", "Standardized", "KDLS", "DKDLS", "standardize"]
