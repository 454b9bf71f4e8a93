"""Small models for small images (Fashion-MNIST, digits, quick tests): any channel count or size."""

from __future__ import annotations

from torch import Tensor, nn

from ._registry import register_model


class ConvNet(nn.Module):
    """Three 3x3 conv-BN-ReLU stages (width w, 2w, 4w), two 2x2 poolings, global pooling, linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


class MLP(nn.Module):
    """Average-pool to 7x7, flatten, one hidden layer: a deliberately weak student."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.AdaptiveAvgPool2d(7), nn.Flatten(),
            nn.Linear(in_channels * 49, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register_model("convnet")
def convnet(num_classes: int = 10, in_channels: int = 3, width: int = 32) -> ConvNet:
    return ConvNet(num_classes, in_channels, width)


@register_model("mlp")
def mlp(num_classes: int = 10, in_channels: int = 3, hidden: int = 128) -> MLP:
    return MLP(num_classes, in_channels, hidden)
