"""Is a committed CPU bench's finding btkd's doing? Its recipe rerun as a plain PyTorch loop.

Every committed CPU bench finds KD below the student trained alone or level with it, and KD+BTKD below
KD. Those findings could come from the setting, or from a fault in btkd's own training path (the
resident loader and its augmentation, BN folding, the step, the learning-rate schedule, the
evaluation, the BTKD layer). This script trains the bench's student alone (CE), with KD and with
KD+BTKD by the most ordinary code there is, and sets its figures beside the bench's:

* data read with numpy from the raw files, served by a ``DataLoader`` with per-sample transforms
  (`reference.PerSampleCIFAR`: zero padding, random crop, flip, normalise), the last partial batch
  dropped as btkd does;
* the teacher loaded from the committed ``last.safetensors`` (its sha256 checked against the one
  every bench member recorded), in eval mode, BN not folded, fp32;
* ``torch.optim.SGD`` with the bench's lr, momentum and weight decay; the per-epoch cosine rate;
* the textbook losses written here (``F.cross_entropy``; ``F.kl_div`` at temperature tau, times
  tau^2), and BTKD written from METHOD.md: split on the teacher's argmax, the wrong rows' label and
  top logits swapped, each part averaged over its own size, beta(e) = cos^2(pi/2 e/E);
* the three students of a seed share each batch and its teacher forward (as a bench's members do), each
  starts from ``torch.manual_seed(seed)``; the last epoch's test accuracy is the figure.

Shared with btkd: only the model definitions (``btkd.models``), the normalisation constants and the
stratified subset draw (checked against the sha256 the bench recorded), so the data, the teacher and
the students' architecture are the bench's own and everything that trains them is not.

The plain loop's own RNG differs from btkd's, so a seed's figure differs run to run; the
comparison is of means (Welch's 95 % interval, plain loop minus bench) and of each loop's paired
differences (KD - alone, KD+BTKD - KD, by seed, 95 % t interval).

    python benchmarks/plain_loop.py --setting fashion_mnist --out benchmarks/results/plain_loop/fashion_mnist.json
    python benchmarks/plain_loop.py --setting fashion_mnist_conv --out benchmarks/results/plain_loop/fashion_mnist_conv.json
    python benchmarks/plain_loop.py --setting cifar100_cpu --out benchmarks/results/plain_loop/cifar100_cpu.json
    python benchmarks/plain_loop.py --setting fashion_mnist --smoke     # seconds: 1 epoch, 1,000 images
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import PerSampleCIFAR  # noqa: E402

from btkd.bench.stats import describe, paired_difference  # noqa: E402
from btkd.data.base import candidate_roots  # noqa: E402
from btkd.data.cifar import CIFAR100_MEAN, CIFAR100_STD  # noqa: E402
from btkd.data.fashion_mnist import DEBIAN_ROOT, FASHION_MNIST_MEAN, FASHION_MNIST_STD  # noqa: E402
from btkd.data.subset import subset_indices  # noqa: E402
from btkd.models import build_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# A committed bench, its teacher's run folder, and where its data lives.
SETTINGS = {
    "fashion_mnist": {"bench": RESULTS / "fashion_mnist" / "bench",
                      "teacher": RESULTS / "fashion_mnist" / "teacher_run" / "last.safetensors"},
    "fashion_mnist_conv": {"bench": RESULTS / "fashion_mnist" / "conv_student",
                           "teacher": RESULTS / "fashion_mnist" / "teacher_run" / "last.safetensors"},
    "cifar100_cpu": {"bench": RESULTS / "cifar100_cpu" / "bench",
                     "teacher": RESULTS / "cifar100_cpu" / "teacher_run" / "last.safetensors"},
    "cifar100_cpu_resnet8_convnet16": {
        "bench": RESULTS / "cifar100_cpu_resnet8" / "convnet16",
        "teacher": RESULTS / "cifar100_cpu_resnet8" / "teacher_run" / "last.safetensors"},
}
METHODS = ("ce", "kd", "kd_btkd")


# ----------------------------------------------------------------------------------------------- data

def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not): 2 zero bytes, a type byte (0x08: uint8), the number of dims,
    one big-endian uint32 per dim, then the values."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not a uint8 IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def find_root(setting: str, root: str | None) -> Path:
    if root:
        return Path(root)
    if setting.startswith("fashion_mnist"):
        marker, name, extra = "train-labels-idx1-ubyte.gz", "fashion_mnist", [DEBIAN_ROOT]
    else:
        marker, name, extra = "test.npz", "cifar100", []
    for path in candidate_roots(name, extra):
        if (path / marker).is_file():
            return path
    raise SystemExit(f"no {name} data found; pass --root FOLDER (the folder holding {marker})")


def load_data(setting: str, root: Path):
    """(train images uint8 NCHW, train labels, test images, test labels, mean, std) as numpy."""
    if setting.startswith("fashion_mnist"):
        xtr = read_idx(root / "train-images-idx3-ubyte.gz")[:, None]
        ytr = read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64)
        xte = read_idx(root / "t10k-images-idx3-ubyte.gz")[:, None]
        yte = read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
        return xtr, ytr, xte, yte, FASHION_MNIST_MEAN, FASHION_MNIST_STD
    shards = sorted(root.glob("train-*.npz"), key=lambda p: int(p.stem.split("-")[1]))
    parts = [np.load(p, allow_pickle=False) for p in shards]
    xtr = np.concatenate([p["x"] for p in parts]).transpose(0, 3, 1, 2)
    ytr = np.concatenate([p["y"] for p in parts]).astype(np.int64)
    test = np.load(root / "test.npz", allow_pickle=False)
    return xtr, ytr, test["x"].transpose(0, 3, 1, 2), test["y"].astype(np.int64), CIFAR100_MEAN, CIFAR100_STD


# ----------------------------------------------------------------------------------------------- losses

def kd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """Hinton's KD, the textbook way: tau^2 * KL(softmax(t / tau) || softmax(s / tau)), batch mean."""
    return F.kl_div(F.log_softmax(student / tau, dim=1), F.softmax(teacher / tau, dim=1),
                    reduction="batchmean") * tau * tau


def btkd_kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, tau: float,
                 beta: float) -> tuple[torch.Tensor, int]:
    """METHOD.md's total distillation term with KD as the host: beta * KD(right rows) + (1 - beta) *
    KD(wrong rows with the label's and the top class's teacher logits swapped); each part a mean over
    its own rows, an empty part 0. Returns (term, number of wrong rows)."""
    top = teacher.argmax(dim=1)
    wrong = top != labels
    zero = student.new_zeros(())
    right_term = kd_loss(student[~wrong], teacher[~wrong], tau) if (~wrong).any() else zero
    if wrong.any():
        fixed = teacher[wrong].clone()
        rows = torch.arange(len(fixed))
        at_label, at_top = fixed[rows, labels[wrong]].clone(), fixed[rows, top[wrong]].clone()
        fixed[rows, labels[wrong]], fixed[rows, top[wrong]] = at_top, at_label
        wrong_term = kd_loss(student[wrong], fixed, tau)
    else:
        wrong_term = zero
    return beta * right_term + (1 - beta) * wrong_term, int(wrong.sum())


# ----------------------------------------------------------------------------------------------- training

def member_config(bench: Path, method: str, seed: int) -> dict:
    path = bench / "runs" / f"{method}-s{seed}" / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: the bench has no member {method}-s{seed}; pick seeds it ran")
    return yaml.safe_load(path.read_text())


def recipe(bench: Path, seed: int) -> dict:
    """The bench's recipe for seed ``seed``, checked to be what this loop implements."""
    cfgs = {m: member_config(bench, m, seed) for m in METHODS}
    base = cfgs["ce"]
    for m, c in cfgs.items():
        if c["data"] != base["data"] or c["optim"] != base["optim"] or c["model"]["student"] != base["model"]["student"]:
            raise SystemExit(f"{m}-s{seed} trains on another recipe than ce-s{seed}: not a paired bench")
    kd, kdb = cfgs["kd"]["distill"], cfgs["kd_btkd"]["distill"]
    assert kd["method"] == "kd" and not kd["btkd"]["enabled"], kd
    assert kdb["method"] == "kd" and kdb["btkd"]["enabled"], kdb
    b = kdb["btkd"]
    if (b["rectify"], b["reduction"], b["schedule"], b["split"], b.get("schedule_options") or {}) != \
            ("swap", "subset", "cos2", True, {}):
        raise SystemExit(f"kd_btkd-s{seed} uses BTKD options this loop does not implement: {b}")
    if kd["options"] != kdb["options"] or (kd["ce_weight"], kd["kd_weight"]) != (kdb["ce_weight"], kdb["kd_weight"]):
        raise SystemExit("KD and KD+BTKD differ in more than BTKD")
    o = base["optim"]
    if o["lr_schedule"] != "cosine" or o["warmup_epochs"] or o["nesterov"]:
        raise SystemExit(f"this loop implements a cosine schedule without warm-up or Nesterov, the bench has {o}")
    return {"data": base["data"], "optim": o, "student": base["model"]["student"],
            "student_options": base["model"].get("student_options") or {},
            "teacher": cfgs["kd"]["model"]["teacher"],
            "teacher_options": cfgs["kd"]["model"].get("teacher_options") or {},
            "tau": float(kd["options"]["tau"]), "ce_weight": float(kd["ce_weight"]),
            "kd_weight": float(kd["kd_weight"])}


def channels_option(images: np.ndarray) -> dict:
    """``in_channels`` for grey images; the CIFAR models (resnets, ...) take RGB only and no such option."""
    return {} if images.shape[1] == 3 else {"in_channels": images.shape[1]}


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    return 100.0 * correct / total


def train_seed(seed: int, r: dict, data, test: DataLoader, teacher: torch.nn.Module, epochs: int, log) -> dict:
    xtr, ytr, mean, std, num_classes = data
    d, o = r["data"], r["optim"]
    channels = channels_option(xtr)
    students, optimizers = {}, {}
    for m in METHODS:
        torch.manual_seed(seed)
        students[m] = build_model(r["student"], num_classes=num_classes, **channels, **r["student_options"])
        optimizers[m] = torch.optim.SGD(students[m].parameters(), lr=o["lr"], momentum=o["momentum"],
                                        weight_decay=o["weight_decay"])
    g = torch.Generator().manual_seed(seed)
    np.random.seed(seed)  # PerSampleCIFAR draws its crops and flips from numpy's global RNG
    train = DataLoader(PerSampleCIFAR(torch.from_numpy(xtr), torch.from_numpy(ytr), mean, std, train=True,
                                      pad=d["crop_padding"]),
                       batch_size=d["batch_size"], shuffle=True, drop_last=True, generator=g)
    curves = {m: [] for m in METHODS}
    frac_wrong = []
    for epoch in range(epochs):
        lr = o["lr"] * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        beta = math.cos(math.pi / 2 * epoch / epochs) ** 2
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
        for s in students.values():
            s.train()
        wrong = seen = 0
        t0 = time.time()
        for x, y in train:
            with torch.no_grad():
                t_logits = teacher(x)
            for m, s in students.items():
                logits = s(x)
                loss = F.cross_entropy(logits, y)
                if m == "kd":
                    loss = r["ce_weight"] * loss + r["kd_weight"] * kd_loss(logits, t_logits, r["tau"])
                elif m == "kd_btkd":
                    term, n_wrong = btkd_kd_loss(logits, t_logits, y, r["tau"], beta)
                    loss = r["ce_weight"] * loss + r["kd_weight"] * term
                    wrong += n_wrong
                optimizers[m].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[m].step()
            seen += len(y)
        frac_wrong.append(wrong / seen)
        for m, s in students.items():
            curves[m].append(accuracy(s, test))
        log(f"seed {seed} epoch {epoch + 1}/{epochs} ({time.time() - t0:.0f} s): "
            + ", ".join(f"{m} {curves[m][-1]:.2f}" for m in METHODS) + f", teacher wrong {frac_wrong[-1]:.3f}")
    return {"seed": seed, "curves": curves, "last": {m: curves[m][-1] for m in METHODS}, "frac_wrong": frac_wrong}


# ----------------------------------------------------------------------------------------------- comparison

def welch(a: list, b: list, level: float = 0.95) -> dict:
    """mean(a) - mean(b) with Welch's t interval (unequal variances)."""
    from scipy.stats import t

    da, db = describe(a), describe(b)
    va, vb = da["std"] ** 2 / da["n"], db["std"] ** 2 / db["n"]
    se = math.sqrt(va + vb)
    diff = da["mean"] - db["mean"]
    if se == 0:
        return {"mean": diff, "ci": [diff, diff], "df": None}
    df = (va + vb) ** 2 / (va ** 2 / (da["n"] - 1) + vb ** 2 / (db["n"] - 1))
    half = float(t.ppf(0.5 + level / 2, df)) * se
    return {"mean": diff, "ci": [diff - half, diff + half], "df": df}


def compare(runs: list, bench: Path, seeds: list) -> dict:
    results = json.loads((bench / "results.json").read_text())
    by_name = {c["label"]: c for c in results["cells"]}
    bench_last = {}
    for m in METHODS:
        cell = by_name[m]
        bench_last[m] = [cell["last_acc"][cell["seeds"].index(s)] for s in seeds]
    plain = {m: [run["last"][m] for run in runs] for m in METHODS}
    out = {"plain": {m: describe(v) for m, v in plain.items()}, "bench": {m: describe(v) for m, v in bench_last.items()},
           "plain_values": plain, "bench_values": bench_last, "plain_minus_bench": {}, "differences": {}}
    if len(seeds) >= 2:
        out["plain_minus_bench"] = {m: welch(plain[m], bench_last[m]) for m in METHODS}
    for label, a, b in (("KD - alone", "kd", "ce"), ("KD+BTKD - KD", "kd_btkd", "kd")):
        out["differences"][label] = {"plain": paired_difference(plain[a], plain[b]),
                                     "bench": paired_difference(bench_last[a], bench_last[b])}
    return out


def fmt(d: dict) -> str:
    if d["mean"] is None:
        return "-"
    return f"{d['mean']:.2f}" + (f" ± {d['std']:.2f}" if d.get("std") is not None else "")


def fmt_ci(d: dict) -> str:
    if not d or d.get("mean") is None:
        return "-"
    ci = d.get("ci")
    return f"{d['mean']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def table(comparison: dict, teacher_acc: float, bench_teacher_acc: float) -> str:
    titles = {"ce": "CE (student alone)", "kd": "KD", "kd_btkd": "KD+BTKD"}
    lines = ["| | plain loop | btkd bench | plain - bench (Welch 95 %) |", "|---|---|---|---|",
             f"| teacher (test %) | {teacher_acc:.2f} | {bench_teacher_acc:.2f} | |"]
    for m in METHODS:
        lines.append(f"| {titles[m]} | {fmt(comparison['plain'][m])} | {fmt(comparison['bench'][m])} | "
                     f"{fmt_ci(comparison['plain_minus_bench'].get(m, {}))} |")
    for label, d in comparison["differences"].items():
        lines.append(f"| {label}, paired by seed (95 %) | {fmt_ci(d['plain'])} | {fmt_ci(d['bench'])} | |")
    return "\n".join(lines)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="fashion_mnist")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the bench's seeds")
    ap.add_argument("--root", default=None, help="the dataset's folder (default: where btkd finds it)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="1 epoch on 1,000 training and 500 test images: checks the script runs")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setting = SETTINGS[args.setting]
    bench = setting["bench"]
    seeds = args.seeds if args.seeds is not None else json.loads((bench / "results.json").read_text())["seeds"]
    started = time.time()

    recipes = [recipe(bench, s) for s in seeds]
    r = recipes[0]
    if any(x != r for x in recipes):
        raise SystemExit("the bench's seeds train on different recipes")
    meta = json.loads((bench / "runs" / f"kd-s{seeds[0]}" / "meta.json").read_text())

    # The teacher: the committed file, checked to be the one the bench distilled from.
    sha = hashlib.sha256(setting["teacher"].read_bytes()).hexdigest()
    if sha != meta["teacher_checkpoint_sha256"]:
        raise SystemExit(f"{setting['teacher']} is not the teacher the bench used (sha256 {sha[:12]} vs "
                         f"{meta['teacher_checkpoint_sha256'][:12]})")
    root = find_root(args.setting, args.root)
    xtr, ytr, xte, yte, mean, std = load_data(args.setting, root)
    num_classes = int(ytr.max()) + 1
    subsets = meta.get("data_subsets") or {}
    if r["data"].get("train_subset"):
        idx = subset_indices(torch.from_numpy(ytr), int(r["data"]["train_subset"]), int(r["data"]["subset_seed"]))
        digest = hashlib.sha256(idx.numpy().astype("<i8").tobytes()).hexdigest()
        if digest != subsets["train_subset"]["indices_sha256"]:
            raise SystemExit("the training subset drawn here is not the bench's (its sha256 differs)")
        xtr, ytr = xtr[idx.numpy()], ytr[idx.numpy()]
    if r["data"].get("test_subset"):
        raise SystemExit("the bench used a test subset; this loop evaluates on the whole test set")
    epochs = r["optim"]["epochs"]
    if args.smoke:
        xtr, ytr, xte, yte, epochs = xtr[:1000], ytr[:1000], xte[:500], yte[:500], 1
    teacher = build_model(r["teacher"], num_classes=num_classes, **channels_option(xtr), **r["teacher_options"])
    teacher.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(setting["teacher"]).items()})
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    test_loader = DataLoader(PerSampleCIFAR(torch.from_numpy(xte), torch.from_numpy(yte), mean, std, train=False),
                             batch_size=500)
    teacher_acc = accuracy(teacher, test_loader)

    def log(msg):
        print(msg, flush=True)

    log(f"{args.setting}: {len(ytr)} training images, {len(yte)} test; teacher {r['teacher']} {teacher_acc:.2f} % "
        f"(the bench: {meta['teacher_test_acc']}); student {r['student']}, {epochs} epochs, batch "
        f"{r['data']['batch_size']}, seeds {seeds}")
    data = (xtr, ytr, mean, std, num_classes)
    result = {
        "setting": args.setting, "bench": str(bench.relative_to(RESULTS.parent.parent)), "seeds": seeds,
        "smoke": args.smoke, "epochs": epochs, "recipe": r, "teacher_test_acc": teacher_acc,
        "bench_teacher_test_acc": meta["teacher_test_acc"], "runs": [], "complete": False,
        "command": "python benchmarks/plain_loop.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": git_commit(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    for s in seeds:
        result["runs"].append(train_seed(s, r, data, test_loader, teacher, epochs, log))
        result["wall_time_s"] = round(time.time() - started, 1)
        if args.out:  # each finished seed is kept, so a long check stopped early still has them
            write_json(args.out, result)
    result["comparison"] = compare(result["runs"], bench, seeds)
    result["complete"] = True
    comparison = result["comparison"]
    print()
    print(table(comparison, teacher_acc, meta["teacher_test_acc"]))
    if args.out:
        write_json(args.out, result)
    return result


def write_json(path: str, data: dict) -> None:
    """Written to a temporary file and renamed, so a kill leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
