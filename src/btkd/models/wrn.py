"""Wide ResNets (Zagoruyko & Komodakis 2016), the variant of RepDistiller / mdistiller ``models/wrn.py``.

Pre-activation blocks grouped as ``blockK.layer.i``; a 1x1 ``convShortcut`` where the width changes,
a final BN-ReLU (``bn1``), 8x8 average pooling and an ``fc`` head. ``wrn_D_W`` has depth D, widen factor W.
Parameter and buffer names match the reference so its checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model

__all__ = ["WideBasicBlock", "NetworkBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1-conv shortcut.

    As in the reference, when the width changes the shortcut projects the *pre-activated* input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of ``nb_layers`` blocks held in ``self.layer`` (the reference's key layout)."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs; depth must be ``6n + 4``."""

    def __init__(self, depth: int, widen_factor: int = 1, num_classes: int = 100, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n+4 (e.g. 16, 40), got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8).flatten(1)
        return self.fc(out)


@register_model("wrn_16_1")
def wrn_16_1(num_classes: int = 100, **kwargs) -> WideResNet:
    """WRN-16-1 (RepDistiller/mdistiller ``wrn_16_1``)."""
    return WideResNet(16, 1, num_classes=num_classes, **kwargs)


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int = 100, **kwargs) -> WideResNet:
    """WRN-16-2 (RepDistiller/mdistiller ``wrn_16_2``)."""
    return WideResNet(16, 2, num_classes=num_classes, **kwargs)


@register_model("wrn_40_1")
def wrn_40_1(num_classes: int = 100, **kwargs) -> WideResNet:
    """WRN-40-1 (RepDistiller/mdistiller ``wrn_40_1``)."""
    return WideResNet(40, 1, num_classes=num_classes, **kwargs)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int = 100, **kwargs) -> WideResNet:
    """WRN-40-2 (RepDistiller/mdistiller ``wrn_40_2``)."""
    return WideResNet(40, 2, num_classes=num_classes, **kwargs)
