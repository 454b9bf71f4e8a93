"""Write the built-in configs (src/btkd/configs/) from the standard CIFAR-100 recipe:
teachers, the eight standard pairs with KD, DKD, KD+BTKD and DKD+BTKD, a bench per pair and the
BTKD ablations on resnet32x4 -> resnet8x4; and the Fashion-MNIST and CIFAR-100 (cifar100/cpu/)
settings sized for a CPU.

CIFAR-10 (src/btkd/configs/cifar10/): the teachers, the eight pairs with KD, DKD, KD+BTKD, DKD+BTKD
and the student alone, with the CIFAR-100 recipe unchanged (see CIFAR10_BASE for why).

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
        ckpt = f"runs/teacher_{teacher}/last.safetensors"  # the last epoch of `btkd train cifar100/teachers/...`
        head = f"""\
inherit: ../_base.yaml
model:
  student: {student}
  teacher: {teacher}
  # A `btkd train` teacher (its run folder's last-epoch weights: choosing the best test epoch would leak the
  # test set into every student) or a published mdistiller/RepDistiller .pth
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
        write_bench(pair, teacher, student, dkd_beta)
        write_other_hosts(pair, teacher, student, dkd_beta, lr)
    write_ablations("res32x4_res8x4", "resnet32x4", "resnet8x4")
    write_hosts_bench("res32x4_res8x4", "resnet32x4", "resnet8x4", 8.0)
    write_fashion_mnist()
    write_cifar100_cpu()
    write_cifar10()


# Logit standardisation per pair, as the runs behind its authors' CIFAR-100 numbers (docs/BENCHMARKS.md)
# were made: their log files are named KD_TYPE,TEACHER,STUDENT,BASE_TEMPERATURE,KD_WEIGHT[,DKD.BETA],
# and their tools/train.py multiplies DKD's alpha (1) and beta by the KD weight. KD+LS: (base tau,
# KD weight); DKD+LS: (base tau, KD weight, DKD beta before that product; None: DKD's own for the pair).
# res56_res20 has two DKD+LS logs (3,12,2.0 best 72.27 and 3,18,2.0 best 72.24, against 72.32
# reported): the first is taken.
LS_RECIPE = {
    "res32x4_res8x4": ((2.0, 9.0), (2.0, 9.0, None)),
    "wrn40_2_wrn16_2": ((2.0, 9.0), (2.0, 12.0, 2.0)),
    "wrn40_2_wrn40_1": ((2.0, 9.0), (2.0, 12.0, 2.0)),
    "res56_res20": ((2.0, 9.0), (3.0, 12.0, 2.0)),
    "res110_res32": ((2.0, 9.0), (2.0, 15.0, 2.0)),
    "vgg13_vgg8": ((3.0, 9.0), (2.0, 15.0, 2.0)),
    "res32x4_shuv2": ((2.0, 9.0), (2.0, 9.0, None)),
    "vgg13_mv2": ((3.0, 9.0), (3.0, 9.0, 2.0)),
}


# The other hosts, each with its paper's CIFAR-100 recipe: (name, distill section without btkd, comment).
def other_hosts(pair: str, dkd_beta: float):
    (kd_tau, kd_weight), (dkd_tau, dkd_weight, ls_beta) = LS_RECIPE[pair]
    beta = dkd_beta if ls_beta is None else ls_beta
    return [
        ("kd_ls", f"method: kd_ls, ce_weight: 0.1, kd_weight: {kd_weight}, options: {{tau: {kd_tau}}}",
         f"KD + logit standardisation (Sun et al., CVPR 2024): base tau {kd_tau:g}, KD weight {kd_weight:g}, CE 0.1 "
         "(the authors' run for this pair)."),
        ("dkd_ls", f"method: dkd_ls, ce_weight: 1.0, kd_weight: 1.0, options: {{alpha: {dkd_weight}, "
         f"beta: {dkd_weight * beta}, tau: {dkd_tau}, warmup: 20}}",
         f"DKD + logit standardisation: alpha 1 and beta {beta:g} times the KD weight {dkd_weight:g}, base tau "
         f"{dkd_tau:g} (the authors' run for this pair)."),
        ("nkd", "method: nkd, ce_weight: 1.0, kd_weight: 1.0, options: {tau: 3.0, gamma: 3.5}",
         "NKD, normalized KD (Yang et al., ICCV 2023): tau 3, gamma 3.5 (the authors' CIFAR-100 setting)."),
        ("dist", "method: dist, ce_weight: 1.0, kd_weight: 1.0, options: {tau: 4.0, beta: 2.0, gamma: 2.0}",
         "DIST (Huang et al., NeurIPS 2022): inter- and intra-class Pearson relations, tau 4, beta = gamma = 2."),
        ("ctkd", "method: ctkd, ce_weight: 0.1, kd_weight: 0.9, options: {variant: global}",
         "CTKD (Li et al., AAAI 2023): KD with a learnable, adversarial temperature (lambda 0 -> 1 over 10 epochs)."),
    ]


# MLKD (Jin et al., CVPR 2023) on a weak and a strong view: the authors' configs use half the usual
# learning rate (CE on two views), and 480 epochs for the two lightweight students: (lr, epochs).
MLKD_RECIPE = {"res32x4_res8x4": (0.025, 240), "wrn40_2_wrn16_2": (0.025, 240), "wrn40_2_wrn40_1": (0.025, 240),
               "res56_res20": (0.025, 240), "res110_res32": (0.025, 240), "vgg13_vgg8": (0.025, 240),
               "res32x4_shuv2": (0.01, 480), "vgg13_mv2": (0.0025, 480)}
TWO_VIEW = {"mlkd", "sld"}  # hosts trained on two views, with MLKD's recipe
MLKD = "method: mlkd, ce_weight: 0.1, kd_weight: 0.9, options: {taus: [2.0, 3.0, 4.0, 5.0, 6.0]}"
MLKD_COMMENT = ("MLKD (Jin et al., CVPR 2023): instance, batch and class alignment at taus 2..6 on a weak and a "
                "strong (RandAugment + Cutout) view;\n# CE 0.1 on each view, distillation 0.9; the authors' "
                "learning rate and epochs for this pair.")

RIVALS = [
    ("label_swap", "method: label_swap, ce_weight: 0.1, kd_weight: 0.9, options: {tau: 4.0}",
     "Label-swap KD: KD on the swap-rectified teacher, every sample, no split, no schedule."),
    ("sld", "method: sld, ce_weight: 0.1, kd_weight: 0.9, options: {student_from: 150, views: 2}",
     "SLD, swapped logit distillation (arXiv 2504.20108) on a weak and a strong view: teacher swap, and the "
     "student's own swap from epoch 150; the authors' learning rate (MLKD's)."),
    ("rld", "method: rld, ce_weight: 1.0, kd_weight: 1.0",
     "RLD, refined logit distillation (arXiv 2408.07703): sample confidence and masked correlation distillation."),
]


def write_other_hosts(pair: str, teacher: str, student: str, dkd_beta: float, lr: float) -> None:
    head = f"""\
inherit: ../_base.yaml
model:
  student: {student}
  teacher: {teacher}
  teacher_checkpoint: runs/teacher_{teacher}/last.safetensors
optim:
  lr: {lr}
"""
    write(ROOT / "ce" / f"{pair}.yaml", f"""\
# The student {student} alone (cross-entropy, no teacher): the baseline row of the {pair} table.
inherit: ../_base.yaml
name: ce_{pair}
model:
  student: {student}
optim:
  lr: {lr}
distill:
  method: ce
""")
    mlkd_lr, mlkd_epochs = MLKD_RECIPE[pair]
    optim = f"optim:\n  lr: {mlkd_lr}\n" + (f"  epochs: {mlkd_epochs}\n" if mlkd_epochs != 240 else "")
    mlkd_head = head.replace(f"optim:\n  lr: {lr}\n", optim)  # the two-view hosts' recipe (MLKD, SLD)
    for name, distill, comment in other_hosts(pair, dkd_beta) + RIVALS:
        write(ROOT / name / f"{pair}.yaml", f"# {comment}\n{mlkd_head if name in TWO_VIEW else head}"
                                            f"name: {name}_{pair}\ndistill: {{{distill}}}\n")
    for name, distill, comment in other_hosts(pair, dkd_beta):
        write(ROOT / f"{name}_btkd" / f"{pair}.yaml", f"""\
# {name.upper()} + BTKD: the host's own recipe, wrapped in BTKD with the spec's defaults.
# {comment}
{head}name: {name}_btkd_{pair}
distill: {{{distill}, btkd: {{enabled: true}}}}
""")
    for name, extra in (("mlkd", ""), ("mlkd_btkd", ", btkd: {enabled: true}")):
        write(ROOT / name / f"{pair}.yaml", f"""\
# {MLKD_COMMENT}{' Wrapped in BTKD: each view split and rectified on its own teacher prediction.' if extra else ''}
{mlkd_head}name: {name}_{pair}
distill: {{{MLKD}{extra}}}
""")


def write_hosts_bench(pair: str, teacher: str, student: str, dkd_beta: float) -> None:
    methods = (method_lines("kd", f"{{{KD}}}") + method_lines("kd_btkd", f"{{{KD}, btkd: {{enabled: true}}}}")
               + method_lines("dkd", f"{{{dkd(dkd_beta)}}}")
               + method_lines("dkd_btkd", f"{{{dkd(dkd_beta)}, btkd: {{enabled: true}}}}"))
    for name, distill, _ in other_hosts(pair, dkd_beta):
        methods += method_lines(name, f"{{{distill}}}") + method_lines(f"{name}_btkd",
                                                                        f"{{{distill}, btkd: {{enabled: true}}}}")
    mlkd_lr = MLKD_RECIPE[pair][0]
    methods += (f"    mlkd: {{distill: {{{MLKD}}}, optim: {{lr: {mlkd_lr}}}}}\n"
                f"    mlkd_btkd: {{distill: {{{MLKD}, btkd: {{enabled: true}}}}, optim: {{lr: {mlkd_lr}}}}}\n")
    for name, distill, _ in RIVALS:
        lr = f", optim: {{lr: {mlkd_lr}}}" if name in TWO_VIEW else ""
        methods += f"    {name}: {{distill: {{{distill}}}{lr}}}\n"
    write(ROOT / "bench" / f"hosts_{pair}.yaml", f"""\
# Every host with and without BTKD, and BTKD's rivals that also repair a wrong teacher (label-swap KD,
# SLD, RLD), on {teacher} -> {student}, the same seeds. MLKD takes its authors' learning rate.
# `btkd bench cifar100/bench/hosts_{pair}`.
inherit: ../kd/{pair}.yaml
name: hosts_{pair}
bench:
  seeds: {SEEDS}
  methods:
{methods}""")


def method_lines(label: str, distill: str, title: str = "") -> str:
    head = f"title: {title}, " if title else ""
    return f"    {label}: {{{head}distill: {distill}}}\n"


KD = "method: kd, ce_weight: 0.1, kd_weight: 0.9, options: {tau: 4.0}"


def dkd(beta: float) -> str:
    return f"method: dkd, ce_weight: 1.0, kd_weight: 1.0, options: {{alpha: 1.0, beta: {beta}, tau: 4.0, warmup: 20}}"


SEEDS = "[0, 1, 2]"


def write_bench(pair: str, teacher: str, student: str, dkd_beta: float) -> None:
    methods = (method_lines("ce", "{method: ce}", "CE (student alone)")
               + method_lines("kd", f"{{{KD}}}")
               + method_lines("kd_btkd", f"{{{KD}, btkd: {{enabled: true}}}}")
               + method_lines("dkd", f"{{{dkd(dkd_beta)}}}")
               + method_lines("dkd_btkd", f"{{{dkd(dkd_beta)}, btkd: {{enabled: true}}}}"))
    write(ROOT / "bench" / f"{pair}.yaml", f"""\
# Bench {teacher} -> {student}, the standard recipe: the student alone, KD and DKD, each with and
# without BTKD (swap, subset means, cos^2), on the same seeds. `btkd bench cifar100/bench/{pair}`.
inherit: ../kd/{pair}.yaml
name: bench_{pair}
bench:
  seeds: {SEEDS}
  methods:
{methods}""")


def write_ablations(pair: str, teacher: str, student: str) -> None:
    def btkd(extra: str) -> str:
        return f"{{{KD}, btkd: {{enabled: true{', ' + extra if extra else ''}}}}}"

    methods = (method_lines("kd", f"{{{KD}}}")
               + method_lines("kd_btkd", btkd(""))
               + method_lines("kd_btkd_elimination", btkd("rectify: none"), "'KD+BTKD, elimination only (wrong samples dropped)'")
               + method_lines("kd_btkd_nosplit", btkd("split: false"), "'KD+BTKD, rectification without the split'")
               + method_lines("kd_btkd_constant", btkd("schedule: constant, schedule_options: {value: 0.5}"),
                              "'KD+BTKD, no dynamics (constant beta 0.5)'")
               + method_lines("kd_btkd_reweight", btkd("rectify: reweight"), "'KD+BTKD, reweight instead of swap'")
               + method_lines("kd_btkd_batchmean", btkd("reduction: batch"), "'KD+BTKD, batch instead of subset means'"))
    write(ROOT / "bench" / f"ablations_{pair}.yaml", f"""\
# Ablations of BTKD on {teacher} -> {student} with KD as the host: each row changes one part of BTKD.
# `btkd bench cifar100/bench/ablations_{pair}`.
inherit: ../kd/{pair}.yaml
name: ablations_{pair}
bench:
  seeds: {SEEDS}
  methods:
{methods}""")


# The CPU benches' student alone, KD and DKD (each +/- BTKD; DKD's warm-up 2 of 20 epochs, the CIFAR
# recipe's 20 of 240 rounded up) and the five BTKD ablations, in table order.
DKD_SMALL = "method: dkd, ce_weight: 1.0, kd_weight: 1.0, options: {alpha: 1.0, beta: 8.0, tau: 4.0, warmup: 2}"


def small_btkd(host: str, extra: str = "") -> str:
    return f"{{{host}, btkd: {{enabled: true{', ' + extra if extra else ''}}}}}"


def small_bench_methods() -> str:
    kd, dkd_small, btkd = KD, DKD_SMALL, small_btkd
    return (method_lines("ce", "{method: ce}", "CE (student alone)")
           + method_lines("kd", f"{{{kd}}}")
           + method_lines("kd_btkd", btkd(kd))
           + method_lines("dkd", f"{{{dkd_small}}}")
           + method_lines("dkd_btkd", btkd(dkd_small))
           + method_lines("kd_btkd_elimination", btkd(kd, "rectify: none"),
                          "'KD+BTKD, elimination only (wrong samples dropped)'")
           + method_lines("kd_btkd_nosplit", btkd(kd, "split: false"), "'KD+BTKD, rectification without the split'")
           + method_lines("kd_btkd_constant", btkd(kd, "schedule: constant, schedule_options: {value: 0.5}"),
                          "'KD+BTKD, no dynamics (constant beta 0.5)'")
           + method_lines("kd_btkd_reweight", btkd(kd, "rectify: reweight"), "'KD+BTKD, reweight instead of swap'")
           + method_lines("kd_btkd_batchmean", btkd(kd, "reduction: batch"),
                          "'KD+BTKD, batch instead of subset means'"))


def write_cpu_teacher(folder: Path, name: str, comment: str, model: str = "convnet",
                      options: str = "{width: 16}", epochs: int = 30) -> None:
    """A CPU setting's teacher, folder/teachers/MODEL.yaml: cross-entropy only (convnet width 16, 30 epochs
    unless told)."""
    options_line = f"\n  student_options: {options}" if options else ""
    write(folder / "teachers" / f"{model}.yaml", f"""\
{comment}inherit: ../_base.yaml
name: {name}
model:
  student: {model}{options_line}
optim:
  epochs: {epochs}
distill:
  method: ce
""")


def write_small_bench(path: Path, name: str, teacher_checkpoint: str, comment: str, methods: str,
                      student: str = "mlp", seeds: int = 5, extra: str = "", teacher: str = "convnet",
                      teacher_options: str = "{width: 16}", first_seed: int = 0) -> None:
    """A CPU bench config against its folder's teacher (the convnet of width 16 unless told), on
    ``seeds`` seeds from ``first_seed``."""
    options_line = f"\n  teacher_options: {teacher_options}" if teacher_options else ""
    write(path, f"""\
{comment}inherit: ../_base.yaml
name: {name}
{extra}model:
  student: {student}
  teacher: {teacher}{options_line}
  teacher_checkpoint: {teacher_checkpoint}
bench:
  seeds: {list(range(first_seed, first_seed + seeds))}
  methods:
{methods}""")


FASHION = ROOT.parent / "fashion_mnist"


def write_fashion_mnist() -> None:
    """A CPU-sized setting with real teacher errors: BTKD's whole bench on 2 cores within an hour."""
    write(FASHION / "_base.yaml", """\
# A small Fashion-MNIST recipe sized for 2 CPU cores: 20,000 training images (a seeded, class-
# stratified draw, the same for every seed), batch 128, SGD momentum 0.9, lr 0.05 with a cosine
# decay, weight decay 5e-4, random crop 28 pad 2 + horizontal flip.
data:
  name: fashion_mnist
  batch_size: 128
  train_subset: 20000
  crop_padding: 2
  flip: true
optim:
  epochs: 20
  lr: 0.05
  momentum: 0.9
  weight_decay: 5.0e-4
  lr_schedule: cosine
  milestones: []
""")
    write_cpu_teacher(FASHION, "teacher_fmnist_convnet", """\
# The teacher: a 3-stage convnet of width 16 (~24k parameters), cross-entropy only, 30 epochs.
""")
    kd = KD
    dkd_small = DKD_SMALL
    # Single runs of the bench's pair, for `btkd distill` (the bench trains them all, on 5 seeds).
    for host, distill, comment in (("kd", kd, "KD (Hinton): tau 4, CE weight 0.1, KD weight 0.9."),
                                   ("dkd", dkd_small, "DKD: CE 1, alpha 1, beta 8, tau 4, warm-up 2 of 20 epochs.")):
        for suffix, extra, wrapped in (("", "", ""), ("_btkd", ", btkd: {enabled: true}",
                                                      " Wrapped in BTKD (swap, subset means, cos^2 per epoch).")):
            write(FASHION / f"{host}{suffix}" / "convnet_mlp.yaml", f"""\
# convnet (width 16) -> mlp on Fashion-MNIST, one seed: {comment}{wrapped}
# The teacher is `btkd train fashion_mnist/teachers/convnet` (its last epoch).
inherit: ../_base.yaml
name: fmnist_{host}{suffix}_convnet_mlp
model:
  student: mlp
  teacher: convnet
  teacher_options: {{width: 16}}
  teacher_checkpoint: runs/teacher_fmnist_convnet/last.safetensors
distill: {{{distill}{extra}}}
""")

    def btkd(host: str, extra: str = "") -> str:
        return f"{{{host}, btkd: {{enabled: true{', ' + extra if extra else ''}}}}}"

    methods = small_bench_methods()
    def fashion_bench(name: str, comment: str, methods: str, student: str = "mlp", seeds: int = 5,
                      extra: str = "") -> None:
        write_small_bench(FASHION / "bench" / f"{name}.yaml", f"bench_fmnist_{name}",
                          "runs/teacher_fmnist_convnet/last.safetensors", comment, methods, student, seeds, extra)

    fashion_bench("convnet_mlp", """\
# convnet (width 16) -> mlp (one hidden layer of 128, ~8k parameters) on Fashion-MNIST: the student
# alone, KD and DKD each with and without BTKD, and the five BTKD ablations, 5 seeds, 20 epochs. The
# teacher is `btkd train fashion_mnist/teachers/convnet` (its last epoch). DKD's warm-up is 2 epochs
# of 20 (the CIFAR recipe's 20 of 240, rounded up).
""", methods)
    # A second student, of the teacher's own family and nearer it than the mlp: the same teacher,
    # recipe and methods (KD does not beat the student alone here either: README, Evidence).
    fashion_bench("convnet_convnet8", """\
# convnet (width 16) -> convnet (width 8, ~4x fewer parameters) on Fashion-MNIST: the student alone,
# KD and DKD each with and without BTKD, and BTKD with batch means (the ablation that explained the
# mlp student's loss), 3 seeds (a conv student costs ~10x the mlp on a CPU), 20 epochs, the teacher
# and recipe of convnet_mlp.
""", methods.split("    kd_btkd_elimination:")[0] + method_lines("kd_btkd_batchmean", btkd(kd, "reduction: batch"),
                                                          "'KD+BTKD, batch instead of subset means'"),
                  student="convnet\n  student_options: {width: 8}", seeds=3)
    # A setting where distillation is known to pay (Hinton et al. 2015: soft targets carry what little
    # data cannot): the mlp student sees 2,000 of the teacher's 20,000 images (the same seeded draw
    # nests: 200 of each class's 2,000), for 200 epochs, the steps of convnet_mlp. Declared before it ran.
    small = ("2000", "200", "warmup: 17")
    fashion_bench("convnet_mlp_small_data", """\
# convnet (width 16) -> mlp with little data: the student trains on 2,000 of the 20,000 images the
# teacher was trained on (the same seeded draw, so a subset of them), 200 epochs (the optimizer steps
# of convnet_mlp), the student alone, KD and DKD each with and without BTKD, and BTKD with batch means;
# 5 seeds. DKD's warm-up is 17 epochs of 200 (the CIFAR recipe's 20 of 240).
""", (methods.split("    kd_btkd_elimination:")[0] + method_lines("kd_btkd_batchmean", btkd(kd, "reduction: batch"),
                                                            "'KD+BTKD, batch instead of subset means'")
         ).replace("warmup: 2}", small[2] + "}"),
                  extra=f"data:\n  train_subset: {small[0]}\noptim:\n  epochs: {small[1]}\n")
    # Every other host with and without BTKD, and the rivals, on the same pair, seeds and teacher; the
    # epoch counts of the CIFAR recipes scaled by 20 / 240 (warm-ups 2, CTKD's curriculum 1 epoch,
    # SLD's student target from epoch 12.5), MLKD and SLD at their authors' half learning rate.
    hosts = [("kd_ls", "method: kd_ls, ce_weight: 0.1, kd_weight: 9.0, options: {tau: 2.0}", ""),
             ("dkd_ls", "method: dkd_ls, ce_weight: 1.0, kd_weight: 1.0, options: {alpha: 9.0, beta: 72.0, tau: 2.0, "
                        "warmup: 2}", ""),
             ("nkd", "method: nkd, ce_weight: 1.0, kd_weight: 1.0, options: {tau: 3.0, gamma: 3.5}", ""),
             ("dist", "method: dist, ce_weight: 1.0, kd_weight: 1.0, options: {tau: 4.0, beta: 2.0, gamma: 2.0}", ""),
             ("ctkd", "method: ctkd, ce_weight: 0.1, kd_weight: 0.9, options: {variant: global, lambda_epochs: 1}", ""),
             ("mlkd", MLKD, ", optim: {lr: 0.025}")]
    host_methods = "".join(f"    {name}: {{distill: {{{distill}}}{optim}}}\n"
                           f"    {name}_btkd: {{distill: {{{distill}, btkd: {{enabled: true}}}}{optim}}}\n"
                           for name, distill, optim in hosts)
    host_methods += ("    label_swap: {distill: {method: label_swap, ce_weight: 0.1, kd_weight: 0.9, options: {tau: 4.0}}}\n"
                     "    sld: {distill: {method: sld, ce_weight: 0.1, kd_weight: 0.9, options: {student_from: 12.5, "
                     "views: 2}}, optim: {lr: 0.025}}\n"
                     "    rld: {distill: {method: rld, ce_weight: 1.0, kd_weight: 1.0, options: {warmup: 2}}}\n")
    fashion_bench("convnet_mlp_hosts", """\
# Every other host with and without BTKD (KD and DKD are in convnet_mlp, on the same seeds), and the
# rivals that also repair a wrong teacher, convnet -> mlp on Fashion-MNIST, 5 seeds, 20 epochs. Each
# host keeps its paper's recipe with the epoch counts scaled by 20 / 240: warm-ups of 2 epochs, CTKD's
# curriculum over 1, SLD's student target from epoch 12.5; MLKD and SLD take their authors' half
# learning rate (CE on two views).
""", host_methods)
    # MLKD's levels, each kept or left out, with and without BTKD: which of its terms trains here.
    levels = [("mlkd_no_class", "class_weight: 0.0", "'MLKD without its class-level term'"),
              ("mlkd_instance", "batch_weight: 0.0, class_weight: 0.0", "'MLKD, instance level only'")]
    level_methods = ""
    for name, options, title in levels:
        distill = f"method: mlkd, ce_weight: 0.1, kd_weight: 0.9, options: {{{options}}}"
        level_methods += (f"    {name}: {{title: {title}, distill: {{{distill}}}, optim: {{lr: 0.025}}}}\n"
                          f"    {name}_btkd: {{title: {title[:-1]} + BTKD', distill: {{{distill}, btkd: {{enabled: true}}}}, "
                          f"optim: {{lr: 0.025}}}}\n")
    fashion_bench("convnet_mlp_mlkd_levels", """\
# A diagnostic beside convnet_mlp_hosts, where MLKD collapsed to chance: MLKD without its class-level
# term, and with its instance level only, each with and without BTKD (same seeds, teacher, recipe).
# The class-level term ||P'P(teacher) - P'P(student)||^2 / C is not divided by the batch: it grows as
# (batch / classes)^2, here (128 / 10)^2 against (64 / 100)^2 in the CIFAR-100 recipe.
""", level_methods)
    # DIST+BTKD lost most (its last epochs): its batch-level term taken on the whole batch, or batch means.
    dist = "method: dist, ce_weight: 1.0, kd_weight: 1.0, options: {tau: 4.0, beta: 2.0, gamma: 2.0}"
    dist_batch = dist.replace("gamma: 2.0}", "gamma: 2.0, batch_terms: batch}")
    fashion_bench("convnet_mlp_dist_terms", """\
# A diagnostic beside convnet_mlp_hosts, where DIST+BTKD lost most: DIST+BTKD with its intra-class
# (batch-level) term taken on the whole batch instead of each part's samples, and with batch instead
# of subset means (same seeds, teacher, recipe).
""", method_lines("dist", f"{{{dist}}}") + method_lines("dist_btkd", btkd(dist))
        + method_lines("dist_btkd_batch_terms", btkd(dist_batch),
                       "'DIST+BTKD, intra-class term on the whole batch'")
        + method_lines("dist_btkd_batchmean", btkd(dist, "reduction: batch"),
                       "'DIST+BTKD, batch instead of subset means'")
        + "  compare: [[dist_btkd_batch_terms, dist_btkd], [dist_btkd_batch_terms, dist]]\n")
    authors = "method: kd, ce_weight: 0.5, kd_weight: 0.5, options: {tau: 4.0}"
    fashion_bench("convnet_mlp_authors_weights", """\
# A diagnostic beside convnet_mlp: KD and KD+BTKD with the BTKD authors' weights (CE 0.5, KD 0.5)
# instead of KD's own (0.1 / 0.9). As beta falls, BTKD leaves the samples the teacher gets right with
# cross-entropy alone, at the CE weight: this pair shows how much that weight matters.
""", method_lines("kd_authors", f"{{{authors}}}", "'KD, CE 0.5 / KD 0.5'")
        + method_lines("kd_btkd_authors", f"{{{authors}, btkd: {{enabled: true}}}}",
                       "'KD+BTKD, CE 0.5 / KD 0.5 (the authors'' weights)'"))


def write_cifar100_cpu() -> None:
    """CIFAR-100 with models 2 CPU cores train in an hour: the evidence while no GPU is at hand."""
    cpu = ROOT / "cpu"  # ROOT read at call time (a test writes elsewhere)
    write(cpu / "_base.yaml", """\
# CIFAR-100 sized for 2 CPU cores, for evidence without a GPU: small models (a convnet teacher, an
# mlp student), batch 128, SGD momentum 0.9, lr 0.05 with a cosine decay, weight decay 5e-4, random
# crop 32 pad 4 + flip (the standard recipe's augmentation and optimizer, far fewer epochs). Not the
# field's benchmark: that is cifar100/bench/* with the 240-epoch recipe.
inherit: ../_base.yaml
data:
  batch_size: 128
optim:
  epochs: 20
  lr_schedule: cosine
  milestones: []
""")
    write_cpu_teacher(cpu, "teacher_c100cpu_convnet", """\
# The CPU study's teacher: a 3-stage convnet of width 16 (~30k parameters), cross-entropy only, all
# 50,000 training images, 30 epochs.
""")

    def cpu_bench(name: str, comment: str, methods: str) -> None:
        write_small_bench(cpu / "bench" / f"{name}.yaml", f"bench_c100cpu_{name}",
                          "runs/cifar100_cpu_evidence/teacher_c100cpu_convnet/last.safetensors", comment, methods)

    cpu_bench("convnet_mlp", """\
# convnet (width 16) -> mlp (one hidden layer of 128, ~32k parameters) on CIFAR-100, sized for 2 CPU
# cores: the student alone, KD and DKD each with and without BTKD, and the five BTKD ablations, 5
# seeds, 20 epochs. The teacher is `btkd train cifar100/cpu/teachers/convnet` (its last epoch). The
# hosts' options are their CIFAR-100 ones (KD: CE 0.1, KD 0.9, tau 4; DKD: alpha 1, beta 8, tau 4);
# DKD's warm-up is 2 epochs of 20 (the standard recipe's 20 of 240, rounded up).
""", small_bench_methods())
    authors = "method: kd, ce_weight: 0.5, kd_weight: 0.5, options: {tau: 4.0}"
    cpu_bench("convnet_mlp_authors_weights", """\
# A diagnostic beside convnet_mlp (as on Fashion-MNIST): the student alone, KD and KD+BTKD with the
# BTKD authors' weights (CE 0.5, KD 0.5) instead of KD's own (0.1 / 0.9), 5 seeds, 20 epochs. In
# convnet_mlp KD falls well below the student alone; this pair shows how much of that is KD's small
# CE weight, and how BTKD fares with the larger one.
""", method_lines("ce", "{method: ce}", "CE (student alone)")
        + method_lines("kd_authors", f"{{{authors}}}", "'KD, CE 0.5 / KD 0.5'")
        + method_lines("kd_btkd_authors", f"{{{authors}, btkd: {{enabled: true}}}}",
                       "'KD+BTKD, CE 0.5 / KD 0.5 (the authors'' weights)'"))

    # The second CPU setting: the same student, seeds, recipe and methods against a stronger teacher,
    # decided (and committed) before it ran, because KD fell below the student alone with the convnet.
    write_cpu_teacher(cpu, "teacher_c100cpu_resnet8", """\
# The CPU study's second teacher: resnet8 (the CIFAR ResNet of depth 8, ~84k parameters), cross-
# entropy only, all 50,000 training images, 40 epochs (~45 s each on 2 cores). Stronger than the
# convnet of teachers/convnet, which the mlp student's KD fell below the student alone with.
""", model="resnet8", options="", epochs=40)
    write_small_bench(cpu / "bench" / "resnet8_mlp.yaml", "bench_c100cpu_resnet8_mlp",
                      "runs/cifar100_cpu_evidence/teacher_c100cpu_resnet8/last.safetensors", """\
# resnet8 -> mlp on CIFAR-100, sized for 2 CPU cores: convnet_mlp's student, seeds, recipe and methods
# (the student alone, KD and DKD each with and without BTKD, the five BTKD ablations) plus KD and
# KD+BTKD with the BTKD authors' weights (CE 0.5 / KD 0.5), 5 seeds, 20 epochs, against a stronger
# teacher: `btkd train cifar100/cpu/teachers/resnet8` (its last epoch). It asks whether BTKD helps
# once the teacher is strong enough for distillation to pay.
""", small_bench_methods()
        + method_lines("kd_authors", f"{{{authors}}}", "'KD, CE 0.5 / KD 0.5'")
        + method_lines("kd_btkd_authors", f"{{{authors}, btkd: {{enabled: true}}}}",
                       "'KD+BTKD, CE 0.5 / KD 0.5 (the authors'' weights)'"),
                      teacher="resnet8", teacher_options="")
    # Written after resnet8_mlp had run 14 of its 20 epochs with KD below the student alone, before its end:
    # a student of the teacher's own kind (conv), which may take more from it than the mlp does.
    write_small_bench(cpu / "bench" / "resnet8_convnet8.yaml", "bench_c100cpu_resnet8_convnet8",
                      "runs/cifar100_cpu_evidence/teacher_c100cpu_resnet8/last.safetensors", """\
# resnet8 -> convnet (width 8, ~9k parameters) on CIFAR-100, sized for 2 CPU cores: the student
# alone, KD and KD+BTKD (KD's own weights, CE 0.1 / KD 0.9, tau 4), 3 seeds (a conv student costs
# ~10x the mlp on a CPU), 20 epochs, the teacher and recipe of resnet8_mlp. A conv student may take
# more from a conv teacher than the mlp does.
""", small_bench_methods().split("    dkd:")[0], student="convnet\n  student_options: {width: 8}", seeds=3,
                      teacher="resnet8", teacher_options="")
    # Written after both benches above had ended (KD level with the width-8 student alone): the next
    # wider student, planned in ../benchmarks/results/cifar100_cpu_resnet8/PLAN.md before it ran.
    write_small_bench(cpu / "bench" / "resnet8_convnet16.yaml", "bench_c100cpu_resnet8_convnet16",
                      "runs/cifar100_cpu_evidence/teacher_c100cpu_resnet8/last.safetensors", """\
# resnet8 -> convnet (width 16, ~30k parameters) on CIFAR-100, sized for 2 CPU cores: resnet8_convnet8
# with the student twice as wide (the first CPU setting's teacher architecture): the student alone, KD
# and KD+BTKD (KD's own weights, CE 0.1 / KD 0.9, tau 4), 3 seeds, 20 epochs, the same teacher and
# recipe. It asks whether a student with more capacity takes more from the teacher.
""", small_bench_methods().split("    dkd:")[0], student="convnet\n  student_options: {width: 16}", seeds=3,
                      teacher="resnet8", teacher_options="")
    # Written after resnet8_convnet16 had ended (KD above the student alone on each seed, the interval
    # not clear of 0), planned in the same PLAN.md before it ran: seeds 3-5 of that bench, a unit that
    # `btkd report` pools with it into one 6-seed table; nothing else changes.
    write_small_bench(cpu / "bench" / "resnet8_convnet16_more_seeds.yaml", "bench_c100cpu_resnet8_convnet16_more_seeds",
                      "runs/cifar100_cpu_evidence/teacher_c100cpu_resnet8/last.safetensors", """\
# Seeds 3-5 of resnet8_convnet16 (the same student, teacher, recipe and methods): a unit of that bench.
# `btkd report` on both bench folders pools them into one 6-seed table.
""", small_bench_methods().split("    dkd:")[0], student="convnet\n  student_options: {width: 16}", seeds=3,
                      teacher="resnet8", teacher_options="", first_seed=3)
    # Written after the 6-seed width-16 table (KD level with the student alone; its 1-3 point lead
    # up to epoch 15 faded as the learning rate decayed), planned in the same PLAN.md before it ran:
    # the width-16 bench's seeds 0-2 on a schedule twice as long; nothing else changes.
    write_small_bench(cpu / "bench" / "resnet8_convnet16_long.yaml", "bench_c100cpu_resnet8_convnet16_long",
                      "runs/cifar100_cpu_evidence/teacher_c100cpu_resnet8/last.safetensors", """\
# resnet8_convnet16 on a schedule twice as long (40 epochs, the same cosine decay stretched over
# them): the student alone, KD and KD+BTKD (KD's own weights), seeds 0-2, the same teacher. It asks
# whether KD's lead over the student alone, which faded as the 20-epoch schedule's learning rate
# decayed, holds when the student trains longer.
""", small_bench_methods().split("    dkd:")[0], student="convnet\n  student_options: {width: 16}", seeds=3,
                      teacher="resnet8", teacher_options="", extra="optim:\n  epochs: 40\n")


CIFAR10 = ROOT.parent / "cifar10"

# The same recipe as BASE (one place for it), with the dataset and the comment changed.
CIFAR10_BASE = """\
# CIFAR-10 with the standard CIFAR-100 recipe, unchanged: SGD momentum 0.9, batch 64, 240 epochs,
# lr 0.05 decayed x0.1 at epochs 150/180/210, weight decay 5e-4, random crop 32 pad 4 + flip.
# RepDistiller and mdistiller publish no CIFAR-10 recipe: RepDistiller's --dataset accepts cifar100
# only, mdistiller's DATASET.TYPE cifar100, imagenet and tiny_imagenet. So none is copied here; the
# CIFAR-100 recipe is the nearest published reference. DKD's beta per pair is CIFAR-100's too.
""" + BASE.split("\n", 2)[2].replace("name: cifar100", "name: cifar10")


def write_cifar10() -> None:
    """Teachers, the eight pairs with KD, DKD, each +BTKD, and the student alone, on CIFAR-10. Run names
    start with ``cifar10_`` so they never share a run folder with a CIFAR-100 run."""
    write(CIFAR10 / "_base.yaml", CIFAR10_BASE)
    for t in TEACHERS:
        write(CIFAR10 / "teachers" / f"{t}.yaml", f"""\
# Teacher {t} on CIFAR-10: the recipe of _base.yaml, cross-entropy only.
inherit: ../_base.yaml
name: cifar10_teacher_{t}
model:
  student: {t}
distill:
  method: ce
""")
    for pair, teacher, student, dkd_beta, lr in PAIRS:
        head = f"""\
inherit: ../_base.yaml
model:
  student: {student}
  teacher: {teacher}
  # the last epoch of `btkd train cifar10/teachers/{teacher}`, or any CIFAR-10 checkpoint of {teacher}
  teacher_checkpoint: runs/cifar10_teacher_{teacher}/last.safetensors
optim:
  lr: {lr}
"""
        write(CIFAR10 / "kd" / f"{pair}.yaml", f"""\
# KD (Hinton) on CIFAR-10: tau 4, CE weight 0.1, KD weight 0.9 (the CIFAR-100 setting).
{head}name: cifar10_kd_{pair}
distill: {{{KD}}}
""")
        write(CIFAR10 / "dkd" / f"{pair}.yaml", f"""\
# DKD on CIFAR-10: CE 1, alpha 1, beta {dkd_beta:g}, tau 4, loss ramped over the first 20 epochs (CIFAR-100's values).
{head}name: cifar10_dkd_{pair}
distill: {{{dkd(dkd_beta)}}}
""")
        for host in ("kd", "dkd"):
            write(CIFAR10 / f"{host}_btkd" / f"{pair}.yaml", f"""\
# {host.upper()} + BTKD on CIFAR-10: the host's recipe, wrapped in BTKD with the spec's defaults
# (swap rectification, subset means, cos^2 per-epoch schedule).
inherit: ../{host}/{pair}.yaml
name: cifar10_{host}_btkd_{pair}
distill:
  btkd:
    enabled: true
    rectify: swap
    reduction: subset
    schedule: cos2
""")
        write(CIFAR10 / "ce" / f"{pair}.yaml", f"""\
# The student {student} alone on CIFAR-10 (cross-entropy, no teacher): the baseline row of {pair}.
inherit: ../_base.yaml
name: cifar10_ce_{pair}
model:
  student: {student}
optim:
  lr: {lr}
distill:
  method: ce
""")


if __name__ == "__main__":
    main()
