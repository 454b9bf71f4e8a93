"""`btkd inspect-teacher`: calibration and confusions by hand, the augmented-error count equal to what
a distillation run then logs, the verdict for a teacher that is almost never wrong, the CLI."""

import json

import pytest
import torch

from btkd.config import config_to_dict, load_config
from btkd.engine import Trainer
from btkd.inspect_teacher import calibration, confused_pairs, inspect_teacher

DATA = {"name": "synthetic", "options": {"size": 96, "num_classes": 5, "image_size": 8, "prototypes": True},
        "batch_size": 16, "eval_batch_size": 40}


def test_calibration_by_hand():
    # four samples, two bins: top-1 confidences 0.9, 0.8 (bin (0.5, 1]) and 0.4, 0.4 (bin [0, 0.5])
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.3, 0.3, 0.4], [0.4, 0.35, 0.25]])
    logits = probs.clamp(min=1e-12).log()
    labels = torch.tensor([0, 1, 2, 1])  # right, wrong, right, wrong
    out = calibration(logits, labels, bins=2)
    low, high = out["bins"]
    assert (low["n"], high["n"]) == (2, 2)
    assert low["accuracy"] == pytest.approx(0.5) and low["confidence"] == pytest.approx(0.4)
    assert high["accuracy"] == pytest.approx(0.5) and high["confidence"] == pytest.approx(0.85)
    assert out["ece"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.35)


def test_a_confidence_on_a_bin_edge_is_in_the_bin_below():
    # bins are (lo, hi]: a two-way tie (confidence exactly 0.5) is in (0, 0.5], a saturated 1.0 in (0.5, 1]
    logits = torch.tensor([[0.0, 0.0], [60.0, 0.0], [60.0, 0.0]], dtype=torch.float64)
    out = calibration(logits, torch.tensor([0, 0, 0]), bins=2)
    low, high = out["bins"]
    assert (low["n"], low["confidence"], high["n"], high["confidence"]) == (1, 0.5, 2, 1.0)
    assert out["ece"] == pytest.approx(1 / 3 * 0.5)  # each bin weighted by its share of the samples


def test_confused_pairs_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    pred = torch.tensor([1, 1, 0, 0, 1, 1, 0])
    assert confused_pairs(pred, labels) == [{"true": 0, "predicted": 1, "count": 2},
                                            {"true": 1, "predicted": 0, "count": 1},
                                            {"true": 2, "predicted": 0, "count": 1},
                                            {"true": 2, "predicted": 1, "count": 1}]
    assert confused_pairs(labels, labels) == []


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("t")
    Trainer(load_config({"name": "teacher", "output_dir": str(out), "data": DATA,
                         "optim": {"epochs": 1, "milestones": []}, "runtime": {"progress": False},
                         "model": {"student": "convnet", "student_options": {"width": 4}},
                         "distill": {"method": "ce"}}), echo=lambda *_: None).fit()
    return out / "teacher" / "last.safetensors"


def distill_cfg(out, teacher, **data):
    return load_config({"name": "s", "output_dir": str(out), "data": {**DATA, **data},
                        "optim": {"epochs": 2, "milestones": []}, "runtime": {"progress": False},
                        "model": {"student": "mlp", "teacher": "convnet", "teacher_options": {"width": 4},
                                  "teacher_checkpoint": str(teacher)},
                        "distill": {"method": "kd", "btkd": {"enabled": True}}})


def test_augmented_errors_are_the_ones_training_rectifies(tmp_path, teacher):
    cfg = distill_cfg(tmp_path, teacher)
    r = inspect_teacher(cfg, tmp_path / "report", aug_epochs=2, echo=lambda *_: None)
    Trainer(cfg, echo=lambda *_: None).fit()
    log = [json.loads(line) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert r["augmented"]["wrong_per_epoch"] == [int(round(e["n_rectified"])) for e in log]
    assert r["augmented"]["samples_per_epoch"] == log[0]["samples"] == 96
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert r["test_error"] == pytest.approx(100 - summary["teacher_test_acc"])
    assert 0 < r["augmented"]["error"] < 100 and "BTKD rectifies" in r["verdict"]
    assert sum(c["count"] for c in r["confused_pairs_test"]) <= round(r["test_error"] * 96 / 100)
    a = r["augmented"]  # a batch of 16 sees error % of 16 wrong samples
    assert (a["batch_size"], a["expected_wrong_per_batch"]) == (16, pytest.approx(a["error"] / 100 * 16))
    # the training error without augmentation: the teacher's top-1 errors on the training set, in order
    from btkd.engine.build import build_data, build_teacher, setup_runtime

    rt = setup_runtime(cfg)
    data = build_data(cfg, rt)
    teacher = build_teacher(cfg, data, rt)
    with torch.no_grad():
        wrong = sum(int((teacher(x).argmax(1) != y).sum()) for x, y in data.train_eval_loader())
    assert r["train_error_clean"] == pytest.approx(100.0 * wrong / 96)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Most confused class pairs" in md and "ECE" in md
    assert f"- test error: {r['test_error']:.2f} %" in md
    assert f"- training error without augmentation: {r['train_error_clean']:.2f} %" in md
    for png in ("reliability.png", "per_class_error.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000


def test_a_new_report_removes_the_temp_files_a_killed_one_left_and_only_those(tmp_path, teacher):
    from btkd.inspect_teacher import PLOT_FILES

    out = tmp_path / "report"
    out.mkdir()
    stale = [out / f".{name}.k1ll3d.tmp" for name in ("teacher.json", "report.md") + PLOT_FILES]
    for p in stale:
        p.write_bytes(b"partial")
    (out / ".notes.txt.mine.tmp").write_text("the user's own")
    inspect_teacher(distill_cfg(tmp_path, teacher), out, aug_epochs=1, echo=lambda *_: None)
    assert not any(p.exists() for p in stale)
    assert (out / ".notes.txt.mine.tmp").read_text() == "the user's own"
    assert {p.name for p in out.glob("*.png")} == set(PLOT_FILES), "PLOT_FILES names every plot it writes"


def test_a_folded_teacher_is_measured_on_every_test_image(tmp_path, teacher):
    """Folding the teacher's BN (the default on a GPU) takes an example batch from the test loader;
    the test forward must still start at its first batch (it once lost a batch)."""
    plain = inspect_teacher(distill_cfg(tmp_path, teacher), tmp_path / "plain", aug_epochs=1, echo=lambda *_: None)
    cfg = distill_cfg(tmp_path, teacher)
    cfg.runtime.fold_teacher_bn = "on"
    cfg.data.global_batch_size = 32  # the batch BTKD's statistics span: the global one, when it is given
    folded = inspect_teacher(cfg, tmp_path / "folded", aug_epochs=1, echo=lambda *_: None)
    for r in (plain, folded):
        assert sum(b["n"] for b in r["calibration_test"]["bins"]) == r["test_size"] == 96
    assert folded["test_error"] == pytest.approx(plain["test_error"])
    assert (plain["augmented"]["batch_size"], folded["augmented"]["batch_size"]) == (16, 32)


def test_a_two_view_host_also_gets_the_strong_views_errors_which_training_rectifies_too(tmp_path, teacher):
    cfg = load_config(config_to_dict(distill_cfg(tmp_path, teacher)), ["distill.method=mlkd"])
    r = inspect_teacher(cfg, tmp_path / "report", aug_epochs=2, echo=lambda *_: None)
    assert "strong_view" in r and len(r["strong_view"]["wrong_per_epoch"]) == 2
    Trainer(cfg, echo=lambda *_: None).fit()
    log = [json.loads(line) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    # MLKD+BTKD rectifies the wrong rows of both views: the weak view's count plus the strong view's
    assert [w + s for w, s in zip(r["augmented"]["wrong_per_epoch"], r["strong_view"]["wrong_per_epoch"])] == \
        [int(round(e["n_rectified"])) for e in log]
    assert "strong view" in (tmp_path / "report" / "report.md").read_text()


def test_a_teacher_that_is_never_wrong_is_called_out(tmp_path, teacher, monkeypatch):
    import btkd.inspect_teacher as it

    cfg = distill_cfg(tmp_path, teacher)
    original = it._predict

    def oracle(model, loader, autocast):  # a perfect teacher: its top class is always the label
        p = original(model, loader, autocast)
        return it.Predictions(torch.nn.functional.one_hot(p.labels, p.logits.shape[1]).float() * 10, p.labels)

    monkeypatch.setattr(it, "_predict", oracle)
    r = inspect_teacher(cfg, tmp_path / "r", aug_epochs=1, echo=lambda *_: None)
    assert r["augmented"]["wrong_per_epoch"] == [0]
    assert "almost never wrong" in r["verdict"] and "nothing to rectify" in r["verdict"]


def test_the_verdict_calls_out_a_teacher_wrong_on_under_half_a_percent():
    from btkd.inspect_teacher import ALMOST_NEVER_WRONG, _verdict

    def report(wrong):
        return {"teacher": "t", "test_error": 5.0, "augmented": {"expected_rectified_per_epoch": wrong,
                "samples_per_epoch": 1000, "error": wrong / 10, "expected_wrong_per_batch": wrong / 1000 * 64,
                "batch_size": 64}}

    assert ALMOST_NEVER_WRONG == 0.005
    assert "almost never wrong" in _verdict(report(4)) and "BTKD rectifies" in _verdict(report(6))


def test_compare_bf16_in_a_bf16_run_counts_against_an_fp32_forward(tmp_path, teacher, monkeypatch):
    # the bf16 forward is the one measured; the changed split decisions are counted against an fp32 forward
    # of its own (here one that is always wrong, so every sample the bf16 forward gets right counts)
    import btkd.inspect_teacher as it

    cfg = distill_cfg(tmp_path, teacher)
    cfg.runtime.precision = "bf16"
    asked, original = [], it._predict_epoch

    def fp32_always_wrong(model, loader, epoch, precision, device):
        asked.append(precision)
        p = original(model, loader, epoch, precision, device)
        c = p.logits.shape[1]
        return it.Predictions(torch.nn.functional.one_hot((p.labels + 1) % c, c).float(), p.labels)

    monkeypatch.setattr(it, "_predict_epoch", fp32_always_wrong)
    r = inspect_teacher(cfg, tmp_path / "r", aug_epochs=1, compare_bf16=True, echo=lambda *_: None)
    a = r["augmented"]
    assert asked == ["fp32"] and r["teacher_precision"] == "bf16"
    assert r["split_decisions_changed_by_precision"]["bf16"]["per_epoch"] == \
        [a["samples_per_epoch"] - a["wrong_per_epoch"][0]]


def test_cli_from_a_weights_file_and_from_a_config(tmp_path, teacher, capsys):
    import yaml

    from btkd.cli import main

    assert main(["inspect-teacher", str(teacher), "--out", str(tmp_path / "a"), "--aug-epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "teacher convnet: test error" in out and (tmp_path / "a" / "teacher.json").is_file()
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"data": DATA, "model": {"student": "mlp", "teacher": "convnet",
                                                            "teacher_options": {"width": 4},
                                                            "teacher_checkpoint": str(teacher)}}))
    assert main(["inspect-teacher", str(path), "--out", str(tmp_path / "b"), "--aug-epochs", "1",
                 "--compare-bf16"]) == 0
    r = json.loads((tmp_path / "b" / "teacher.json").read_text())
    changed = r["split_decisions_changed_by_precision"]
    assert changed["reference"] == "fp32 (IEEE: no TF32)" and set(changed) == {"reference", "of", "bf16"}  # CPU: no tf32
    assert changed["of"] == 96 and 0 <= changed["bf16"]["per_epoch"][0] <= 96
    assert changed["bf16"]["share"] == changed["bf16"]["per_epoch"][0] / 96
    assert "that a bf16 autocast forward changes against fp32 (IEEE: no TF32)" in (tmp_path / "b" / "report.md").read_text()
    assert main(["inspect-teacher", str(tmp_path / "nope.safetensors"), "--model", "convnet"]) == 2


def test_an_imagefolder_teachers_report_names_its_class_folders(tmp_path, monkeypatch):
    """Class folders sort as text ("10" before "2"): the confused pairs name each index's folder, or
    "true class 1" reads as folder "1"."""
    import btkd.inspect_teacher as it
    from trees import random_image_tree

    random_image_tree(tmp_path / "tree", {"train": 4, "val": 2}, size=(12, 12), classes=("2", "10"))
    data = ["data.name=imagefolder", f"data.root={tmp_path / 'tree'}", "data.image_size=8", "data.workers=0",
            "data.batch_size=4", "data.eval_batch_size=4", "runtime.progress=false", f"output_dir={tmp_path}"]
    Trainer(load_config(None, [*data, "name=t", "optim.epochs=1", "optim.milestones=[]", "model.student=convnet",
                               "model.student_options={width: 4}", "distill.method=ce"]), echo=lambda *_: None).fit()
    cfg = load_config(None, [*data, "model.student=mlp", "model.teacher=convnet", "model.teacher_options={width: 4}",
                             f"model.teacher_checkpoint={tmp_path / 't' / 'last.safetensors'}", "distill.method=kd"])
    original = it._predict

    def always_first(model, loader, autocast, view=0):  # a teacher that always says class 0
        p = original(model, loader, autocast, view)
        return it.Predictions(torch.nn.functional.one_hot(torch.zeros_like(p.labels), 2).float(), p.labels)

    monkeypatch.setattr(it, "_predict", always_first)
    r = inspect_teacher(cfg, tmp_path / "r", aug_epochs=1, echo=lambda *_: None)
    assert r["classes"] == ["10", "2"] and r["confused_pairs_test"] == [
        {"true": 1, "true_name": "2", "predicted": 0, "predicted_name": "10", "count": 2}]
    assert r["per_class_error_test"] == [0.0, 100.0]  # class 0 always right, class 1 always wrong
    assert "| 1 (`2`) | 0 (`10`) | 2 |" in (tmp_path / "r" / "report.md").read_text()
    assert json.loads((tmp_path / "r" / "teacher.json").read_text())["classes"] == ["10", "2"]


def test_the_teacher_is_measured_in_the_forward_training_splits_with(tmp_path, teacher):
    """runtime.teacher_precision=fp32 under bf16 students: training splits on an fp32 teacher forward, so
    the report must too (it once measured the students' bf16 autocast)."""
    ref = inspect_teacher(distill_cfg(tmp_path, teacher), tmp_path / "fp32", aug_epochs=2, echo=lambda *_: None)
    same = distill_cfg(tmp_path, teacher)
    same.runtime.precision = "bf16"
    bf16 = inspect_teacher(same, tmp_path / "bf16", aug_epochs=1, echo=lambda *_: None)
    assert bf16["calibration_test"] != ref["calibration_test"]  # what a bf16 forward changes
    cfg = distill_cfg(tmp_path, teacher)
    cfg.runtime.precision, cfg.runtime.teacher_precision = "bf16", "fp32"
    r = inspect_teacher(cfg, tmp_path / "report", aug_epochs=2, compare_bf16=True, echo=lambda *_: None)
    assert r["calibration_test"] == ref["calibration_test"] and r["augmented"] == ref["augmented"]
    assert (r["precision"], r["teacher_precision"]) == ("bf16", "fp32")
    assert (ref["teacher_precision"], bf16["teacher_precision"]) == ("fp32", "bf16")
    changed = r["split_decisions_changed_by_precision"]  # a bf16 forward of its own, against the measured fp32 one
    assert changed["of"] == 96 and len(changed["bf16"]["per_epoch"]) == 2
    assert "the teacher's forward fp32" in (tmp_path / "report" / "report.md").read_text()
    Trainer(cfg, echo=lambda *_: None).fit()
    log = [json.loads(line) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert r["augmented"]["wrong_per_epoch"] == [int(round(e["n_rectified"])) for e in log]


def test_the_per_class_plot_shows_both_series_in_full(tmp_path, monkeypatch):
    """The y-range once followed the test errors alone: a higher augmented training error was cut off."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import btkd.inspect_teacher as it

    limits, close = {}, plt.close

    def record(fig):
        limits[fig.axes[0].get_xlabel()] = fig.axes[0].get_ylim()
        close(fig)

    monkeypatch.setattr(plt, "close", record)
    calib = calibration(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    r = {"teacher": "t", "num_classes": 3, "calibration_test": calib, "calibration_train_augmented": calib,
         "per_class_error_test": [10.0, 20.0, None], "per_class_error_train_augmented": [60.0, 5.0, None]}
    assert [name for name, _ in it._plots(r, tmp_path)] == ["reliability.png", "per_class_error.png"]
    assert limits["class"][1] >= 60.0


def test_the_per_class_plot_labels_every_class_of_a_small_dataset(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from btkd.inspect_teacher import _plots

    cal = {"bins": [{"n": 5, "confidence": 0.6, "accuracy": 0.5}], "ece": 0.1}
    r = {"teacher": "convnet", "num_classes": 10, "calibration_test": cal, "calibration_train_augmented": cal,
         "per_class_error_test": [float(c) for c in range(10)], "per_class_error_train_augmented": [1.0] * 10}
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    assert [name for name, _ in _plots(r, tmp_path)] == ["reliability.png", "per_class_error.png"]
    monkeypatch.undo()
    assert list(figures[1].axes[0].get_xticks()) == list(range(10))
    for fig in figures:
        plt.close(fig)


def test_without_matplotlib_the_report_and_the_cli_say_which_extra_to_install(tmp_path, teacher, capsys, monkeypatch):
    """matplotlib is the [report] extra: a plain install inspects the teacher without plots, and says
    so instead of pointing at plots that are not there."""
    import sys

    from btkd.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    assert main(["inspect-teacher", str(teacher), "--out", str(tmp_path / "r"), "--aug-epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "pip install 'btkd[report]'" in out and "plots beside it" not in out
    assert "pip install 'btkd[report]'" in (tmp_path / "r" / "report.md").read_text()
    assert not list((tmp_path / "r").glob("*.png"))


def _forced(monkeypatch, num_classes, wrong):
    """Make the teacher predict ``wrong[label]`` for the labels in ``wrong``, and the label elsewhere."""
    import btkd.inspect_teacher as it

    original = it._predict

    def predict(model, loader, autocast, view=0):
        p = original(model, loader, autocast, view)
        pred = p.labels.clone()
        for true, said in wrong.items():
            pred[p.labels == true] = said
        return it.Predictions(torch.nn.functional.one_hot(pred, num_classes).float() * 5, p.labels)

    monkeypatch.setattr(it, "_predict", predict)


def _weights(path, num_classes, in_channels=3):
    """An untrained width-4 convnet's weights: what the report measures is forced by `_forced`."""
    from btkd.engine.checkpoint import export_weights
    from btkd.models import build_model

    export_weights(build_model("convnet", num_classes=num_classes, in_channels=in_channels, width=4), path)
    return path


def test_a_cifar100_teachers_report_names_its_classes(tmp_path, monkeypatch):
    """Class 47 mistaken for 52 reads maple_tree -> oak_tree, in the tables, the JSON and the plot, with
    the indices kept beside the names."""
    import numpy as np

    import matplotlib.pyplot as plt

    labels = np.array([47, 52, 0, 99] * 4)  # a CIFAR-100 look-alike of four classes, 32x32 RGB
    root = tmp_path / "c100"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("train-0", "test"):
        np.savez_compressed(root / f"{name}.npz", x=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), y=labels)
    _forced(monkeypatch, 100, {47: 52})
    cfg = load_config(None, ["data.name=cifar100", f"data.root={root}", "data.batch_size=8", "data.eval_batch_size=8",
                             "runtime.progress=false", "model.student=mlp", "model.teacher=convnet",
                             "model.teacher_options={width: 4}",
                             f"model.teacher_checkpoint={_weights(tmp_path / 't.safetensors', 100)}"])
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", figures.append)
    r = inspect_teacher(cfg, tmp_path / "r", aug_epochs=1, echo=lambda *_: None)
    monkeypatch.setattr(plt, "close", close)
    assert r["classes"][47] == "maple_tree" and len(r["classes"]) == 100
    assert r["confused_pairs_test"] == [
        {"true": 47, "true_name": "maple_tree", "predicted": 52, "predicted_name": "oak_tree", "count": 4}]
    assert json.loads((tmp_path / "r" / "teacher.json").read_text())["confused_pairs_test"] == r["confused_pairs_test"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| 47 (`maple_tree`) | 52 (`oak_tree`) | 4 |" in md
    assert "## Classes with the highest test error" in md and "| 47 (`maple_tree`) | 100.00 % | 100.00 % |" in md
    # 100 classes: too many to name every bar, so the worst are named above theirs
    per_class = figures[1].axes[0]
    assert "47 maple_tree" in [t.get_text() for t in per_class.texts]
    for fig in figures:
        close(fig)


def test_a_registered_dataset_without_class_names_reports_indices(tmp_path, monkeypatch):
    from btkd.data import DATASETS, Split, load_split

    def load_mine(root, split):  # a loader of its own that names no classes
        s = load_split("synthetic", None, split, size=24, num_classes=5, image_size=8)
        return Split(s.images, s.labels, 5, s.mean, s.std, "mine")

    monkeypatch.setitem(DATASETS, "mine", load_mine)
    _forced(monkeypatch, 5, {3: 1})
    cfg = load_config(None, ["data.name=mine", "data.batch_size=8", "data.eval_batch_size=8", "runtime.progress=false",
                             "model.student=mlp", "model.teacher=convnet", "model.teacher_options={width: 4}",
                             f"model.teacher_checkpoint={_weights(tmp_path / 't.safetensors', 5)}"])
    r = inspect_teacher(cfg, tmp_path / "r", aug_epochs=1, echo=lambda *_: None)
    assert r["classes"] is None and [set(p) for p in r["confused_pairs_test"]] == [{"true", "predicted", "count"}]
    assert r["confused_pairs_test"][0]["true"] == 3 and r["confused_pairs_test"][0]["predicted"] == 1
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"| 3 | 1 | {r['confused_pairs_test'][0]['count']} |" in md and "| 3 | 100.00 % |" in md


def test_the_per_class_plot_names_every_class_of_a_small_named_dataset(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from btkd.data.cifar import CIFAR10_CLASSES
    from btkd.inspect_teacher import _plots

    cal = {"bins": [{"n": 5, "confidence": 0.6, "accuracy": 0.5}], "ece": 0.1}
    r = {"teacher": "convnet", "num_classes": 10, "classes": list(CIFAR10_CLASSES), "calibration_test": cal,
         "calibration_train_augmented": cal, "per_class_error_test": [float(c) for c in range(10)],
         "per_class_error_train_augmented": [1.0] * 10}
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    _plots(r, tmp_path)
    monkeypatch.undo()
    ax = figures[1].axes[0]
    assert list(ax.get_xticks()) == list(range(10))
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{i} {n}" for i, n in enumerate(CIFAR10_CLASSES)]
    for fig in figures:
        plt.close(fig)
