"""`btkd inspect-teacher`: the teacher's bias, before anyone distils from it.

What BTKD works with is the teacher's errors on the *augmented training batches*: those samples
are the ones it rectifies. This report measures them (under the very draws of the first training
epochs of the run's seed), with the train and test error, the error per class, the most confused
class pairs, and calibration (expected calibration error and a reliability diagram). A teacher that
is almost never wrong on its training data gives BTKD nothing to rectify, and the report says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from .bias import teacher_right
from .config import Config, ConfigError
from .engine.build import build_data, build_teacher, make_loss, setup_runtime
from .engine.evaluate import forward_precision, precision_name
from .engine.run_folder import remove_stale_temp_files, write_json, write_text_atomic
from .report import save_figure

__all__ = ["inspect_teacher", "calibration", "confused_pairs", "ALMOST_NEVER_WRONG"]

# Below this share of wrong training samples per epoch, BTKD has (almost) nothing to rectify.
ALMOST_NEVER_WRONG = 0.005
PRECISION_NAMES = {"bf16": "bf16 autocast", "tf32": "TF32"}
# in report.md when matplotlib is missing (matplotlib is an extra: a plain `pip install btkd` lacks it)
PLOTS_SKIPPED = "(plots skipped: install matplotlib, e.g. `pip install 'btkd[report]'`)"
WORST_IN_TABLE = 10  # classes in report.md's table of the highest per-class test error
WORST_NAMED_IN_PLOT = 5  # classes named above their bars when there are too many to name every bar


@dataclass
class Predictions:
    logits: Tensor  # [N, C] float32 on the CPU
    labels: Tensor  # [N]

    @property
    def right(self) -> Tensor:  # BTKD's split decision (a label tied for the top is right)
        return teacher_right(self.logits, self.labels)

    @property
    def wrong(self) -> Tensor:  # what BTKD rectifies
        return ~self.right

    @property
    def misclassified(self) -> Tensor:  # top-1 errors, as accuracy counts them (first argmax)
        return self.logits.argmax(1) != self.labels


@torch.no_grad()
def _predict(teacher, loader, autocast, view: int = 0) -> Predictions:
    """The teacher's logits on every batch of ``loader`` (on view ``view`` of a two-view loader)."""
    logits, labels = [], []
    for x, y in loader:
        x = x if isinstance(x, Tensor) else x[view]
        with autocast():
            out = teacher(x)
        logits.append(out.float().cpu())
        labels.append(y.cpu())
    return Predictions(torch.cat(logits), torch.cat(labels))


def _predict_epoch(teacher, loader, epoch: int, precision: str, device) -> Predictions:
    """The teacher's predictions on training epoch ``epoch`` of ``loader``, in ``precision``."""
    loader.set_epoch(epoch)
    return _predict(teacher, loader, forward_precision(precision, device))


def _teacher_precision(cfg: Config, rt) -> str:
    """The teacher forward whose argmax decides BTKD's split in a run of ``cfg``: ``bf16``, ``fp32``
    (IEEE: a run in fp32 turns TF32 off) or ``tf32`` (runtime.teacher_precision, else the run's own)."""
    if cfg.runtime.teacher_precision != "same":
        return cfg.runtime.teacher_precision
    return "bf16" if rt.amp_dtype == torch.bfloat16 else "fp32"


def calibration(logits: Tensor, labels: Tensor, bins: int = 15) -> Dict[str, Any]:
    """Expected calibration error over ``bins`` equal-width confidence bins (top-1 confidence vs
    accuracy, weighted by the bin's share of samples), with the per-bin figures for the diagram."""
    probs = torch.softmax(logits.double(), dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # bin b holds (edges[b], edges[b+1]], as in Guo et al. (2017): a confidence on an inner edge (0.5 of a
    # two-way tie) is in the bin below it (right=False; right=True would put it in the bin above)
    which = torch.bucketize(conf, edges[1:-1], right=False)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        acc = float(correct[m].mean()) if n else None
        mean_conf = float(conf[m].mean()) if n else None
        if n:
            ece += n / len(labels) * abs(acc - mean_conf)
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n, "accuracy": acc,
                     "confidence": mean_conf})
    return {"ece": ece, "bins": rows}


def confused_pairs(pred: Tensor, labels: Tensor, top: int = 10) -> List[Dict[str, int]]:
    """The most frequent (true class, predicted class) errors, most frequent first."""
    wrong = pred != labels
    if not bool(wrong.any()):
        return []
    pairs, counts = torch.stack([labels[wrong], pred[wrong]], dim=1).unique(dim=0, return_counts=True)
    order = counts.argsort(descending=True, stable=True)[:top]
    return [{"true": int(pairs[i, 0]), "predicted": int(pairs[i, 1]), "count": int(counts[i])} for i in order]


def _named_pairs(pairs: List[Dict[str, int]], names: Optional[List[str]]) -> List[Dict[str, Any]]:
    """``pairs`` with each class's name beside its index (``true_name``, ``predicted_name``) where the
    data names its classes."""
    if not names:
        return pairs
    return [{"true": p["true"], "true_name": names[p["true"]], "predicted": p["predicted"],
             "predicted_name": names[p["predicted"]], "count": p["count"]} for p in pairs]


def _class_label(i: int, names: Optional[List[str]]) -> str:
    """Class ``i`` as a reader sees it: ``47 maple_tree``, or the bare index where the data names no
    classes (or the name is the index itself, as a digit's)."""
    return f"{i} {names[i]}" if names and names[i] != str(i) else str(i)


def _worst_classes(r: Dict[str, Any], top: int) -> List[int]:
    """The ``top`` classes of the highest test error (those with an error above 0), worst first."""
    errors = r["per_class_error_test"]
    ranked = sorted((i for i, e in enumerate(errors) if e), key=lambda i: -errors[i])  # stable: ties by index
    return ranked[:top]


def _per_class(p: Predictions, num_classes: int) -> List[Optional[float]]:
    n = torch.bincount(p.labels, minlength=num_classes)
    w = torch.bincount(p.labels[p.misclassified], minlength=num_classes)
    return [float(100.0 * a / b) if b else None for a, b in zip(w.tolist(), n.tolist())]


def inspect_teacher(cfg: Config, out: Path, aug_epochs: int = 3, compare_bf16: bool = False,
                    echo=print) -> Dict[str, Any]:
    """Measure the teacher of ``cfg`` (``model.teacher``, ``model.teacher_checkpoint``) on ``cfg.data``
    and write ``report.md``, ``teacher.json`` and plots into ``out``; returns the figures."""
    if not cfg.model.teacher:
        raise ConfigError("inspect-teacher needs model.teacher and model.teacher_checkpoint (a distillation or bench "
                          "config names them; or pass a weights file with --model)")
    if aug_epochs < 1:
        raise ConfigError(f"--aug-epochs={aug_epochs} must be >= 1")
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise ConfigError("inspect-teacher measures every training and test image in one process and writes one "
                          "report; run `btkd inspect-teacher` without torchrun")
    rt = setup_runtime(cfg)
    data = build_data(cfg, rt)
    teacher = build_teacher(cfg, data, rt)
    # the teacher forward training splits with (runtime.teacher_precision), not the students' autocast alone
    measured = _teacher_precision(cfg, rt)
    amp = forward_precision(measured, rt.device)
    C = data.num_classes
    data.test_loader.set_epoch(0)  # every test batch from the first, wherever an earlier pass stopped
    test = _predict(teacher, data.test_loader, amp)
    train_loader = data.train_loader(cfg.seed)
    # Augmented: epoch e of this loader draws exactly what training epoch e of seed cfg.seed sees.
    # --compare-bf16: each lower precision's split decisions against an IEEE fp32 forward's
    others = (("bf16", "tf32") if rt.device.type == "cuda" else ("bf16",)) if compare_bf16 else ()
    aug, changed = [], {name: [] for name in others}
    for e in range(aug_epochs):
        train_loader.set_epoch(e)
        p = _predict(teacher, train_loader, amp)
        aug.append(p)
        if others:
            # a run in fp32 already made an IEEE fp32 forward (TF32 is off then)
            reference = p if measured == "fp32" else _predict_epoch(teacher, train_loader, e, "fp32", rt.device)
            for name in others:
                q = p if name == measured else _predict_epoch(teacher, train_loader, e, name, rt.device)
                changed[name].append(int((q.right != reference.right).sum()))
    # A two-view host (MLKD) also distils, and BTKD also rectifies, the strong view: measure it too.
    loss = make_loss(cfg)
    strong_wrong = []
    if loss is not None and loss.host.views > 1:
        strong_loader = data.train_loader(cfg.seed, views=loss.host.views)
        for e in range(aug_epochs):
            strong_loader.set_epoch(e)
            strong_wrong.append(int(_predict(teacher, strong_loader, amp, view=1).wrong.sum()))
    clean = _predict(teacher, data.train_eval_loader(), amp)  # in order, without augmentation
    wrong_per_epoch = [int(p.wrong.sum()) for p in aug]
    per_epoch = len(aug[0].labels)
    mean_wrong = sum(wrong_per_epoch) / len(wrong_per_epoch)
    aug_all = Predictions(torch.cat([p.logits for p in aug]), torch.cat([p.labels for p in aug]))
    batch = cfg.data.global_batch_size or cfg.data.batch_size  # BTKD's statistics span the global batch
    result = {
        "teacher": cfg.model.teacher, "checkpoint": cfg.model.teacher_checkpoint, "data": cfg.data.name,
        "num_classes": C, "classes": data.classes, "train_size": data.train_size, "test_size": data.test_size,
        "precision": precision_name(rt.amp_dtype), "teacher_precision": measured, "seed": cfg.seed,
        "test_error": 100.0 * float(test.misclassified.double().mean()),
        "train_error_clean": 100.0 * float(clean.misclassified.double().mean()),
        "augmented": {"epochs_measured": aug_epochs, "samples_per_epoch": per_epoch,
                      "wrong_per_epoch": wrong_per_epoch, "expected_rectified_per_epoch": mean_wrong,
                      "error": 100.0 * mean_wrong / per_epoch, "expected_wrong_per_batch": mean_wrong / per_epoch * batch,
                      "batch_size": batch},
        "per_class_error_test": _per_class(test, C),
        "per_class_error_train_augmented": _per_class(aug_all, C),
        "confused_pairs_test": _named_pairs(confused_pairs(test.logits.argmax(1), test.labels), data.classes),
        "confused_pairs_train_augmented": _named_pairs(confused_pairs(aug_all.logits.argmax(1), aug_all.labels),
                                                       data.classes),
        "calibration_test": calibration(test.logits, test.labels),
        "calibration_train_augmented": calibration(aug_all.logits, aug_all.labels),
    }
    if strong_wrong:
        result["strong_view"] = {"wrong_per_epoch": strong_wrong,
                                 "error": 100.0 * sum(strong_wrong) / len(strong_wrong) / per_epoch}
    if others:
        result["split_decisions_changed_by_precision"] = {
            "reference": "fp32 (IEEE: no TF32)", "of": per_epoch,
            **{name: {"per_epoch": v, "share": sum(v) / (len(v) * per_epoch)} for name, v in changed.items()}}
    result["verdict"] = _verdict(result)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out, ("teacher.json", "report.md") + PLOT_FILES)  # of a report a kill interrupted
    write_json(out / "teacher.json", result)
    plots = _plots(result, out)
    write_text_atomic(out / "report.md", _markdown(result, plots))
    echo(result["verdict"])
    return result


def _verdict(r: Dict[str, Any]) -> str:
    a = r["augmented"]
    share = a["expected_rectified_per_epoch"] / a["samples_per_epoch"]
    head = (f"teacher {r['teacher']}: test error {r['test_error']:.2f} %, wrong on {a['error']:.2f} % of its augmented "
            f"training samples ({a['expected_rectified_per_epoch']:.0f} per epoch, {a['expected_wrong_per_batch']:.2f} "
            f"per batch of {a['batch_size']}).")
    if share < ALMOST_NEVER_WRONG:
        return (head + " It is almost never wrong on its training data, so BTKD has almost nothing to rectify: the "
                "rectified part rests on a handful of samples, and as beta falls the right part's distillation fades, "
                "so BTKD behaves like KD whose distillation weight is annealed away. Expect no gain from BTKD here.")
    return (head + " BTKD rectifies these samples and weights them by (1 - beta) / n_wrong each (subset means), "
            "against beta / n_right for a right one.")


#: The plots `_plots` writes (a new report removes the temp files a kill left of them).
PLOT_FILES = ("reliability.png", "per_class_error.png")


def _plots(r: Dict[str, Any], out: Path) -> List[tuple]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    fig, ax = plt.subplots(figsize=(5, 5))
    for key, label, style in (("calibration_test", "test", "o-"), ("calibration_train_augmented", "train (augmented)",
                                                                    "s--")):
        rows = [b for b in r[key]["bins"] if b["n"]]
        ax.plot([b["confidence"] for b in rows], [b["accuracy"] for b in rows], style,
                label=f"{label}: ECE {100 * r[key]['ece']:.2f} %")
    ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability of {r['teacher']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / "reliability.png", dpi=100)
    plt.close(fig)
    made.append(("reliability.png", "Reliability diagram (15 confidence bins)"))
    fig, ax = plt.subplots(figsize=(max(6, 0.08 * r["num_classes"] + 4), 3.5))
    xs = list(range(r["num_classes"]))
    width = 0.4
    for shift, key, label in ((-width / 2, "per_class_error_test", "test"),
                              (width / 2, "per_class_error_train_augmented", "train (augmented)")):
        ax.bar([x + shift for x in xs], [v or 0 for v in r[key]], width=width, label=label)
    names = r.get("classes")
    if r["num_classes"] <= 20:  # a label under every bar (the default ticks skip every other class)
        if names:
            ax.set_xticks(xs, [_class_label(x, names) for x in xs], rotation=30, ha="right", fontsize=8)
        else:
            ax.set_xticks(xs)
    ax.set_xlabel("class")
    ax.set_ylabel("error (%)")
    # both series: the augmented training error can exceed the test error (random-resized crops)
    top = max(v or 0 for key in ("per_class_error_test", "per_class_error_train_augmented") for v in r[key])
    headroom = 1.1
    if names and r["num_classes"] > 20:
        # too many classes for a name under each bar: name the worst few, above their bars
        for c in _worst_classes(r, WORST_NAMED_IN_PLOT):
            height = max(r["per_class_error_test"][c] or 0, r["per_class_error_train_augmented"][c] or 0)
            ax.annotate(_class_label(c, names), (c, height), xytext=(0, 2), textcoords="offset points",
                        rotation=90, ha="center", va="bottom", fontsize=7)
        headroom = 1.45  # room for the names above the tallest bars
    ax.set_ylim(0, max(5.0, top * headroom))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / "per_class_error.png", dpi=100)
    plt.close(fig)
    made.append(("per_class_error.png", "Error per class"))
    return made


def _markdown(r: Dict[str, Any], plots) -> str:
    a = r["augmented"]
    lines = [f"# Teacher {r['teacher']} on {r['data']}", "", r["verdict"], "",
             f"- checkpoint: `{r['checkpoint']}`; {r['train_size']} training / {r['test_size']} test images; "
             f"precision {r['precision']}, the teacher's forward {r['teacher_precision']}",
             f"- test error: {r['test_error']:.2f} %",
             f"- training error without augmentation: {r['train_error_clean']:.2f} %",
             f"- training error under the training augmentation (the samples BTKD rectifies), over the first "
             f"{a['epochs_measured']} epochs of seed {r['seed']}: {a['error']:.2f} %, i.e. "
             f"{', '.join(map(str, a['wrong_per_epoch']))} of {a['samples_per_epoch']} per epoch",
             f"- calibration: ECE {100 * r['calibration_test']['ece']:.2f} % on test, "
             f"{100 * r['calibration_train_augmented']['ece']:.2f} % on augmented training batches"]
    if "strong_view" in r:
        v = r["strong_view"]
        lines.append(f"- training error on the strong view (RandAugment + Cutout) a two-view host also distils and "
                     f"BTKD also rectifies: {v['error']:.2f} %, i.e. {', '.join(map(str, v['wrong_per_epoch']))} of "
                     f"{a['samples_per_epoch']} per epoch")
    if "split_decisions_changed_by_precision" in r:
        s = r["split_decisions_changed_by_precision"]
        for name in PRECISION_NAMES:
            if name in s:
                lines.append(f"- split decisions (teacher right or wrong) that a {PRECISION_NAMES[name]} forward changes against "
                             f"{s['reference']}: {', '.join(map(str, s[name]['per_epoch']))} of {s['of']} per epoch "
                             f"({100 * s[name]['share']:.4f} %)")
    # an index with its name where the data names its classes (47 (`maple_tree`) on CIFAR-100): an
    # ImageFolder's folders sort as text ("10" before "2"), so a bare index would read as another folder
    names = r.get("classes")

    def cls(i: int) -> str:
        return f"{i} (`{names[i]}`)" if names and names[i] != str(i) else str(i)

    for key, title in (("confused_pairs_test", "Most confused class pairs (test)"),
                       ("confused_pairs_train_augmented", "Most confused class pairs (augmented training batches)")):
        lines += ["", f"## {title}", "", "| true class | predicted | count |", "|---|---|---|"]
        lines += [f"| {cls(p['true'])} | {cls(p['predicted'])} | {p['count']} |" for p in r[key]] or ["| - | - | 0 |"]
    def pct(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.2f} %"

    test_err, aug_err = r["per_class_error_test"], r["per_class_error_train_augmented"]
    lines += ["", "## Classes with the highest test error", "",
              "| class | test error | training error (augmented) |", "|---|---|---|"]
    lines += [f"| {cls(c)} | {pct(test_err[c])} | {pct(aug_err[c])} |" for c in _worst_classes(r, WORST_IN_TABLE)] \
        or ["| - | 0.00 % | - |"]
    for name, caption in plots:
        lines += ["", f"## {caption}", "", f"![{caption}]({name})"]
    if not plots:
        lines += ["", PLOTS_SKIPPED]
    return "\n".join(lines) + "\n"
