"""ImageNet ResNets (He et al. 2016) with torchvision's architecture and state-dict names.

``resnet18`` / ``resnet34`` (basic blocks) and ``resnet50`` (bottlenecks, stride on the 3x3 conv: the
"v1.5" variant torchvision ships): a 7x7 stride-2 stem with 3x3 max pooling, four stages of widths
64-128-256-512 (x4 for bottlenecks), global average pooling and an ``fc`` head. Parameter and
buffer names are torchvision's (``conv1``, ``bn1``, ``layer1..4.<i>.conv1/bn1/conv2/bn2(/conv3/bn3)``,
``downsample.0/.1``, ``fc``), so torchvision's published ImageNet weights, the teachers mdistiller
uses for its ImageNet pairs, load unchanged with :func:`btkd.models.load_checkpoint`. The pooling is
adaptive, so any input of at least 32x32 pixels works (224 is the ImageNet recipe's).
"""

from __future__ import annotations

from typing import Type, Union

from torch import Tensor, nn

from ._layers import resnet_stage
from ._registry import register_model
from .resnet import BasicBlock  # the same block, names and forward as torchvision's BasicBlock

__all__ = ["Bottleneck", "ImageNetResNet", "TORCHVISION_WEIGHTS"]

# torchvision's published ImageNet weights (IMAGENET1K_V1) of each model, at download.pytorch.org/models/<file>:
# the teachers the ImageNet configs expect (their own runs do not train one)
TORCHVISION_WEIGHTS = {"resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth",
                       "resnet50": "resnet50-0676ba61.pth"}


class Bottleneck(nn.Module):
    """1x1 reduce - 3x3 (carrying the stride) - 1x1 expand by 4, each with BN, plus the (optionally
    projected) input, then ReLU: torchvision's ``Bottleneck``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        out = planes * self.expansion
        # attribute order fixes the state-dict order: torchvision's
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ImageNetResNet(nn.Module):
    """torchvision's ResNet: ``block`` repeated ``layers[i]`` times in stage ``i``.

    Initialisation as torchvision's default: convolutions Kaiming-normal (fan_out, ReLU), BN weight 1
    and bias 0, the ``fc`` layer PyTorch's default; ``zero_init_residual=True`` zeroes the last BN of
    each residual branch (torchvision's option of the same name).
    """

    def __init__(self, block: Block, layers: list[int], num_classes: int = 1000, zero_init_residual: bool = False):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must give the block count of 4 stages, got {layers}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        stage = resnet_stage(block, self.inplanes, planes, blocks, stride)
        self.inplanes = planes * block.expansion
        return stage

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("resnet18")
def resnet18(num_classes: int = 1000, **kwargs) -> ImageNetResNet:
    """ResNet-18 for ImageNet (torchvision ``resnet18``: 11,689,512 parameters at 1000 classes)."""
    return ImageNetResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kwargs)


@register_model("resnet34")
def resnet34(num_classes: int = 1000, **kwargs) -> ImageNetResNet:
    """ResNet-34 for ImageNet (torchvision ``resnet34``: 21,797,672 parameters at 1000 classes)."""
    return ImageNetResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, **kwargs)


@register_model("resnet50")
def resnet50(num_classes: int = 1000, **kwargs) -> ImageNetResNet:
    """ResNet-50 for ImageNet (torchvision ``resnet50``: 25,557,032 parameters at 1000 classes)."""
    return ImageNetResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, **kwargs)
