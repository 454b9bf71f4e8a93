"""What each CIFAR-100 model weighs on a GPU window's way back, and what its forward costs.

    python benchmarks/cifar100/sizes.py

Per model: parameters; forward GFLOP per 32x32 image (torch.utils.flop_counter: a multiply-add is
2 FLOP); its published weights in half precision (MiB, and the files `save_half` makes: 15 MiB
shards); and a paused single run's checkpoint in fp32 weights + SGD momentum (MiB, and the
15 MiB parts unit.sh returns). A paused bench holds one such state per member. Computed here from
the models themselves, no GPU needed.
"""

import io
import math
import sys

import torch
from safetensors.torch import save
from torch.utils.flop_counter import FlopCounterMode

from btkd.models import build_model
from btkd.weights import MAX_FILE_BYTES

MODELS = ("resnet32x4", "wrn_40_2", "vgg13", "resnet56", "resnet110", "resnet8x4", "wrn_16_2", "wrn_40_1", "vgg8",
          "resnet20", "resnet32", "ShuffleV2", "MobileNetV2")
MIB = 1024 * 1024
PART = 15 * MIB  # unit.sh: split -b 15M


def figures(name: str) -> dict:
    model = build_model(name, num_classes=100).eval()
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    state = model.state_dict()
    half = len(save({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}))
    params = sum(p.numel() for p in model.parameters())
    buf = io.BytesIO()  # weights and buffers, plus one momentum tensor per parameter, as torch.save writes them
    torch.save({"model": state, "momentum": [torch.zeros_like(p) for p in model.parameters()]}, buf)
    ckpt = buf.getbuffer().nbytes
    return {"params_m": params / 1e6, "gflop": flops.get_total_flops() / 1e9, "half_mib": half / MIB,
            "half_files": max(1, math.ceil(half / (MAX_FILE_BYTES - 64 * 1024))), "ckpt_mib": ckpt / MIB,
            "ckpt_parts": math.ceil(ckpt / PART)}


def main() -> int:
    print("| model | params (M) | forward GFLOP / image | half-precision weights (MiB, files) | paused run: "
          "checkpoint (MiB, 15 MiB parts) |")
    print("|---|---|---|---|---|")
    for name in MODELS:
        f = figures(name)
        print(f"| {name} | {f['params_m']:.2f} | {f['gflop']:.3f} | {f['half_mib']:.1f}, {f['half_files']} | "
              f"{f['ckpt_mib']:.1f}, {f['ckpt_parts']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
