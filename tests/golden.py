"""Golden values: every loss on one fixed input, computed once and stored in fixtures/golden_losses.json.

Regenerate only when a change of value is intended: ``python tests/golden.py --write``.
"""

import json
import sys
from pathlib import Path

import torch

from btkd import AUTHORS_WEIGHTS, BTKD, DKD, KD, Distill

FIXTURE = Path(__file__).parent / "fixtures" / "golden_losses.json"

CASES = {
    "kd_host": lambda: KD(tau=4.0),
    "dkd_host": lambda: DKD(alpha=1.0, beta=8.0, tau=4.0, warmup=20),
    "distill_kd": lambda: Distill("kd"),
    "distill_dkd": lambda: Distill("dkd", beta=2.0),
    "btkd_kd_swap": lambda: BTKD("kd", **AUTHORS_WEIGHTS),
    "btkd_kd_reweight": lambda: BTKD("kd", **AUTHORS_WEIGHTS, rectify="reweight"),
    "btkd_kd_none": lambda: BTKD("kd", **AUTHORS_WEIGHTS, rectify="none"),
    "btkd_kd_batch": lambda: BTKD("kd", **AUTHORS_WEIGHTS, reduction="batch"),
    "btkd_kd_nosplit": lambda: BTKD("kd", **AUTHORS_WEIGHTS, split=False),
    "btkd_kd_linear_iter": lambda: BTKD("kd", **AUTHORS_WEIGHTS, schedule="linear_iter"),
    "btkd_dkd_swap": lambda: BTKD("dkd", ce_weight=1.0, kd_weight=1.0, beta=8.0),
}
EPOCH, EPOCHS = 7.5, 20


def make_input():
    g = torch.Generator().manual_seed(1234)
    n, c = 16, 10
    return {
        "student": (torch.randn(n, c, generator=g) * 3).tolist(),
        "teacher": (torch.randn(n, c, generator=g) * 3).tolist(),
        "labels": torch.randint(0, c, (n,), generator=g).tolist(),
    }


def compute(inputs):
    s, t, y = torch.tensor(inputs["student"]), torch.tensor(inputs["teacher"]), torch.tensor(inputs["labels"])
    values = {}
    for name, make in CASES.items():
        out = make()(s, t, y, epoch=EPOCH, epochs=EPOCHS)
        if isinstance(out, dict):
            values[name] = {k: float(v) for k, v in out.items()}
        else:
            values[name] = {"per_sample": out.tolist()}
    return values


if __name__ == "__main__" and "--write" in sys.argv:
    inputs = make_input()
    FIXTURE.write_text(json.dumps({"epoch": EPOCH, "epochs": EPOCHS, "input": inputs, "values": compute(inputs)}, indent=1))
    print(f"wrote {FIXTURE}")
