"""Teachers by name: publish a finished run under weights/, load it as weights:NAME, refuse a damaged one."""

import json

import pytest
import torch

from btkd import DamagedFileError
from btkd.config import load_config
from btkd.engine import Trainer
from btkd.weights import add_weights, resolve_checkpoint

DATA = {"name": "synthetic", "options": {"size": 64, "num_classes": 4, "image_size": 8}, "batch_size": 16}


def test_publish_a_teacher_and_distil_from_it_by_name(tmp_path, monkeypatch):
    teacher = Trainer(load_config({"name": "t", "output_dir": str(tmp_path), "data": DATA,
                                   "optim": {"epochs": 1, "milestones": []}, "runtime": {"progress": False},
                                   "model": {"student": "convnet", "student_options": {"width": 4}},
                                   "distill": {"method": "ce"}}), echo=lambda *_: None)
    summary = teacher.fit()
    (tmp_path / "t" / "inspect_teacher.json").write_text('{"teacher": "convnet"}')  # a unit's precision check
    entry = add_weights(tmp_path / "weights", "tiny", tmp_path / "t", card="cpu", command="pytest")
    assert json.loads((tmp_path / "weights" / "tiny" / "inspect_teacher.json").read_text()) == {"teacher": "convnet"}
    assert entry["test_acc_last"] == summary["last_acc"] and entry["epochs"] == 1 and entry["model"] == "convnet"
    assert (tmp_path / "weights" / "tiny" / "log.jsonl").is_file()
    manifest = json.loads((tmp_path / "weights" / "manifest.json").read_text())
    assert manifest["tiny"]["sha256"] == entry["sha256"]
    monkeypatch.setenv("BTKD_WEIGHTS", str(tmp_path / "weights"))
    assert resolve_checkpoint("weights:tiny") == tmp_path / "weights" / "tiny.safetensors"
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for k, v in load_file(resolve_checkpoint("weights:tiny")).items()
               if v.is_floating_point())
    student = Trainer(load_config({"name": "s", "output_dir": str(tmp_path), "data": DATA,
                                   "optim": {"epochs": 1, "milestones": []}, "runtime": {"progress": False},
                                   "model": {"student": "mlp", "teacher": "convnet", "teacher_options": {"width": 4},
                                             "teacher_checkpoint": "weights:tiny"},
                                   "distill": {"method": "kd", "btkd": {"enabled": True}}}), echo=lambda *_: None)
    s = student.fit()
    assert s["teacher_test_acc"] == pytest.approx(summary["last_acc"], abs=2.0)  # half-precision weights
    from btkd.cli import main

    # inspect-teacher by name: the model and data of the teacher's own run
    assert main(["inspect-teacher", "weights:tiny", "--out", str(tmp_path / "inspect"), "--aug-epochs", "1"]) == 0
    report = json.loads((tmp_path / "inspect" / "teacher.json").read_text())
    assert report["teacher"] == "convnet" and report["checkpoint"] == "weights:tiny" and report["train_size"] == 64
    assert report["test_error"] == pytest.approx(100 - s["teacher_test_acc"], abs=1e-6)
    with pytest.raises(FileNotFoundError, match="Known names: \\['tiny'\\]"):
        resolve_checkpoint("weights:nope")
    (tmp_path / "weights" / "tiny.safetensors").write_bytes(b"x" * 100)
    with pytest.raises(DamagedFileError, match="sha256 differs"):
        resolve_checkpoint("weights:tiny")
    assert str(resolve_checkpoint("some/path.pth")) == "some/path.pth"
