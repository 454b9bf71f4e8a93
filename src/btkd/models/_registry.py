"""The model registry: a name -> builder mapping filled by ``@register_model``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from .._checks import same_definition

#: name -> builder ``(num_classes=..., **options) -> nn.Module``: the models `build_model` and a
#: config's ``model.student`` / ``model.teacher`` can name. Filled by `register_model`.
MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder ``fn(num_classes=100, **kwargs) -> nn.Module`` under ``name``.

    A decorator; it returns the builder unchanged. The trainer calls it with ``num_classes`` (the
    dataset's), ``in_channels`` when the images are not 3-channel (so take ``in_channels`` if the
    model can), and the config's ``model.student_options`` / ``model.teacher_options``. The model's
    ``forward`` must return logits ``[N, num_classes]``. Running the same definition again (a
    notebook cell) replaces it; another builder under a taken name is a ValueError."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        old = MODELS.get(name)
        # the same definition run again (a notebook cell re-run) replaces itself; another one is refused
        if old is not None and old is not fn and not same_definition(old, fn):
            raise ValueError(f"model {name!r} is already registered ({old.__module__}.{old.__qualname__}); "
                             "pick another name")
        MODELS[name] = fn
        return fn

    return deco
