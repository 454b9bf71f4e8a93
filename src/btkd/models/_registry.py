"""The model registry: a name -> builder mapping filled by ``@register_model``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from .._checks import same_definition

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder ``fn(num_classes=100, **kwargs) -> nn.Module`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        old = MODELS.get(name)
        # the same definition run again (a notebook cell re-run) replaces itself; another one is refused
        if old is not None and old is not fn and not same_definition(old, fn):
            raise ValueError(f"model {name!r} is already registered ({old.__module__}.{old.__qualname__}); "
                             "pick another name")
        MODELS[name] = fn
        return fn

    return deco
