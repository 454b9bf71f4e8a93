"""The README's Python example runs as written, so it can never rot."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_training_loop_example_runs(capsys):
    example = python_blocks()[0]
    assert "BTKD(host=\"kd\"" in example
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and printed[-1].startswith("2 ")
    assert namespace["terms"]["total"].item() > 0


def test_building_blocks_example_runs():
    import torch

    block = python_blocks()[1]
    namespace = {}  # as written: it runs on its own
    exec(compile(block, str(README), "exec"), namespace)
    ns = namespace
    assert ns["right"].dtype == torch.bool and 0 <= ns["beta"] <= 1
    assert torch.equal(ns["fixed"].argmax(1), ns["labels"]) and torch.equal(ns["probs"].argmax(1), ns["labels"])


def test_own_parts_example_trains_from_its_yaml(tmp_path, monkeypatch):
    """The README's my_parts.py and its config, as written, train a student with a teacher of the
    pair (here a random one) on the registered dataset."""
    import sys

    import torch
    from safetensors.torch import save_file

    from btkd import HOSTS
    from btkd.config import load_config
    from btkd.data import DATASETS
    from btkd.engine import Trainer
    from btkd.models import MODELS, build_model

    module = next(b for b in python_blocks() if b.startswith("# my_parts.py"))
    config = re.search(r"```yaml\n(imports: \[my_parts\].*?)```", README.read_text(), flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "my_parts.py").write_text(module)
    (tmp_path / "mine.yaml").write_text(config)
    save_file(build_model("resnet32x4", num_classes=10).state_dict(), str(tmp_path / "teacher.safetensors"))
    try:
        cfg = load_config(str(tmp_path / "mine.yaml"), [
            "data.name=mine", "model.teacher_checkpoint=teacher.safetensors", "optim.epochs=1", "optim.milestones=[]",
            "data.eval_batch_size=64", "runtime.progress=false", "model.student=tiny", "name=mine"])
        trainer = Trainer(cfg, echo=lambda *_: None)
        assert type(trainer.loss_fn.host).__name__ == "MSE" and type(trainer.student).__name__ == "Sequential"
        trainer.fit()
        log = (tmp_path / "runs" / "mine" / "log.jsonl").read_text().splitlines()
        assert len(log) == 1 and '"beta": 1.0' in log[0] and '"frac_wrong"' in log[0]
    finally:
        HOSTS.pop("mse", None)
        MODELS.pop("tiny", None)
        DATASETS.pop("mine", None)
        sys.modules.pop("my_parts", None)


def test_training_from_python_example_runs(tmp_path, monkeypatch, capsys):
    """"Training from Python", as written: a teacher, a KD+BTKD student and a KD vs KD+BTKD bench
    train a couple of epochs each on the synthetic task, into runs/ of the current directory."""
    import json

    section = README.read_text().split("## Training from Python\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert "Trainer(" in block and "load_config(" in block and "run_bench(" in block
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "student" in printed and "kd_btkd - kd: " in printed and "95 % interval [" in printed
    summary = namespace["summary"]
    assert summary["epochs_done"] == 2 and summary["btkd"] and 0 <= summary["last_acc"] <= 100
    assert 0 < summary["frac_wrong_mean"] < 1  # a teacher that is wrong on some samples: BTKD had work
    assert json.loads((tmp_path / "runs" / "kd_btkd" / "summary.json").read_text())["last_acc"] == summary["last_acc"]
    assert (tmp_path / "runs" / "kd_btkd" / "config.yaml").read_text().count("lr: 0.1") == 1  # the override
    assert {(c["a"], c["b"], c["n"]) for c in namespace["results"]["comparisons"]} == {("kd_btkd", "kd", 2)}
    assert (tmp_path / "runs" / "bench" / "results.md").is_file()
    # the built-in recipe the prose below the block shows loads as written
    from btkd.config import load_config

    (builtin,) = re.findall(r"`(load_config\(\"cifar100/.*?\))`", section)
    assert eval(builtin, {"load_config": load_config}).optim.epochs == 10
