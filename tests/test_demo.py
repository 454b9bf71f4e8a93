"""`btkd demo`: its fallback data has a teacher that is wrong on a visible share of its training set
(what BTKD is for), the demo says so beside the table, and without any demo data it says in one line
what to install."""

import pytest

import btkd.demo as demo
from btkd.cli import main


def no_fashion_mnist(name, root=None, split="train", **kw):
    raise FileNotFoundError("fashion_mnist: no root given and no data found in the default folders (x, y). Pass "
                            "root=...")


def test_without_fashion_mnist_the_demo_falls_back_to_digits_with_a_small_teacher(monkeypatch, capsys):
    monkeypatch.setattr(demo, "load_split", no_fashion_mnist)
    ds = demo.pick_dataset()
    assert ds["name"] == "digits" and ds["width"] == 3 and ds["teacher_epochs"] == 5
    assert "using scikit-learn's digits" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):
        demo.pick_dataset("fashion_mnist")


def test_without_any_demo_data_it_says_in_one_line_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(demo, "load_split", no_fashion_mnist)
    monkeypatch.setattr(demo, "_sklearn_available", lambda: False)
    assert main(["demo", "--quick"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "apt-get install dataset-fashion-mnist" in lines[0]
    assert "pip install 'btkd[digits]'" in lines[0] and "Traceback" not in captured.err


def test_the_digits_teacher_is_wrong_on_part_of_its_training_set(tmp_path, monkeypatch, capsys):
    # the demo's digits setting as it is (teacher: convnet width 3, 5 epochs); students shortened to 2 epochs
    monkeypatch.setitem(demo.SETTINGS, "digits", {**demo.SETTINGS["digits"], "student_epochs": 2})
    for name in ("teacher", "kd_btkd"):  # an earlier demo's runs: the demo runs again in their place
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "summary.json").write_text("{}")
    results = demo.run_demo(out=tmp_path / "report", runs=tmp_path / "runs", data="digits")
    assert results["teacher_wrong"] > 0.05, "BTKD needs a teacher that gets part of its training set wrong"
    assert results["n_rectified_per_epoch"] > 0.05 * 1437 * 0.5
    out = capsys.readouterr().out
    assert f"the teacher is wrong on {100 * results['teacher_wrong']:.1f} % of its augmented training samples" in out
    assert "KD+BTKD rectified" in out and "of 1,437" in out
    t = results["teacher"]
    assert f"{'teacher convnet (CE)':<28}{t['last_acc']:>15.2f}%{t['best_acc']:>15.2f}%" in out
    # the students learn from the teacher's last epoch: the best one is chosen on the test set
    import yaml

    for run in ("kd", "kd_btkd"):
        config = yaml.safe_load((tmp_path / "runs" / run / "config.yaml").read_text())
        assert config["model"]["teacher_checkpoint"].endswith("teacher/last.safetensors")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "the teacher is wrong on" in md and "| kd_btkd | digits | 1,437 | mlp | KD+BTKD |" in md


def test_quick_shortens_every_run_and_the_table_gives_last_then_best(tmp_path, monkeypatch, capsys):
    class BestFirst(demo.Trainer):  # a run whose best epoch came before its last, so the columns differ
        def fit(self):
            summary = super().fit()
            return {**summary, "best_acc": summary["last_acc"] + 1.0}

    monkeypatch.setattr(demo, "Trainer", BestFirst)
    results = demo.run_demo(out=tmp_path / "report", runs=tmp_path / "runs", data="digits", quick=True)
    assert [results[k]["epochs"] for k in ("teacher", "kd", "kd_btkd")] == [2, 2, 2]
    out = capsys.readouterr().out
    for key, label in (("teacher", "teacher convnet (CE)"), ("kd_btkd", "student mlp, KD+BTKD")):
        last = results[key]["last_acc"]
        assert f"{label:<28}{last:>15.2f}%{last + 1.0:>15.2f}%" in out
