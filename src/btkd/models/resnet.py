"""CIFAR ResNets (He et al. 2016), the variant of RepDistiller / mdistiller ``models/resnet.py``.

Post-activation basic blocks, three stages at 32/16/8 px, 8x8 average pooling, ``fc`` head.
``resnetN`` uses widths 16-16-32-64; the ``x4`` models use 32-64-128-256.
Parameter and buffer names match the reference so its checkpoints load unchanged.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import resnet_stage
from ._registry import register_model

__all__ = ["BasicBlock", "ResNet"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (optionally projected) input, then ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2`` with stage widths ``num_filters`` (stem, stage1..3)."""

    def __init__(self, depth: int, num_filters: list[int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 (e.g. 8, 20, 32, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(num_filters[1], n, stride=1)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        stage = resnet_stage(BasicBlock, self.inplanes, planes, blocks, stride)
        self.inplanes = planes * BasicBlock.expansion
        return stage

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


_NARROW = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]


@register_model("resnet8")
def resnet8(num_classes: int = 100, **kwargs) -> ResNet:
    """ResNet-8, widths 16-16-32-64 (RepDistiller/mdistiller ``resnet8``)."""
    return ResNet(8, _NARROW, num_classes=num_classes, **kwargs)


@register_model("resnet14")
def resnet14(num_classes: int = 100, **kwargs) -> ResNet:
    """ResNet-14, widths 16-16-32-64 (RepDistiller/mdistiller ``resnet14``)."""
    return ResNet(14, _NARROW, num_classes=num_classes, **kwargs)


@register_model("resnet20")
def resnet20(num_classes: int = 100, **kwargs) -> ResNet:
    """ResNet-20, widths 16-16-32-64 (RepDistiller/mdistiller ``resnet20``)."""
    return ResNet(20, _NARROW, num_classes=num_classes, **kwargs)


@register_model("resnet32")
def resnet32(num_classes: int = 100, **kwargs) -> ResNet:
    """ResNet-32, widths 16-16-32-64 (RepDistiller/mdistiller ``resnet32``)."""
    return ResNet(32, _NARROW, num_classes=num_classes, **kwargs)


@register_model("resnet44")
def resnet44(num_classes: int = 100, **kwargs) -> ResNet:
    """ResNet-44, widths 16-16-32-64 (RepDistiller/mdistiller ``resnet44``)."""
    return ResNet(44, _NARROW, num_classes=num_classes, **kwargs)


@register_model("resnet56")
def resnet56(num_classes: int = 100, **kwargs) -> ResNet:
    """ResNet-56, widths 16-16-32-64 (RepDistiller/mdistiller ``resnet56``)."""
    return ResNet(56, _NARROW, num_classes=num_classes, **kwargs)


@register_model("resnet110")
def resnet110(num_classes: int = 100, **kwargs) -> ResNet:
    """ResNet-110, widths 16-16-32-64 (RepDistiller/mdistiller ``resnet110``)."""
    return ResNet(110, _NARROW, num_classes=num_classes, **kwargs)


@register_model("resnet8x4")
def resnet8x4(num_classes: int = 100, **kwargs) -> ResNet:
    """ResNet-8 at 4x width, 32-64-128-256 (RepDistiller/mdistiller ``resnet8x4``)."""
    return ResNet(8, _WIDE, num_classes=num_classes, **kwargs)


@register_model("resnet32x4")
def resnet32x4(num_classes: int = 100, **kwargs) -> ResNet:
    """ResNet-32 at 4x width, 32-64-128-256 (RepDistiller/mdistiller ``resnet32x4``)."""
    return ResNet(32, _WIDE, num_classes=num_classes, **kwargs)
