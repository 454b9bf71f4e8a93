"""Teachers by name: publish a finished run under weights/, load it as weights:NAME, refuse a damaged one."""

import json
from pathlib import Path

import pytest
import torch

from btkd import DamagedFileError
from btkd.config import load_config
from btkd.engine import Trainer
from btkd.weights import add_weights, resolve_checkpoint

DATA = {"name": "synthetic", "options": {"size": 64, "num_classes": 4, "image_size": 8}, "batch_size": 16}


# a 4-wide convnet teacher, and an MLP distilled (KD+BTKD) from the teacher published as weights:tiny
TEACHER = {"model": {"student": "convnet", "student_options": {"width": 4}}, "distill": {"method": "ce"}}
STUDENT = {"model": {"student": "mlp", "teacher": "convnet", "teacher_options": {"width": 4},
                     "teacher_checkpoint": "weights:tiny"},
           "distill": {"method": "kd", "btkd": {"enabled": True}}}


def run(tmp_path, name, what):
    """A one-epoch run ``name`` in ``tmp_path`` on the tiny synthetic data."""
    return Trainer(load_config({"name": name, "output_dir": str(tmp_path), "data": DATA,
                                "optim": {"epochs": 1, "milestones": []}, "runtime": {"progress": False}, **what}),
                   echo=lambda *_: None)


def test_publish_a_teacher_and_distil_from_it_by_name(tmp_path, monkeypatch, capsys):
    summary = run(tmp_path, "t", TEACHER).fit()
    from btkd.cli import main

    # a run's checkpoint.pt holds its last epoch's student: it evaluates (and teaches) as last.safetensors
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "t" / "last.safetensors"), "--device", "cpu"]) == 0
    last = capsys.readouterr().out
    assert main(["eval", str(tmp_path / "t" / "checkpoint.pt"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == last and f"top-1 {summary['last_acc']:.2f}%" in last
    (tmp_path / "t" / "inspect_teacher.json").write_text('{"teacher": "convnet"}')  # a unit's precision check
    entry = add_weights(tmp_path / "weights", "tiny", tmp_path / "t", card="cpu", command="pytest")
    assert json.loads((tmp_path / "weights" / "tiny" / "inspect_teacher.json").read_text()) == {"teacher": "convnet"}
    (tmp_path / "t" / "inspect_teacher.json").unlink()  # republished without a check: the old one goes
    add_weights(tmp_path / "weights", "tiny", tmp_path / "t", card="cpu", command="pytest")
    assert not (tmp_path / "weights" / "tiny" / "inspect_teacher.json").exists()
    assert entry["test_acc_last"] == summary["last_acc"] and entry["epochs"] == 1 and entry["model"] == "convnet"
    assert (tmp_path / "weights" / "tiny" / "log.jsonl").is_file()
    manifest = json.loads((tmp_path / "weights" / "manifest.json").read_text())
    assert manifest["tiny"]["sha256"] == entry["sha256"]
    monkeypatch.setenv("BTKD_WEIGHTS", str(tmp_path / "weights"))
    assert resolve_checkpoint("weights:tiny") == tmp_path / "weights" / "tiny.safetensors"
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for k, v in load_file(resolve_checkpoint("weights:tiny")).items()
               if v.is_floating_point())
    student = run(tmp_path, "s", STUDENT)
    s = student.fit()
    assert s["teacher_test_acc"] == pytest.approx(summary["last_acc"], abs=2.0)  # half-precision weights
    # eval by name: the model and its options come from the teacher's record (a width-4 convnet)
    capsys.readouterr()
    assert main(["eval", "weights:tiny", "--device", "cpu"]) == 0
    assert f"convnet on synthetic test: top-1 {s['teacher_test_acc']:.2f}%" in capsys.readouterr().out

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


def test_large_weights_are_sharded_and_load_whole(tmp_path, monkeypatch):
    """Files that travel stay under 16 MiB: vgg13's half-precision weights (18 MiB) go in shards."""
    import btkd.weights as w
    from btkd.models import build_model, load_checkpoint

    torch.manual_seed(0)
    state = {"a": torch.randn(1000), "b": torch.randn(1000), "c": torch.randn(1000), "n": torch.tensor(3)}
    limit = 1024 + 2 * (2000 + 256)  # two of the 2,000-byte half tensors per file
    files = w.save_half(state, tmp_path / "a", "net", max_bytes=limit)
    assert [f.name for f in files] == ["net-00001-of-00002.safetensors", "net-00002-of-00002.safetensors"]
    assert all(f.stat().st_size <= limit for f in files)
    assert w.shard_files(files[1]) == files and w.shard_files(tmp_path / "x.safetensors") == [tmp_path / "x.safetensors"]
    whole = w.read_weights(files[0])
    assert sorted(whole) == sorted(state) and all(torch.equal(whole[k], v.half() if v.is_floating_point() else v)
                                              for k, v in state.items())
    one = w.save_half(state, tmp_path / "a", "net")  # republished whole: the old shards go
    assert [f.name for f in one] == ["net.safetensors"] and [p.name for p in (tmp_path / "a").iterdir()] == \
        ["net.safetensors"]
    assert w.checkpoint_sha256(one[0]) == w.file_sha256(one[0])
    # a model loads from its first shard: every shard is read
    model = build_model("convnet", num_classes=4, width=8)
    files = w.save_half(model.state_dict(), tmp_path / "b", "net", max_bytes=12_000)
    assert len(files) == 3
    again = load_checkpoint(build_model("convnet", num_classes=4, width=8), files[0])
    assert all(torch.equal(a, b.half().float() if b.is_floating_point() else b)
               for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    sha = w.checkpoint_sha256(files[0])
    assert sha != w.file_sha256(files[0]) and sha == w.checkpoint_sha256(files[2])
    files[2].unlink()
    with pytest.raises(FileNotFoundError, match="net-00003-of-00003.safetensors is missing"):
        load_checkpoint(model, files[0])
    with pytest.raises(ValueError, match="alone takes"):
        w.save_half(state, tmp_path / "c", "net", max_bytes=1000)


def test_a_sharded_teacher_is_published_checked_and_distilled_from(tmp_path, monkeypatch):
    import btkd.weights as w

    run(tmp_path, "t", TEACHER).fit()
    monkeypatch.setattr(w, "MAX_FILE_BYTES", 6 * 1024)  # a 4-wide convnet's weights in shards
    entry = add_weights(tmp_path / "weights", "tiny", tmp_path / "t", card="cpu", command="pytest")
    assert entry["file"].startswith("tiny-00001-of-0000") and len(entry["shards"]) >= 2
    monkeypatch.setenv("BTKD_WEIGHTS", str(tmp_path / "weights"))
    assert resolve_checkpoint("weights:tiny").name == entry["file"]
    student = run(tmp_path, "s", STUDENT)
    summary = student.fit()
    assert summary["teacher_test_acc"] is not None
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["teacher_checkpoint_sha256"] == entry["sha256"]  # over every shard
    second = tmp_path / "weights" / entry["shards"][1]
    second.write_bytes(second.read_bytes()[:-1] + b"\0")
    with pytest.raises(DamagedFileError, match="sha256 differs"):
        resolve_checkpoint("weights:tiny")


def test_a_bench_checkpoint_names_its_students_instead_of_loading_one(tmp_path):
    from btkd.models import build_model, load_checkpoint

    model = build_model("convnet", num_classes=4, width=4)
    state = {"format": 1, "epoch": 3, "members": {"kd-s0": {"student": model.state_dict()},
                                                  "kd_btkd-s0": {"student": model.state_dict()}}}
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"a bench's checkpoint holding 2 students \(kd-s0, kd_btkd-s0\); load one "
                                         r"student's last.safetensors"):
        load_checkpoint(model, tmp_path / "checkpoint.pt")
    state["members"] = {"kd-s0": {"student": None}}
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"holds no weights \(it diverged in its first epoch\)"):
        load_checkpoint(model, tmp_path / "checkpoint.pt")


def test_a_warmup_as_long_as_the_run_is_warned_of(tmp_path):
    run(tmp_path, "t", TEACHER).fit()
    said = []
    student = {"model": {"student": "mlp", "teacher": "convnet", "teacher_options": {"width": 4},
                         "teacher_checkpoint": str(tmp_path / "t" / "last.safetensors")}}
    for warmup, warned in ((20, True), (2, True), (1, False)):  # DKD's recipe warm-up on a 2-epoch run, then shorter
        cfg = {"name": f"dkd{warmup}", "output_dir": str(tmp_path), "data": DATA, "optim": {"epochs": 2, "milestones": []},
               "runtime": {"progress": False}, **student, "distill": {"method": "dkd", "options": {"warmup": warmup}}}
        said.clear()
        Trainer(load_config(cfg), echo=said.append)
        hits = [s for s in said if "warmup" in s]
        assert bool(hits) == warned, said
        if warmup == 20:
            assert "distill.options.warmup=20 epochs is not below optim.epochs=2, so dkd's loss never reaches" in hits[0]
        if warmup == 2:  # the factor (epoch + 1) / 2 is 1 in the second epoch
            assert "so dkd's loss reaches its full weight in the last epoch only" in hits[0]


def test_a_student_switched_by_an_override_is_told_the_recipes_learning_rate(tmp_path):
    """The CIFAR recipe's lr follows the student (0.01 for MobileNet/ShuffleNet, else 0.05); a
    config's student switched by an override keeps its pair's lr, which is said."""
    from trees import write_shards

    write_shards(tmp_path, (("train-0", 64), ("test", 32)))  # a tiny CIFAR-100 look-alike
    said = []
    for config, student, warned in (("res32x4_res8x4", "ShuffleV2", "lr 0.01"), ("res32x4_shuv2", "ShuffleV2", None),
                                    ("res32x4_shuv2", "resnet8x4", "lr 0.05"), ("res32x4_res8x4", "resnet8x4", None)):
        said.clear()
        Trainer(load_config(f"cifar100/ce/{config}", [f"model.student={student}", f"data.root={tmp_path}",
                                                      f"output_dir={tmp_path}", "runtime.progress=false"]),
                echo=said.append)
        hits = [s for s in said if "standard CIFAR recipe" in s]
        assert len(hits) == (1 if warned else 0), said
        if warned:
            assert f"with model.student={student}" in hits[0] and f"with {warned}" in hits[0]
            assert f"give optim.lr={warned[3:]} for the recipe" in hits[0]


def _fake_run(folder, **summary):
    """A run folder as a finished `btkd train` leaves it, without training: summary, meta, weights."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    summary = {"epochs": 3, "epochs_done": 3, "student": "convnet", "last_acc": 50.0, "best_acc": 60.0, **summary}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "meta.json").write_text(json.dumps({"effective_batch_size": 64, "precision": "fp32"}))
    save_file({"w": torch.ones(3)}, folder / "last.safetensors")
    return folder


def test_only_a_finished_runs_last_epoch_is_published(tmp_path):
    # the last epoch's accuracy, not the best one: choosing the best test epoch leaks the test set
    entry = add_weights(tmp_path / "weights", "t", _fake_run(tmp_path / "done"), card="cpu", command="pytest")
    assert entry["test_acc_last"] == 50.0
    for name, summary in (("cut", {"epochs_done": 2}), ("nan", {"diverged": True})):
        with pytest.raises(ValueError, match="not a finished run"):
            add_weights(tmp_path / "weights", name, _fake_run(tmp_path / name, **summary), card="cpu", command="x")
    killed = _fake_run(tmp_path / "killed")  # a run stopped before its end writes no summary.json
    (killed / "summary.json").unlink()
    with pytest.raises(ValueError, match="not a finished run"):
        add_weights(tmp_path / "weights", "killed", killed, card="cpu", command="x")


def test_btkd_weights_comes_before_the_current_directorys_weights(tmp_path, monkeypatch):
    for where in ("env", "cwd"):
        add_weights(tmp_path / where / "weights", "t", _fake_run(tmp_path / f"run_{where}"), card="cpu", command="x")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.delenv("BTKD_WEIGHTS", raising=False)
    assert resolve_checkpoint("weights:t").resolve() == (tmp_path / "cwd" / "weights" / "t.safetensors").resolve()
    monkeypatch.setenv("BTKD_WEIGHTS", str(tmp_path / "env" / "weights"))
    assert resolve_checkpoint("weights:t") == tmp_path / "env" / "weights" / "t.safetensors"


def test_shards_that_repeat_a_tensor_are_refused(tmp_path):
    import btkd.weights as w
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2), "b": torch.ones(2)}, tmp_path / "m-00001-of-00002.safetensors")
    save_file({"b": torch.full((2,), 2.0)}, tmp_path / "m-00002-of-00002.safetensors")  # another checkpoint's b
    with pytest.raises(ValueError, match="repeats tensors of an earlier shard.*b"):
        w.read_weights(tmp_path / "m-00001-of-00002.safetensors")


def test_an_installed_package_looks_in_no_folder_of_its_site_packages(tmp_path, monkeypatch):
    """The source checkout's weights/ is searched only from a checkout: installed, btkd/weights.py sits in
    lib/pythonX.Y/site-packages/, where lib/pythonX.Y/weights is nobody's folder, and the error that named
    it also sent a pip user to scripts/add_teacher.py, which is not installed."""
    import btkd.weights as w

    monkeypatch.delenv("BTKD_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    installed = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "btkd" / "weights.py"
    monkeypatch.setattr(w, "__file__", str(installed))
    assert w.weights_dirs() == [Path("weights")]
    with pytest.raises(FileNotFoundError, match="btkd.weights.add_weights") as err:
        resolve_checkpoint("weights:nope")
    assert "python3.11" not in str(err.value)
    checkout = tmp_path / "btkd" / "src" / "btkd" / "weights.py"
    checkout.parent.mkdir(parents=True)
    (tmp_path / "btkd" / "pyproject.toml").write_text("")
    monkeypatch.setattr(w, "__file__", str(checkout))
    assert w.weights_dirs() == [Path("weights"), (tmp_path / "btkd").resolve() / "weights"]


def test_a_published_teacher_without_its_record_folder_still_names_its_model(tmp_path, monkeypatch):
    # eval and inspect-teacher take the model of weights:NAME from its record; without one, from the manifest
    from btkd.weights import published_record

    (tmp_path / "manifest.json").write_text(json.dumps({"t": {"file": "t.safetensors", "sha256": "0",
                                                              "model": "resnet8x4", "record": "t/"}}))
    monkeypatch.setenv("BTKD_WEIGHTS", str(tmp_path))
    assert published_record("weights:t") == {"model": {"student": "resnet8x4"}}
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.yaml").write_text("model: {student: resnet8x4, student_options: {}}\n"
                                                "data: {name: cifar100}\n")
    assert published_record("weights:t") == {"model": {"student": "resnet8x4", "student_options": {}},
                                             "data": {"name": "cifar100"}}


def test_btkd_options_without_btkd_enabled_are_warned_of(tmp_path):
    """distill.btkd.* does nothing while distill.btkd.enabled is false: such a run is its plain host
    and would be read as BTKD, so it is said; the defaults, or BTKD enabled, say nothing."""
    run(tmp_path, "t", TEACHER).fit()
    student = {"model": {"student": "mlp", "teacher": "convnet", "teacher_options": {"width": 4},
                         "teacher_checkpoint": str(tmp_path / "t" / "last.safetensors")}}
    said = []
    for name, btkd, warned in (("plain", {}, None), ("on", {"enabled": True, "schedule": "constant"}, None),
                               ("off", {"schedule": "constant", "rectify": "none"},
                                "warning: distill.btkd.rectify=none, distill.btkd.schedule=constant set while "
                                "distill.btkd.enabled=false, so it does nothing and the run is kd without BTKD; "
                                "add distill.btkd.enabled=true")):
        cfg = {"name": name, "output_dir": str(tmp_path), "data": DATA, "optim": {"epochs": 1, "milestones": []},
               "runtime": {"progress": False}, **student, "distill": {"method": "kd", "btkd": btkd}}
        said.clear()
        Trainer(load_config(cfg), echo=said.append)
        hits = [s for s in said if "distill.btkd" in s]
        assert hits == ([] if warned is None else [hits[0]]), said
        if warned:
            assert hits[0].startswith(warned), hits[0]
