"""Host distillation losses, one file per method, registered by name."""

from .base import HOSTS, Distill, HostLoss, make_host, register_host
from .dkd import DKD
from .kd import KD

__all__ = ["HOSTS", "HostLoss", "register_host", "make_host", "Distill", "KD", "DKD"]
