"""MobileNetV2 (Sandler et al. 2018), the CIFAR variant of RepDistiller / mdistiller ``mobilenetv2.py``.

``MobileNetV2`` is the reference's ``mobile_half`` = ``mobilenetv2_T_w(6, 0.5)``: expansion 6, width 0.5,
a stride-2 stem, every inverted residual keeps its 1x1 expansion conv (even at t=1), a 1x1 conv to 1280
channels, 2x2 average pooling and ``classifier.0``. Names match the reference so its checkpoints load.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._layers import init_fan_out
from ._registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2"]


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection, with identity shortcut when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 with expansion ``T`` and width multiplier ``width_mult``."""

    def __init__(self, T: int = 6, width_mult: float = 0.5, num_classes: int = 100, input_size: int = 32):
        super().__init__()
        if input_size % 32 != 0:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        setting = [  # t, c, n, s
            [1, 16, 1, 1],
            [T, 24, 2, 1],
            [T, 32, 3, 2],
            [T, 64, 4, 2],
            [T, 96, 3, 1],
            [T, 160, 3, 2],
            [T, 320, 1, 1],
        ]
        in_ch = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_ch, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in setting:
            out_ch = int(c * width_mult)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
            self.blocks.append(nn.Sequential(*stage))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_ch, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)

        init_fan_out(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        for stage in self.blocks:
            out = stage(out)
        out = self.avgpool(self.conv2(out)).flatten(1)
        return self.classifier(out)


@register_model("MobileNetV2")
def mobilenetv2(num_classes: int = 100, **kwargs) -> MobileNetV2:
    """MobileNetV2 x0.5, T=6 (RepDistiller/mdistiller ``mobile_half`` = ``mobilenetv2_T_w(6, 0.5)``)."""
    return MobileNetV2(T=6, width_mult=0.5, num_classes=num_classes, **kwargs)
