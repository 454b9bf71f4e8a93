"""`btkd demo` / `make demo`: a teacher, then students with KD and with KD+BTKD, on real data.

BTKD acts on the training samples the teacher gets wrong, so the demo's teacher must get a visible
share of them wrong. Fashion-MNIST (Debian's dataset-fashion-mnist) when it is installed: the small
convnet teacher (width 16, 8 epochs on 16,000 images) is wrong on 15.3 % of its augmented training
images (seed 0), and the whole demo takes about 2.5 minutes on 2 CPU cores. Otherwise scikit-learn's
digits with a deliberately narrow, briefly trained teacher (convnet of width 3, 5 epochs), wrong on
9-12 % of its augmented training images over seeds 0-3 (a width-16 teacher trained for 30 epochs is
right on every one, and BTKD then has nothing to rectify); about 10 seconds. The demo prints that
error rate and the samples BTKD rectified per epoch beside the table.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Dict, Optional

from .config import load_config
from .data import load_split
from .engine import Trainer
from .engine.run_folder import read_log
from .report import write_report

__all__ = ["run_demo", "pick_dataset", "DemoDataMissing", "SETTINGS"]

SETTINGS = {
    "fashion_mnist": {"name": "fashion_mnist", "train_subset": 16000, "crop_padding": 2, "flip": True,
                      "teacher_epochs": 8, "student_epochs": 8, "batch_size": 128, "width": 16},
    # A narrow teacher trained briefly: wrong on ~10 % of its augmented training samples.
    "digits": {"name": "digits", "train_subset": None, "crop_padding": 1, "flip": False,
               "teacher_epochs": 5, "student_epochs": 30, "batch_size": 32, "width": 3},
}

INSTALL_HINT = ("no demo data: install Fashion-MNIST (as root: apt-get install dataset-fashion-mnist) or scikit-learn "
                "for the digits fallback (pip install 'btkd[digits]')")


class DemoDataMissing(FileNotFoundError):
    """Neither of the demo's datasets can be loaded."""


def _sklearn_available() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def pick_dataset(choice: str = "auto") -> Dict:
    """The demo's setting: ``fashion_mnist``, ``digits``, or ``auto`` (Fashion-MNIST when its files are
    found, else digits). Raises `DemoDataMissing` (one line: what to install) when neither can load."""
    if choice not in ("auto", "fashion_mnist", "digits"):
        raise ValueError(f"demo data {choice!r}: expected auto, fashion_mnist or digits")
    reason = ""
    if choice in ("auto", "fashion_mnist"):
        try:
            load_split("fashion_mnist", None, "test")
            return dict(SETTINGS["fashion_mnist"])
        except (FileNotFoundError, ValueError) as err:
            if choice == "fashion_mnist":
                raise
            reason = str(err).splitlines()[0].split(". ")[0]
    if not _sklearn_available():
        raise DemoDataMissing(INSTALL_HINT)
    if choice == "auto":
        print(f"Fashion-MNIST is not available ({reason}); using scikit-learn's digits instead, with a small, "
              "briefly trained teacher so that it gets part of its training set wrong.\n"
              "For the full demo: apt-get install dataset-fashion-mnist (as root; `make demo` tries it).")
    return dict(SETTINGS["digits"])


def run_demo(out: Path = Path("reports/demo"), runs: Path = Path("runs/demo"), quick: bool = False,
             seed: int = 0, data: str = "auto") -> Dict[str, Dict]:
    ds = pick_dataset(data)
    if quick:
        ds.update(train_subset=2000 if ds["name"] == "fashion_mnist" else None, teacher_epochs=2, student_epochs=2)
    for name in ("teacher", "kd", "kd_btkd"):  # the demo's own folders, rebuilt on every run
        shutil.rmtree(runs / name, ignore_errors=True)
    common = [f"seed={seed}", f"output_dir={runs}", f"data.name={ds['name']}",
              f"data.crop_padding={ds['crop_padding']}", f"data.flip={str(ds['flip']).lower()}",
              f"data.batch_size={ds['batch_size']}", "optim.lr=0.05", "optim.lr_schedule=cosine",
              "runtime.progress=true"]
    if ds["train_subset"]:
        common.append(f"data.train_subset={ds['train_subset']}")
    t0 = time.perf_counter()
    print(f"[1/3] teacher: convnet (width {ds['width']}) with cross-entropy on {ds['name']}, "
          f"{ds['teacher_epochs']} epochs")
    teacher_cfg = load_config(None, common + ["name=teacher", "model.student=convnet", "distill.method=ce",
                                              f"model.student_options={{width: {ds['width']}}}",
                                              f"optim.epochs={ds['teacher_epochs']}"])
    trainer = Trainer(teacher_cfg)
    train_size = trainer.train_size
    results = {"teacher": trainer.fit()}
    teacher_ckpt = runs / "teacher" / "last.safetensors"  # the last epoch: never chosen on the test set
    student = common + ["model.student=mlp", "model.teacher=convnet", f"model.teacher_checkpoint={teacher_ckpt}",
                        f"model.teacher_options={{width: {ds['width']}}}", f"optim.epochs={ds['student_epochs']}",
                        "distill.method=kd", "distill.options={tau: 4.0}"]
    print(f"[2/3] student: mlp with KD, {ds['student_epochs']} epochs")
    results["kd"] = Trainer(load_config(None, student + ["name=kd"])).fit()
    print(f"[3/3] student: mlp with KD+BTKD, {ds['student_epochs']} epochs")
    results["kd_btkd"] = Trainer(load_config(None, student + ["name=kd_btkd", "distill.btkd.enabled=true"])).fit()
    elapsed = time.perf_counter() - t0

    bias = teacher_bias(runs / "kd_btkd", train_size)
    print()
    print(f"{'model':<28}{'last-epoch acc':>16}{'best-epoch acc':>16}")
    rows = (("teacher", "teacher convnet (CE)"), ("kd", "student mlp, KD"), ("kd_btkd", "student mlp, KD+BTKD"))
    for key, label in rows:
        s = results[key]
        print(f"{label:<28}{s['last_acc']:>15.2f}%{s['best_acc']:>15.2f}%")
    print()
    for line in bias["lines"]:
        print(line)
    path = write_report([runs / k for k in ("teacher", "kd", "kd_btkd")], out,
                        title=f"btkd demo on {ds['name']}",
                        notes=[f"dataset: {ds['name']}, {train_size:,} training images"
                               + (" (a seeded, class-stratified draw)" if ds["train_subset"] else ""),
                               *bias["lines"],
                               f"seed {seed}; one seed only, so differences of a few tenths are noise",
                               f"total wall time {elapsed:.0f} s"])
    plots = "plots skipped" not in path.read_text()
    print(f"\nreport: {path}" + ("  (plots beside it)" if plots else "  (no plots: pip install 'btkd[report]')"))
    results["teacher_wrong"] = bias["frac_wrong"]
    results["n_rectified_per_epoch"] = bias["n_rectified"]
    results["wall_time"] = elapsed
    return results


def teacher_bias(run_dir: Path, train_size: Optional[int] = None) -> Dict:
    """What BTKD had to work with in a KD+BTKD run: the teacher's error on the augmented training
    batches (``frac_wrong``) and the samples rectified per epoch (``n_rectified``), means over epochs."""
    log = read_log(Path(run_dir) / "log.jsonl")
    wrong = [r["frac_wrong"] for r in log if "frac_wrong" in r]
    rectified = [r["n_rectified"] for r in log if "n_rectified" in r]
    frac = sum(wrong) / len(wrong) if wrong else None
    n = sum(rectified) / len(rectified) if rectified else None
    lines = []
    if frac is not None:
        lines.append(f"the teacher is wrong on {100 * frac:.1f} % of its augmented training samples (mean over "
                     f"{len(wrong)} epochs): these are the samples BTKD rectifies")
    if n is not None:
        of = f" of {train_size:,}" if train_size else ""
        lines.append(f"KD+BTKD rectified {n:,.0f} training samples per epoch{of}")
    return {"frac_wrong": frac, "n_rectified": n, "lines": lines}
