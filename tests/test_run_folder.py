"""Run folders and the faults around them: one writer at a time, a clean start after a killed one,
a torn log line, no half-made folder after a failed start, the divergence guard and a resume with a
lower learning rate, a teacher with NaN weights, seeded stratified subsets."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from btkd.config import ConfigError, load_config
from btkd.data.subset import subset_indices
from btkd.engine import Grid, Trainer
from btkd.engine.run_folder import FolderBusyError, RunLock, read_log
from btkd import DamagedFileError
from small_run import SMALL, cfg, quiet


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    holder = RunLock(folder)
    holder.acquire()  # another process would hold it the same way (flock is per open file)
    try:
        with pytest.raises(FolderBusyError, match=f"PID {os.getpid()}"):
            quiet(cfg(tmp_path)).fit()
        assert folder.is_dir() and (folder / ".lock").is_file(), "the holder's folder is left alone"
    finally:
        holder.release()
    quiet(cfg(tmp_path)).fit()  # released: the run goes ahead
    assert len(read_log(folder / "log.jsonl")) == 3
    # a second start while a run with a checkpoint is being trained there: told it is busy, not to resume
    holder.acquire()
    try:
        with pytest.raises(FolderBusyError, match=f"in use by another btkd process \\(PID {os.getpid()}\\)"):
            quiet(cfg(tmp_path))
    finally:
        holder.release()
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        quiet(cfg(tmp_path))


def test_the_lock_is_released_when_a_run_ends(tmp_path):
    quiet(cfg(tmp_path, "optim.epochs=1", "optim.milestones=[]")).fit()
    lock = RunLock(tmp_path / "run")
    lock.acquire()  # free again after fit()
    lock.release()


def test_a_start_killed_during_the_first_checkpoint_write_restarts_clean(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    # what a kill during epoch 1's checkpoint write leaves: the log line, a temp file, no checkpoint
    (folder / "log.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 1.0}) + "\n")
    (folder / ".checkpoint.pt.abc123.tmp").write_bytes(b"partial")
    (folder / "notes.txt").write_text("the user's own file")
    quiet(cfg(tmp_path)).fit()
    assert [r["epoch"] for r in read_log(folder / "log.jsonl")] == [1, 2, 3], "epoch 1 logged once"
    assert not list(folder.glob(".*.tmp"))
    assert (folder / "notes.txt").read_text() == "the user's own file"


def test_resume_of_a_run_killed_in_its_first_epoch_starts_it_again(tmp_path, capsys):
    from btkd.cli import main

    quiet(cfg(tmp_path, name="whole")).fit()
    # what a kill -9 in epoch 1 leaves: the saved config, a torn log line, a temp file, no checkpoint
    folder = tmp_path / "killed"
    folder.mkdir()
    (folder / "config.yaml").write_text((tmp_path / "whole" / "config.yaml").read_text().replace("whole", "killed"))
    (folder / "log.jsonl").write_text('{"epoch": 1, "tr')
    (folder / ".checkpoint.pt.x1y2z3.tmp").write_bytes(b"partial")
    assert main(["train", "--resume", str(folder)]) == 0  # a requeued job that always passes --resume
    assert "has no checkpoint yet (stopped during its first epoch): starting it again" in capsys.readouterr().out
    timing = {"epoch_time", "images_per_s", "wall_time"}
    logs = [[{k: v for k, v in r.items() if k not in timing} for r in read_log(f / "log.jsonl")]
            for f in (tmp_path / "whole", folder)]
    assert len(logs[1]) == 3 and logs[0] == logs[1]
    assert not list(folder.glob(".*.tmp"))
    # a folder that never started is still no run to resume
    assert main(["train", "--resume", str(tmp_path / "never")]) == 2
    assert f"no such folder: {tmp_path / 'never'}" in capsys.readouterr().err
    # nor is a finished run that lost its checkpoint: its results stay as they are
    (folder / "checkpoint.pt").unlink()
    kept = {f: (folder / f).read_bytes() for f in ("log.jsonl", "summary.json", "last.safetensors")}
    assert main(["train", "--resume", str(folder)]) == 2
    assert "summary.json, last.safetensors but no checkpoint.pt to continue from" in capsys.readouterr().err
    assert {f: (folder / f).read_bytes() for f in kept} == kept
    # a restart takes only what a resume may change
    for f in ("log.jsonl", "summary.json", "last.safetensors", "best.safetensors", "meta.json"):
        (folder / f).unlink()
    assert main(["train", "--resume", str(folder), "optim.momentum=0.5"]) == 2
    assert "cannot change ['optim.momentum']" in capsys.readouterr().err
    # a bench's member folder is the bench's to resume
    member = tmp_path / "bench" / "runs" / "kd-s0"
    member.mkdir(parents=True)
    (tmp_path / "bench" / "bench.yaml").write_text("name: bench\n")
    (member / "config.yaml").write_text((folder / "config.yaml").read_text())
    assert main(["train", "--resume", str(member)]) == 2
    assert not (member / "checkpoint.pt").exists()


def test_a_failure_before_the_first_checkpoint_leaves_no_folder(tmp_path, monkeypatch):
    def broken(self, epoch, bar=None):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Grid, "train_epoch", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        quiet(cfg(tmp_path)).fit()
    assert not (tmp_path / "run").exists()
    # nor does a config error, which is found before anything is written
    with pytest.raises(ConfigError):
        quiet(cfg(tmp_path, "distill.method=kd"))
    assert not (tmp_path / "run").exists()


def test_ctrl_c_says_whether_the_run_can_be_resumed(tmp_path, capsys, monkeypatch):
    import yaml

    from btkd.cli import main

    original, stop_in = Grid.train_epoch, []

    def interrupted(self, epoch, bar=None):
        if epoch == stop_in[-1]:
            raise KeyboardInterrupt
        return original(self, epoch, bar)

    monkeypatch.setattr(Grid, "train_epoch", interrupted)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "output_dir": str(tmp_path), "name": "run"}))
    stop_in.append(0)  # the first epoch: the folder is tidied away, so --resume would find nothing
    assert main(["train", str(path)]) == 130
    err = capsys.readouterr().err
    assert "nothing was kept" in err and "start it again without --resume" in err
    assert not (tmp_path / "run").exists()
    stop_in.append(1)
    assert main(["train", str(path)]) == 130
    assert f"the last finished epoch is checkpointed; continue with: btkd train --resume {tmp_path / 'run'}" \
        in capsys.readouterr().err
    monkeypatch.setattr(Grid, "train_epoch", original)
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0


def test_resume_drops_a_torn_last_log_line_but_refuses_damage_elsewhere(tmp_path, monkeypatch):
    original = Grid.train_epoch

    def dies(self, epoch, bar=None):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, bar)

    monkeypatch.setattr(Grid, "train_epoch", dies)
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg(tmp_path)).fit()
    monkeypatch.setattr(Grid, "train_epoch", original)
    log = tmp_path / "run" / "log.jsonl"
    good = log.read_text()
    log.write_text(good + '{"epoch": 3, "test_a')
    quiet(cfg(tmp_path), run_dir=tmp_path / "run", resume=True).fit()
    assert [r["epoch"] for r in read_log(log)] == [1, 2, 3]
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "{broken", lines[2]]) + "\n")
    with pytest.raises(DamagedFileError, match="line 2"):
        read_log(log)


def test_divergence_is_caught_before_the_checkpoint_and_a_resume_may_lower_the_lr(tmp_path, capsys):
    from btkd.cli import main

    c = cfg(tmp_path, "optim.epochs=4", "optim.milestones=[3]")
    original = Grid._problem
    calls = {"n": 0}

    def blows_up_in_epoch_3(self, m, train, test):
        calls["n"] += 1
        if calls["n"] == 3:  # the epoch's mean loss is finite, but its last steps blew the weights up
            with torch.no_grad():
                next(m.student.parameters()).fill_(float("nan"))
        return original(self, m, train, test)

    Grid._problem = blows_up_in_epoch_3
    try:
        with pytest.raises(FloatingPointError, match="weights hold NaN.*epoch 3.*holds epoch 2.*optim.lr"):
            quiet(c).fit()
    finally:
        Grid._problem = original
    folder = tmp_path / "run"
    assert [r["epoch"] for r in read_log(folder / "log.jsonl")] == [1, 2], "the bad epoch is not logged"
    assert main(["train", "--resume", str(folder), "optim.lr=0.01"]) == 0
    assert "optim.lr=0.01 (was 0.05)" in capsys.readouterr().out
    log = read_log(folder / "log.jsonl")
    assert [r["epoch"] for r in log] == [1, 2, 3, 4] and log[2]["lr"] == pytest.approx(0.01)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["resumes"][0]["at_epoch"] == 2
    assert meta["resumes"][0]["changes"] == {"optim.lr": {"from": 0.05, "to": 0.01}}
    # its report says it was continued, and with what
    from btkd.report import write_report

    report = write_report([folder], tmp_path / "report").read_text()
    assert "- `run` was resumed from its checkpoint after epoch 2 (optim.lr 0.05 -> 0.01).\n" in report
    # a resume may not change what the run is
    assert main(["train", "--resume", str(folder), "optim.momentum=0.5"]) == 2
    assert "cannot change ['optim.momentum']" in capsys.readouterr().err
    # nor its model: said before any weights load (a wider student's would not fit them)
    assert main(["train", "--resume", str(folder), "model.student_options={width: 8}"]) == 2
    err = capsys.readouterr().err
    assert "cannot change ['model.student_options']" in err and "Traceback" not in err


def test_a_nan_loss_in_a_single_run_blames_the_loss_not_the_teacher(tmp_path):
    with pytest.raises(FloatingPointError, match="training loss became nan.*epoch 1") as err:
        quiet(cfg(tmp_path, "optim.lr=1e30")).fit()
    # its first epoch: no checkpoint, so no resume to offer, but the same command with a lower rate
    assert "nothing was saved to resume from. Run the same command again with a lower learning rate" in str(err.value)
    assert "--resume" not in str(err.value)


def test_a_teacher_with_nan_weights_is_refused_before_training(tmp_path):
    teacher = tmp_path / "teacher"
    quiet(cfg(tmp_path, "optim.epochs=1", "optim.milestones=[]", name="teacher")).fit()
    from safetensors.torch import load_file, save_file

    state = load_file(teacher / "last.safetensors")
    state["fc.weight"][0, 0] = float("nan")
    save_file(state, tmp_path / "bad.safetensors")
    c = cfg(tmp_path, "model.student=mlp", "model.teacher=convnet", "model.teacher_options={width: 4}",
            f"model.teacher_checkpoint={tmp_path / 'bad.safetensors'}", "distill.method=kd", name="s")
    with pytest.raises(ValueError, match="holds NaN or infinite values.*fc.weight"):
        quiet(c)
    assert not (tmp_path / "s").exists()


def test_subsets_are_seeded_stratified_draws_recorded_in_meta(tmp_path):
    labels = torch.arange(10).repeat_interleave(100)  # sorted by class, as CIFAR's test file may be
    idx = subset_indices(labels, 200, seed=0)
    assert len(idx) == 200 and len(set(idx.tolist())) == 200
    assert torch.bincount(labels[idx], minlength=10).tolist() == [20] * 10  # not the first two classes
    assert torch.equal(idx, subset_indices(labels, 200, seed=0))
    assert not torch.equal(idx, subset_indices(labels, 200, seed=1))
    uneven = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    counts = torch.bincount(uneven[subset_indices(uneven, 7, seed=3)], minlength=3).tolist()
    assert counts == [4, 2, 1]  # shares 3.5 / 2.1 / 1.4: floors 3, 2, 1, the place left to the largest remainder
    with pytest.raises(ValueError, match="1 <= n <= 100"):
        subset_indices(labels[:100], 101, seed=0)
    c = cfg(tmp_path, "data.train_subset=40", "data.test_subset=20", "optim.epochs=1", "optim.milestones=[]")
    t = quiet(c)
    t.fit()
    assert (t.train_size, t.test_size) == (40, 20)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["data_subsets"]["train_subset"]["n"] == 40 and meta["data_subsets"]["test_subset"]["of"] == 96
    assert len(meta["data_subsets"]["train_subset"]["indices_sha256"]) == 64
    with pytest.raises(ConfigError, match="data.train_subset=500"):
        quiet(cfg(tmp_path, "data.train_subset=500", name="big"))


def test_a_step_before_set_epoch_uses_epoch_zeros_weights():
    from btkd import BTKD
    from btkd.engine.step import TrainStep

    torch.manual_seed(0)
    student = torch.nn.Linear(4, 3)
    teacher = torch.nn.Linear(4, 3).requires_grad_(False)
    step = TrainStep([student], [torch.optim.SGD(student.parameters(), lr=0.1)], [BTKD("kd", validate=False)],
                     teacher, epochs=10)
    w = {k: v.item() for k, v in step.weights[0].items()}
    assert w["ce"] == pytest.approx(0.1) and w["distill_right"] == pytest.approx(0.9) and w["beta"] == 1.0


def test_eval_follows_runtime_precision(tmp_path, monkeypatch):
    from btkd.engine import evaluate

    quiet(cfg(tmp_path, "optim.epochs=1", "optim.milestones=[]")).fit()
    seen = []
    original = evaluate.autocast_for

    def spy(amp_dtype, device, cache_enabled=True):
        seen.append(amp_dtype)
        return original(amp_dtype, device, cache_enabled)

    monkeypatch.setattr(evaluate, "autocast_for", spy)
    base = cfg(tmp_path)
    fp32 = evaluate.evaluate_checkpoint(base, tmp_path / "run" / "last.safetensors")
    bf16 = evaluate.evaluate_checkpoint(load_config({**SMALL, "runtime": {"precision": "bf16", "progress": False}}),
                                        tmp_path / "run" / "last.safetensors")
    assert seen == [None, torch.bfloat16]
    assert fp32["n"] == bf16["n"] == 96 and abs(fp32["acc"] - bf16["acc"]) <= 5.0


def test_eval_of_a_run_trained_on_an_image_tree(tmp_path, capsys):
    from trees import random_image_tree

    from btkd.cli import main

    random_image_tree(tmp_path / "tree", {"train": 6, "test": 2})
    assert main(["train", "cifar100/teachers/resnet32x4", "data.name=imagefolder", f"data.root={tmp_path / 'tree'}",
                 "data.image_size=8", "data.workers=0", "data.batch_size=4", "data.eval_batch_size=4",
                 "optim.epochs=1", "optim.milestones=[]", "model.student=convnet", "model.student_options={width: 4}",
                 f"output_dir={tmp_path}", "name=tree", "runtime.progress=false"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "tree" / "last.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "convnet on imagefolder test: top-1" in printed and "(4 images)" in printed


def test_an_image_tree_run_paused_and_resumed_trains_like_an_uninterrupted_one(tmp_path, capsys):
    # Its loader workers start afresh on resume; each image's crop is drawn from its own seed, so the
    # resumed epoch sees the crops the uninterrupted run saw.
    from trees import random_image_tree

    from btkd.cli import main

    random_image_tree(tmp_path / "tree", {"train": 6, "test": 2}, size=(14, 12))
    args = ["cifar100/teachers/resnet32x4", "data.name=imagefolder", f"data.root={tmp_path / 'tree'}",
            "data.image_size=8", "data.workers=1", "data.batch_size=4", "data.eval_batch_size=4",
            "optim.epochs=2", "optim.milestones=[]", "model.student=convnet", "model.student_options={width: 4}",
            f"output_dir={tmp_path}", "runtime.progress=false"]
    assert main(["train", *args, "name=full"]) == 0
    assert main(["train", *args, "name=paused", "runtime.time_limit=1e-6"]) == 0
    assert main(["train", "--resume", str(tmp_path / "paused"), "runtime.time_limit=null"]) == 0
    capsys.readouterr()
    drop = ("epoch_time", "images_per_s", "wall_time", "resume_changes")
    full, resumed = (read_log(tmp_path / n / "log.jsonl") for n in ("full", "paused"))
    assert len(full) == len(resumed) == 2
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in drop} for r in full]


def test_time_limit_pauses_at_an_epoch_end_and_a_resume_finishes_the_same_run(tmp_path, capsys):
    from btkd.cli import main

    full = quiet(cfg(tmp_path, name="full"))
    full.fit()
    paused = quiet(cfg(tmp_path, "runtime.time_limit=1e-6")).fit()
    assert paused["paused"] and paused["epochs_done"] == 1
    folder = tmp_path / "run"
    assert [r["epoch"] for r in read_log(folder / "log.jsonl")] == [1] and not (folder / "summary.json").exists()
    assert main(["train", "--resume", str(folder)]) == 0  # the saved limit applies again
    assert "paused after epoch 2 of 3" in capsys.readouterr().out
    assert main(["train", "--resume", str(folder), "runtime.time_limit=null"]) == 0
    log = read_log(folder / "log.jsonl")
    assert log[2]["resume_changes"] == {"runtime.time_limit": {"from": 1e-6, "to": None}}
    strip = [{k: v for k, v in r.items() if k not in ("epoch_time", "images_per_s", "wall_time", "resume_changes")}
             for r in log]
    assert strip == [{k: v for k, v in r.items() if k not in ("epoch_time", "images_per_s", "wall_time")}
                     for r in read_log(tmp_path / "full" / "log.jsonl")]
    assert json.loads((folder / "summary.json").read_text())["epochs_done"] == 3


def test_the_time_limit_does_not_take_the_first_epoch_as_the_next_ones_length(tmp_path, monkeypatch):
    # A process's first epoch also compiles the models and captures the CUDA graph: on a GPU a minute
    # or more, where later epochs take seconds. On a clock where it takes 100 s and the others 20 s, a
    # 4-minute limit fits all 6 epochs (200 s); taken as the next epoch's length, it paused after 4.
    from types import SimpleNamespace

    import btkd.engine.grid as grid

    clock = [0.0]
    monkeypatch.setattr(grid, "time", SimpleNamespace(perf_counter=lambda: clock[0], time=grid.time.time))
    real = grid.Grid.train_epoch

    def train_epoch(self, epoch, bar=None):
        clock[0] += 100.0 if epoch == 0 else 20.0
        return real(self, epoch, bar)

    monkeypatch.setattr(grid.Grid, "train_epoch", train_epoch)
    done = quiet(cfg(tmp_path, "optim.epochs=6", "runtime.time_limit=4")).fit()
    assert "paused" not in done and done["epochs_done"] == 6
    # a limit the next epoch would pass still pauses: after the first epoch, by the first's length
    paused = quiet(cfg(tmp_path, "optim.epochs=6", "runtime.time_limit=3", name="short")).fit()
    assert paused["paused"] and paused["epochs_done"] == 1


def test_the_teacher_may_run_in_fp32_while_students_autocast():
    from btkd import BTKD
    from btkd.engine.step import TrainStep

    torch.manual_seed(0)
    student = torch.nn.Linear(4, 3)
    teacher = torch.nn.Linear(4, 3).requires_grad_(False)
    seen = []
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    teacher.register_forward_hook(lambda mod, args, out: seen.append((out.dtype, *(f.allow_tf32 for f in flags))))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    before = tuple(f.allow_tf32 for f in flags)
    # a bf16 run allows TF32 globally (setup_runtime): "fp32" must switch it off for the teacher
    flags[0].allow_tf32 = flags[1].allow_tf32 = True
    try:
        for precision, want in (("same", (torch.bfloat16, True, True)), ("fp32", (torch.float32, False, False)),
                                ("tf32", (torch.float32, True, True))):
            step = TrainStep([student], [torch.optim.SGD(student.parameters(), lr=0.1)],
                             [BTKD("kd", validate=False)], teacher, epochs=2, amp_dtype=torch.bfloat16,
                             teacher_precision=precision)
            step(x, y)
            assert seen[-1] == want, precision
            assert (flags[0].allow_tf32, flags[1].allow_tf32) == (True, True)  # restored after the forward
    finally:
        flags[0].allow_tf32, flags[1].allow_tf32 = before


def test_float32_forward_sets_tf32_and_restores_it_even_on_error():
    from btkd.engine.evaluate import float32_forward, forward_precision

    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    before = tuple(f.allow_tf32 for f in flags)
    try:
        flags[0].allow_tf32, flags[1].allow_tf32 = True, False
        with pytest.raises(RuntimeError, match="boom"):
            with float32_forward(tf32=True):
                assert (flags[0].allow_tf32, flags[1].allow_tf32) == (True, True)
                raise RuntimeError("boom")
        assert (flags[0].allow_tf32, flags[1].allow_tf32) == (True, False)
        with forward_precision("fp32", torch.device("cpu"))():
            assert (flags[0].allow_tf32, flags[1].allow_tf32) == (False, False)
        assert (flags[0].allow_tf32, flags[1].allow_tf32) == (True, False)
        # bf16 rounds a near tie away: the kind of split decision --compare-bf16 counts
        near_tie = torch.nn.Linear(1, 2, bias=False).requires_grad_(False)
        near_tie.weight.copy_(torch.tensor([[1.0], [1.0001]]))
        x = torch.ones(1, 1)
        with forward_precision("fp32", torch.device("cpu"))():
            assert near_tie(x).argmax(1).item() == 1
        with forward_precision("bf16", torch.device("cpu"))():
            assert near_tie(x).argmax(1).item() == 0
        with pytest.raises(ValueError, match="precision must be one of"):
            forward_precision("fp16", torch.device("cpu"))
    finally:
        flags[0].allow_tf32, flags[1].allow_tf32 = before


def test_a_csv_mirrors_the_log_and_tensorboard_gets_every_number(tmp_path):
    import csv

    quiet(cfg(tmp_path, "runtime.tensorboard=true")).fit()
    folder = tmp_path / "run"
    log = read_log(folder / "log.jsonl")
    rows = list(csv.DictReader((folder / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["test_acc"]) for r in rows] == [r["test_acc"] for r in log]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    assert {"test_acc", "loss_total", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("test_acc")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("test_acc")] == pytest.approx([r["test_acc"] for r in log])


def test_a_finished_run_can_be_extended_and_the_log_says_so(tmp_path, capsys):
    from btkd.cli import main

    quiet(cfg(tmp_path, "optim.epochs=2", "optim.milestones=[]")).fit()
    folder = tmp_path / "run"
    assert main(["train", "--resume", str(folder), "optim.epochs=3"]) == 0
    log = read_log(folder / "log.jsonl")
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[2]["resume_changes"] == {"optim.epochs": {"from": 2, "to": 3}} and "resume_changes" not in log[1]
    assert json.loads((folder / "summary.json").read_text())["epochs_done"] == 3
    assert main(["train", "--resume", str(folder), "optim.epochs=2"]) == 2
    assert "extend a run, not shorten it" in capsys.readouterr().err
    # a change to a finished run that trains nothing is refused, and leaves its record as it was
    config, meta = (folder / "config.yaml").read_text(), json.loads((folder / "meta.json").read_text())
    assert main(["train", "--resume", str(folder), "optim.lr=0.01"]) == 2
    assert "has finished its 3 epochs, so optim.lr would change nothing it trains" in capsys.readouterr().err
    assert (folder / "config.yaml").read_text() == config
    assert json.loads((folder / "meta.json").read_text())["resumes"] == meta["resumes"]


def test_resuming_on_another_number_of_processes_needs_a_global_batch(tmp_path):
    from btkd.engine.checkpoint import load_checkpoint_file, save_atomic

    c = cfg(tmp_path, "optim.epochs=2", "optim.milestones=[]")
    quiet(c).fit()
    ckpt = tmp_path / "run" / "checkpoint.pt"
    state = load_checkpoint_file(ckpt)
    state["world_size"] = 2  # as if trained under torchrun with 2 processes
    save_atomic(state, ckpt)
    with pytest.raises(ConfigError, match="trained on 2 process.*data.global_batch_size"):
        quiet(c, run_dir=tmp_path / "run", resume=True)
    g = cfg(tmp_path, "optim.epochs=2", "optim.milestones=[]", "data.global_batch_size=16", name="g")
    quiet(g).fit()
    state = load_checkpoint_file(tmp_path / "g" / "checkpoint.pt")
    state["world_size"] = 2
    save_atomic(state, tmp_path / "g" / "checkpoint.pt")
    assert quiet(g, run_dir=tmp_path / "g", resume=True).start_epoch == 2  # the global batch is kept


def test_global_batch_size_is_shared_out(tmp_path):
    from btkd.engine.build import per_process_batch

    c = cfg(tmp_path, "data.global_batch_size=512")
    assert per_process_batch(c, 1) == 512 and per_process_batch(c, 8) == 64
    with pytest.raises(ConfigError, match="does not divide into 3"):
        per_process_batch(c, 3)
    assert per_process_batch(cfg(tmp_path), 4) == 16  # data.batch_size per process


def test_the_commit_comes_from_git_else_from_btkd_git_commit(monkeypatch):
    import subprocess

    from btkd.engine import runinfo

    monkeypatch.setenv("BTKD_GIT_COMMIT", "0123abc")
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                         cwd=Path(runinfo.__file__).parent)
    if git.returncode == 0:  # in a git checkout its own commit wins
        assert runinfo._git_commit() == git.stdout.strip()

    def no_git(*args, **kwargs):  # a copy of the tree without .git, as a remote machine gets it
        return subprocess.CompletedProcess(args, 128, stdout="", stderr="fatal: not a git repository")

    monkeypatch.setattr(runinfo.subprocess, "run", no_git)
    assert runinfo._git_commit() == "0123abc"
    monkeypatch.delenv("BTKD_GIT_COMMIT")
    assert runinfo._git_commit() is None


def test_a_package_installed_inside_another_repository_does_not_take_its_commit(tmp_path, monkeypatch):
    import shutil
    import subprocess

    from btkd.engine import runinfo

    env = {**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@b"}
    monkeypatch.delenv("BTKD_GIT_COMMIT", raising=False)
    code = "from btkd.engine import runinfo; print(runinfo._git_commit())"

    def commit_all(repo):
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "a commit"]):
            subprocess.run(["git", *cmd], cwd=repo, check=True, env=env, capture_output=True)
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()

    def recorded(site):
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(site)}, check=True).stdout.strip()

    # the user's own repository, btkd installed into its ignored .venv: that commit does not hold btkd
    other = tmp_path / "project"
    site = other / ".venv" / "site-packages"
    shutil.copytree(Path(runinfo.__file__).parents[1], site / "btkd", ignore=shutil.ignore_patterns("__pycache__"))
    (other / ".gitignore").write_text(".venv/\n")
    (other / "train.py").write_text("print('mine')\n")
    commit_all(other)
    assert recorded(site) == "None"
    # a btkd checkout's own layout (src/btkd at the top) takes its commit
    checkout = tmp_path / "checkout"
    shutil.copytree(site / "btkd", checkout / "src" / "btkd")
    head = commit_all(checkout)
    assert recorded(checkout / "src") == head
    # so does a project that vendors btkd as a tracked folder: its commit holds this code
    mono = tmp_path / "mono"
    shutil.copytree(site / "btkd", mono / "third_party" / "btkd")
    head = commit_all(mono)
    assert recorded(mono / "third_party") == head
    # a copy added to the index but not committed is not in HEAD: no commit holds it
    shutil.copytree(site / "btkd", mono / "staged" / "btkd")
    subprocess.run(["git", "add", "-A"], cwd=mono, check=True, env=env, capture_output=True)
    assert recorded(mono / "staged") == "None"


def test_a_bf16_run_also_scores_its_last_weights_with_an_fp32_test_forward(tmp_path):
    from btkd.engine.evaluate import evaluate_checkpoint

    for precision in ("bf16", "fp32"):
        # seed 2: a run whose bf16 and fp32 test forwards disagree on a sample (85.00 vs 85.25 here)
        quiet(cfg(tmp_path, f"runtime.precision={precision}", "data.options.size=400", "seed=2", name=precision)).fit()
        folder = tmp_path / precision
        summary = json.loads((folder / "summary.json").read_text())
        saved = load_config(folder / "config.yaml")
        scored = {p: evaluate_checkpoint(load_config(folder / "config.yaml", [f"runtime.precision={p}"]),
                                         folder / "last.safetensors")["acc"] for p in ("bf16", "fp32")}
        assert saved.runtime.precision == precision
        assert summary["last_acc"] == pytest.approx(scored[precision])  # the epochs' own evaluation
        assert summary["last_acc_fp32"] == pytest.approx(scored["fp32"])
        if precision == "bf16":
            assert scored["bf16"] != scored["fp32"], "pick data on which the two forwards disagree"


def test_a_writer_without_the_lock_removes_only_old_temp_files(tmp_path):
    import time

    from btkd.engine.run_folder import remove_stale_temp_files

    old, new, other = tmp_path / ".results.json.aaa.tmp", tmp_path / ".results.json.bbb.tmp", tmp_path / ".x.tmp"
    for p in (old, new, other):
        p.write_text("partial")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    remove_stale_temp_files(tmp_path, ["results.json"], older_than=600)
    assert (old.exists(), new.exists(), other.exists()) == (False, True, True)
    remove_stale_temp_files(tmp_path, ["results.json"])
    assert (new.exists(), other.exists()) == (False, True)


def test_a_resume_that_changes_the_memory_layout_keeps_each_momentum_entry_on_its_weight(tmp_path):
    """Momentum saved from contiguous weights, resumed into channels_last ones (runtime.channels_last,
    or a CPU run moved to a GPU): SGD pairs buffer and weight elements by storage order."""
    from safetensors.torch import load_file

    quiet(cfg(tmp_path, "runtime.channels_last=off", name="full")).fit()
    assert quiet(cfg(tmp_path, "runtime.channels_last=off", "runtime.time_limit=1e-6")).fit()["paused"]
    resumed = Trainer.from_run_dir(tmp_path / "run", ["runtime.channels_last=on", "runtime.time_limit=null"],
                                   echo=lambda *_: None)
    conv = [p for p in resumed.student.parameters() if p.dim() == 4]
    assert conv and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv)
    for p in conv:
        assert resumed.optimizer.state[p]["momentum_buffer"].stride() == p.stride()
    resumed.fit()
    want, got = load_file(tmp_path / "full" / "last.safetensors"), load_file(tmp_path / "run" / "last.safetensors")
    for k in want:  # the same training; only the convolutions' summation order may differ
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)


def test_matching_layouts_keeps_fused_sgd_right_after_a_layout_change():
    """Fused SGD pairs momentum and weight by storage order (measured here on the CPU): a contiguous
    buffer against a channels_last weight updates the wrong weights unless its layout is matched."""
    import copy

    from btkd.engine.grid import match_param_layouts

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
    saved = torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=True)
    p.grad = torch.randn_like(p)
    saved.step()
    grad = torch.randn_like(p)

    def step(layout, match):
        q = torch.nn.Parameter(p.detach().clone().to(memory_format=layout))
        opt = torch.optim.SGD([q], lr=0.1, momentum=0.9, fused=True)
        opt.load_state_dict(copy.deepcopy(saved.state_dict()))
        if match:
            match_param_layouts(opt)
        q.grad = grad.clone().to(memory_format=layout)
        opt.step()
        return q.detach()

    want = step(torch.contiguous_format, match=False)
    assert not torch.allclose(step(torch.channels_last, match=False), want)  # the fault, as it is
    torch.testing.assert_close(step(torch.channels_last, match=True), want)


def test_an_edit_of_config_yaml_counts_as_a_change_on_resume(tmp_path, capsys):
    from btkd.cli import main

    quiet(cfg(tmp_path, "optim.epochs=2", "optim.milestones=[1]")).fit()
    folder, config = tmp_path / "run", tmp_path / "run" / "config.yaml"
    original = config.read_text()
    # what the run is may not change by hand either: said, and nothing trained or rewritten
    config.write_text(original.replace("momentum: 0.9", "momentum: 0.5"))
    assert main(["train", "--resume", str(folder), "optim.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "cannot change ['optim.momentum']" in err and "config.yaml was edited since the last checkpoint" in err
    assert [r["epoch"] for r in read_log(folder / "log.jsonl")] == [1, 2]
    # what a resume may change is recorded when it is edited in the file, as an override would be
    config.write_text(original.replace("lr: 0.05", "lr: 0.01"))
    assert main(["train", "--resume", str(folder), "optim.epochs=3"]) == 0
    change = json.loads((folder / "meta.json").read_text())["resumes"][0]["changes"]
    assert change == {"optim.epochs": {"from": 2, "to": 3}, "optim.lr": {"from": 0.05, "to": 0.01}}
    assert read_log(folder / "log.jsonl")[-1]["lr"] == pytest.approx(0.01 * 0.1)  # past the milestone


def test_a_resume_killed_before_its_first_checkpoint_resumes_again_with_its_changes(tmp_path, capsys):
    from btkd.cli import main

    quiet(cfg(tmp_path, "optim.epochs=2", "optim.milestones=[1]")).fit()
    folder = tmp_path / "run"
    original = Grid.train_epoch

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # after the resume rewrote config.yaml, before any checkpoint

    Grid.train_epoch = killed
    try:
        assert main(["train", "--resume", str(folder), "optim.epochs=3", "optim.lr=0.01"]) != 0
    finally:
        Grid.train_epoch = original
    assert "lr: 0.01" in (folder / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(folder)]) == 0  # the file now differs from the checkpoint's config
    assert "optim.lr=0.01 (was 0.05)" in capsys.readouterr().out
    assert [r["epoch"] for r in read_log(folder / "log.jsonl")] == [1, 2, 3]


def test_a_fresh_run_never_deletes_a_finished_run_whose_checkpoint_is_gone(tmp_path):
    quiet(cfg(tmp_path, "optim.epochs=1", "optim.milestones=[]")).fit()
    folder = tmp_path / "run"
    (folder / "checkpoint.pt").unlink()  # e.g. removed to free disk once the run had finished
    kept = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match="holds a finished run's summary.json, last.safetensors.*would delete it"):
        quiet(cfg(tmp_path, "optim.epochs=1", "optim.milestones=[]")).fit()
    with pytest.raises(FileNotFoundError, match="holds a finished run's summary.json, last.safetensors but no "
                                                "checkpoint.pt to continue from; .* another name"):
        quiet(cfg(tmp_path, "optim.epochs=2", "optim.milestones=[]"), resume=True).fit()
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == kept


def test_a_run_into_the_folder_of_the_users_own_config_file_is_refused(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    mine = "# my experiment\ninherit: somewhere.yaml\nname: run\n"
    (folder / "config.yaml").write_text(mine)
    with pytest.raises(FileExistsError, match="config.yaml that btkd did not write"):
        quiet(cfg(tmp_path)).fit()
    assert (folder / "config.yaml").read_text() == mine


def test_a_teacher_trained_on_other_data_is_refused(tmp_path):
    from btkd.data import DATASETS

    quiet(cfg(tmp_path, "optim.epochs=1", "optim.milestones=[]", name="teacher")).fit()
    DATASETS["synthetic_twin"] = DATASETS["synthetic"]  # the same classes and image size, other data
    try:
        c = cfg(tmp_path, "data.name=synthetic_twin", "data.options={size: 96, num_classes: 5, image_size: 8, prototypes: true}",
                "model.student=mlp", "model.teacher=convnet",
                "model.teacher_options={width: 4}", f"model.teacher_checkpoint={tmp_path / 'teacher' / 'last.safetensors'}",
                "distill.method=kd", name="s")
        with pytest.raises(ConfigError, match="was trained on synthetic.*this run's data is synthetic_twin"):
            quiet(c)
    finally:
        del DATASETS["synthetic_twin"]
