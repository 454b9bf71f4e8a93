"""Write the built-in CIFAR-100 configs (src/btkd/configs/cifar100/) from the standard recipe.

Run from the repo root: ``python scripts/make_configs.py``. The files are committed; this script
documents where every number in them comes from (docs/BENCHMARKS.md of the project's spec).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "btkd" / "configs" / "cifar100"

BASE = """\
# The standard CIFAR-100 recipe (RepDistiller -> mdistiller): SGD momentum 0.9, batch 64, 240 epochs,
# lr 0.05 decayed x0.1 at epochs 150/180/210, weight decay 5e-4, random crop 32 pad 4 + flip.
data:
  name: cifar100
  batch_size: 64
  crop_padding: 4
  flip: true
optim:
  epochs: 240
  lr: 0.05
  momentum: 0.9
  weight_decay: 5.0e-4
  lr_schedule: multistep
  milestones: [150, 180, 210]
  gamma: 0.1
"""

TEACHERS = ["resnet32x4", "wrn_40_2", "resnet56", "resnet110", "vgg13"]

# (folder name, teacher, student, DKD beta, student lr)
PAIRS = [
    ("res32x4_res8x4", "resnet32x4", "resnet8x4", 8.0, 0.05),
    ("wrn40_2_wrn16_2", "wrn_40_2", "wrn_16_2", 6.0, 0.05),
    ("wrn40_2_wrn40_1", "wrn_40_2", "wrn_40_1", 6.0, 0.05),
    ("res56_res20", "resnet56", "resnet20", 2.0, 0.05),
    ("res110_res32", "resnet110", "resnet32", 2.0, 0.05),
    ("vgg13_vgg8", "vgg13", "vgg8", 6.0, 0.05),
    ("res32x4_shuv2", "resnet32x4", "ShuffleV2", 8.0, 0.01),
    ("vgg13_mv2", "vgg13", "MobileNetV2", 6.0, 0.01),
]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> None:
    write(ROOT / "_base.yaml", BASE)
    for t in TEACHERS:
        write(ROOT / "teachers" / f"{t}.yaml", f"""\
# Teacher {t}: the standard recipe, cross-entropy only.
inherit: ../_base.yaml
name: teacher_{t}
model:
  student: {t}
distill:
  method: ce
""")
    for pair, teacher, student, dkd_beta, lr in PAIRS:
        ckpt = f"runs/teacher_{teacher}/best.safetensors"  # where `btkd train cifar100/teachers/...` puts it
        head = f"""\
inherit: ../_base.yaml
model:
  student: {student}
  teacher: {teacher}
  # A `btkd train` teacher (its run folder's best.safetensors) or a published mdistiller/RepDistiller .pth
  teacher_checkpoint: {ckpt}
optim:
  lr: {lr}
"""
        write(ROOT / "kd" / f"{pair}.yaml", f"""\
# KD (Hinton): tau 4, CE weight 0.1, KD weight 0.9.
{head}name: kd_{pair}
distill:
  method: kd
  ce_weight: 0.1
  kd_weight: 0.9
  options: {{tau: 4.0}}
""")
        write(ROOT / "dkd" / f"{pair}.yaml", f"""\
# DKD: CE 1, alpha 1, beta {dkd_beta:g}, tau 4, loss ramped linearly over the first 20 epochs.
{head}name: dkd_{pair}
distill:
  method: dkd
  ce_weight: 1.0
  kd_weight: 1.0
  options: {{alpha: 1.0, beta: {dkd_beta}, tau: 4.0, warmup: 20}}
""")
        for host in ("kd", "dkd"):
            write(ROOT / f"{host}_btkd" / f"{pair}.yaml", f"""\
# {host.upper()} + BTKD: the host's own recipe, wrapped in BTKD with the spec's defaults
# (swap rectification, subset means, cos^2 per-epoch schedule).
inherit: ../{host}/{pair}.yaml
name: {host}_btkd_{pair}
distill:
  btkd:
    enabled: true
    rectify: swap
    reduction: subset
    schedule: cos2
""")


if __name__ == "__main__":
    main()
