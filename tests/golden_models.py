"""Golden forwards of the model zoo: every registered model, built from a fixed seed, on a fixed input,
stored once in fixtures/model_outputs.json (tests/test_models.py compares against it).

The parameter counts and state-dict layouts pin every layer's shape, but not how the layers are wired:
a stride moved to another conv, a ReLU dropped or added, BN and ReLU swapped, a shortcut taken from the
wrong tensor, a channel shuffle or a concatenation in another order, or another pooling all keep both.
A forward on fixed weights and input changes with any of them. The forward runs in training mode, so
BatchNorm uses the batch's statistics: a BN left out changes the output (in eval mode, a fresh BN is the
identity), whatever the weights' scale.

The values were written from models checked line by line against RepDistiller / mdistiller
(``models/*.py``), torchvision (ResNet-18/34/50) and mdistiller's ImageNet MobileNetV1. Regenerate only
when a change of output is intended: ``python tests/golden_models.py --write``.
"""

import json
import sys
from pathlib import Path

import torch

from btkd.models import MODELS, build_model

FIXTURE = Path(__file__).parent / "fixtures" / "model_outputs.json"
IMAGENET = {"resnet18", "resnet34", "resnet50", "MobileNetV1"}
NUM_CLASSES = 10


def input_size(name: str) -> int:
    return 64 if name in IMAGENET else 32  # 64 px: the ImageNet models' last stage is still 2x2


def forward(name: str) -> torch.Tensor:
    """The logits [4, NUM_CLASSES] of model ``name`` built under seed 0, in training mode, on a seeded batch.

    Every BatchNorm gets a seeded scale in [0.5, 8] and shift in [-1, 1] (a trained network's are far from
    1 and 0): activations then pass 6 often enough that a ReLU6 in place of a ReLU shows, and a ReLU moved
    before or after a BN changes what it cuts."""
    size = input_size(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, size, size, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(name, num_classes=NUM_CLASSES).train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 8.0, generator=g)
                m.bias.uniform_(-1.0, 1.0, generator=g)
        return model(x)


if __name__ == "__main__" and "--write" in sys.argv:
    names = sorted(n for n, fn in MODELS.items() if fn.__module__.startswith("btkd.models."))
    rows = [f"  {json.dumps(n)}: {json.dumps([[round(v, 6) for v in r] for r in forward(n).tolist()])}" for n in names]
    FIXTURE.write_text(f'{{"num_classes": {NUM_CLASSES}, "logits": {{\n' + ",\n".join(rows) + "\n}}\n")
    print(f"wrote {FIXTURE}")
