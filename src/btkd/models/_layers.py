"""Pieces several model families share."""

from __future__ import annotations

import math

from torch import Tensor, nn


class ShuffleBlock(nn.Module):
    """Channel shuffle with ``groups`` groups: [N, g*k, H, W] -> [N, k*g, H, W] (no parameters)."""

    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = self.groups
        return x.reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


def init_fan_out(model: nn.Module) -> None:
    """The reference initialisation of VGG and MobileNetV2: conv N(0, sqrt(2 / fan_out)), BN 1/0,
    linear N(0, 0.01)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def resnet_stage(block, inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` residual blocks, the first with ``stride`` and a 1x1 conv + BN shortcut when the shape
    changes (state-dict names ``<i>.downsample.0`` / ``.1``, as torchvision and RepDistiller name them).
    ``block(inplanes, planes, stride=1, downsample=None)`` with a class attribute ``expansion``."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out))
    return nn.Sequential(block(inplanes, planes, stride, downsample), *(block(out, planes) for _ in range(1, blocks)))
