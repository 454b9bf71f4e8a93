"""MobileNetV1 (Howard et al. 2017), width 1.0, as mdistiller defines it for its ImageNet pair
ResNet-50 -> MobileNetV1 (``mdistiller/models/imagenet/mobilenetv1.py``).

One ``model`` Sequential: a 3x3 stride-2 conv-BN-ReLU stem to 32 channels (``model.0``), then 13
depthwise-separable blocks ``model.1`` .. ``model.13``, each a 3x3 depthwise conv-BN-ReLU followed by
a 1x1 pointwise conv-BN-ReLU (indices ``.0 .1`` and ``.3 .4`` inside the block), widths
64-128-128-256-256-512 (x6)-1024-1024, then global average pooling and ``fc`` (1024 -> classes).
No conv has a bias. The parameter and buffer names are mdistiller's, so its checkpoints load
unchanged; 4,231,976 parameters at 1000 classes, the published count of MobileNet 1.0-224.

mdistiller pools with a fixed ``AvgPool2d(7)`` at ``model.14``, which only fits 224-px input; here
the pooling is adaptive (the same numbers at 224 px, and no parameters either way), so smaller
inputs work too. mdistiller's ``fc`` is always 1000-way; ``num_classes`` sets it here.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._registry import register_model

__all__ = ["MobileNetV1"]

# (output channels, stride) of the 13 depthwise-separable blocks
_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
           (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def _stem(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),  # depthwise
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False),  # pointwise
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """mdistiller's ImageNet MobileNetV1 (width 1.0); ``forward`` returns logits only.

    Initialisation is PyTorch's default for every layer, as in mdistiller (which sets none)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [_stem(3, 32, 2)]
        cin = 32
        for cout, stride in _BLOCKS:
            layers.append(_separable(cin, cout, stride))
            cin = cout
        layers.append(nn.AdaptiveAvgPool2d(1))  # mdistiller: AvgPool2d(7), the same at 224 px
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.model(x).flatten(1))


@register_model("MobileNetV1")
def mobilenetv1(num_classes: int = 1000, **kwargs) -> MobileNetV1:
    """MobileNetV1 1.0 for ImageNet (mdistiller ``MobileNetV1``: 4,231,976 parameters at 1000 classes)."""
    return MobileNetV1(num_classes=num_classes, **kwargs)
