"""ShuffleNet V1 (Zhang et al. 2018), the CIFAR variant of RepDistiller / mdistiller ``ShuffleNetv1.py``.

1x1 stem to 24 channels (no downsampling), three stages of grouped bottlenecks (g=3, widths 240-480-960,
4-8-4 blocks, each stage opening with a stride-2 block whose avg-pooled input is concatenated),
4x4 average pooling and a ``linear`` head. Names match the reference so its checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import ShuffleBlock
from ._registry import register_model

__all__ = ["ShuffleBlock", "ShuffleBottleneck", "ShuffleNet"]


class ShuffleBottleneck(nn.Module):
    """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1; add (stride 1) or concat pooled input (stride 2)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        g = 1 if in_planes == 24 else groups  # the first block after the stem uses an ungrouped 1x1
        self.conv1 = nn.Conv2d(in_planes, mid, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        out = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(out)


class ShuffleNet(nn.Module):
    """CIFAR ShuffleNet V1 from stage widths ``out_planes``, depths ``num_blocks`` and ``groups``."""

    def __init__(self, out_planes: list[int], num_blocks: list[int], groups: int, num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            if i == 0:  # stride 2; the pooled input is concatenated, so the branch makes the rest
                layers.append(ShuffleBottleneck(self.in_planes, out_planes - self.in_planes, 2, groups))
            else:
                layers.append(ShuffleBottleneck(self.in_planes, out_planes, 1, groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, 4).flatten(1)
        return self.linear(out)


@register_model("ShuffleV1")
def shufflev1(num_classes: int = 100, **kwargs) -> ShuffleNet:
    """ShuffleNet V1, g=3, widths 240-480-960 (RepDistiller/mdistiller ``ShuffleV1``)."""
    return ShuffleNet([240, 480, 960], [4, 8, 4], groups=3, num_classes=num_classes, **kwargs)
