"""`btkd demo` / `make demo`: a teacher, then students with KD and with KD+BTKD, on real data.

Fashion-MNIST (Debian's dataset-fashion-mnist) when it is installed, else scikit-learn's digits.
Sized to finish within a few minutes on 2 CPU cores; a GPU makes it faster, not different.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Dict

from .config import load_config
from .data import load_split
from .engine import Trainer
from .report import write_report


def pick_dataset() -> Dict:
    try:
        load_split("fashion_mnist", None, "test")
        return {"name": "fashion_mnist", "train_subset": 16000, "crop_padding": 2, "flip": True,
                "teacher_epochs": 8, "student_epochs": 8, "batch_size": 128, "width": 16}
    except (FileNotFoundError, ValueError) as err:
        print(f"Fashion-MNIST is not available ({str(err).splitlines()[0]}); using scikit-learn's digits instead.\n"
              "Install it with `apt-get install dataset-fashion-mnist` for the full demo.")
        return {"name": "digits", "train_subset": None, "crop_padding": 1, "flip": False,
                "teacher_epochs": 30, "student_epochs": 30, "batch_size": 32, "width": 16}


def run_demo(out: Path = Path("reports/demo"), runs: Path = Path("runs/demo"), quick: bool = False,
             seed: int = 0) -> Dict[str, Dict]:
    ds = pick_dataset()
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
    print(f"[1/3] teacher: convnet (width {ds['width']}) with cross-entropy on {ds['name']}")
    teacher_cfg = load_config(None, common + ["name=teacher", "model.student=convnet", "distill.method=ce",
                                              f"model.student_options={{width: {ds['width']}}}",
                                              f"optim.epochs={ds['teacher_epochs']}"])
    results = {"teacher": Trainer(teacher_cfg).fit()}
    teacher_ckpt = runs / "teacher" / "last.safetensors"  # the last epoch: never chosen on the test set
    student = common + ["model.student=mlp", "model.teacher=convnet", f"model.teacher_checkpoint={teacher_ckpt}",
                        f"model.teacher_options={{width: {ds['width']}}}", f"optim.epochs={ds['student_epochs']}",
                        "distill.method=kd", "distill.options={tau: 4.0}"]
    print("[2/3] student: mlp with KD")
    results["kd"] = Trainer(load_config(None, student + ["name=kd"])).fit()
    print("[3/3] student: mlp with KD+BTKD")
    results["kd_btkd"] = Trainer(load_config(None, student + ["name=kd_btkd", "distill.btkd.enabled=true"])).fit()
    elapsed = time.perf_counter() - t0

    print()
    print(f"{'model':<28}{'last-epoch acc':>16}{'best-epoch acc':>16}")
    for key, label in (("teacher", "teacher convnet (CE)"), ("kd", "student mlp, KD"), ("kd_btkd", "student mlp, KD+BTKD")):
        s = results[key]
        print(f"{label:<28}{s['last_acc']:>15.2f}%{s['best_acc']:>15.2f}%")
    path = write_report([runs / k for k in ("teacher", "kd", "kd_btkd")], out,
                        title=f"btkd demo on {ds['name']}",
                        notes=[f"dataset: {ds['name']}" + (f" (first {ds['train_subset']} training images)"
                                                           if ds["train_subset"] else ""),
                               f"seed {seed}; one seed only, so differences of a few tenths are noise",
                               f"total wall time {elapsed:.0f} s"])
    print(f"\nreport: {path}  (plots beside it)")
    return results
