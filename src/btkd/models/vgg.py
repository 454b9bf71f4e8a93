"""VGG with batch norm for CIFAR, the variant of RepDistiller / mdistiller ``models/vgg.py``.

Five conv stages ``block0..block4`` (conv3x3 with bias, BN, ReLU; the stage's last ReLU is applied in
``forward``), 2x2 max pooling after stages 0-2 (and after stage 3 only for 64 px inputs), global average
pooling and a single linear ``classifier`` (no FC stack). As in the KD literature (and mdistiller's model
dict), ``vggN`` here is the reference's ``vggN_bn``. Names match the reference so its checkpoints load.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import init_fan_out
from ._registry import register_model

__all__ = ["VGG", "VGG_CFGS"]

VGG_CFGS: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _make_stage(widths: list[int], in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in widths:
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers[:-1])  # the trailing ReLU is applied in forward


class VGG(nn.Module):
    """CIFAR VGG built from a five-stage width config (see ``VGG_CFGS``)."""

    def __init__(self, cfg: list[list[int]], batch_norm: bool = True, num_classes: int = 100):
        super().__init__()
        in_ch = [3] + [stage[-1] for stage in cfg[:-1]]
        self.block0 = _make_stage(cfg[0], in_ch[0], batch_norm)
        self.block1 = _make_stage(cfg[1], in_ch[1], batch_norm)
        self.block2 = _make_stage(cfg[2], in_ch[2], batch_norm)
        self.block3 = _make_stage(cfg[3], in_ch[3], batch_norm)
        self.block4 = _make_stage(cfg[4], in_ch[4], batch_norm)
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(cfg[4][-1], num_classes)

        init_fan_out(self)

    def forward(self, x: Tensor) -> Tensor:
        h = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if h == 64:
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        x = self.pool4(x).flatten(1)
        return self.classifier(x)


@register_model("vgg8")
def vgg8(num_classes: int = 100, **kwargs) -> VGG:
    """VGG-8 with BN, config "S" (RepDistiller/mdistiller ``vgg8_bn``)."""
    return VGG(VGG_CFGS["S"], batch_norm=True, num_classes=num_classes, **kwargs)


@register_model("vgg11")
def vgg11(num_classes: int = 100, **kwargs) -> VGG:
    """VGG-11 with BN, config "A" (RepDistiller/mdistiller ``vgg11_bn``)."""
    return VGG(VGG_CFGS["A"], batch_norm=True, num_classes=num_classes, **kwargs)


@register_model("vgg13")
def vgg13(num_classes: int = 100, **kwargs) -> VGG:
    """VGG-13 with BN, config "B" (RepDistiller/mdistiller ``vgg13_bn``)."""
    return VGG(VGG_CFGS["B"], batch_norm=True, num_classes=num_classes, **kwargs)


@register_model("vgg16")
def vgg16(num_classes: int = 100, **kwargs) -> VGG:
    """VGG-16 with BN, config "D" (RepDistiller/mdistiller ``vgg16_bn``)."""
    return VGG(VGG_CFGS["D"], batch_norm=True, num_classes=num_classes, **kwargs)


@register_model("vgg19")
def vgg19(num_classes: int = 100, **kwargs) -> VGG:
    """VGG-19 with BN, config "E" (RepDistiller/mdistiller ``vgg19_bn``)."""
    return VGG(VGG_CFGS["E"], batch_norm=True, num_classes=num_classes, **kwargs)
