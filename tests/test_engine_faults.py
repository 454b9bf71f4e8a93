"""Engine behaviours around faults and resumes that a mutation audit found unpinned: the fsync of an
atomic write, a failed rename, a kill between an epoch's log line and its checkpoint (or inside the
log append), the RNG state a resume restores, the warm-up's last epoch, the per-iteration epochs
given to the step, best-accuracy ties, the fp32 re-score of a bf16 run, and subsets drawn from
data.subset_seed rather than the run's seed. Small synthetic runs on the CPU, as in test_run_folder.py."""

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

import btkd.engine.grid as grid_module
from btkd.config import load_config
from btkd.engine import Grid, Trainer, lr_factor
from btkd.engine.checkpoint import export_weights, save_atomic, write_atomic
from btkd.engine.run_folder import RunFolder, RunLock, json_line, read_log, write_text_atomic
from btkd.engine.step import TrainStep
from btkd.models import build_model
from small_run import cfg, quiet

STEPS = 96 // 16  # steps an epoch of the small run
# What differs between two runs of the same config besides their results.
TIMING = {"epoch_time", "images_per_s", "wall_time", "resume_changes"}


def resume(folder, *overrides):
    return Trainer.from_run_dir(folder, list(overrides), echo=lambda *_: None)


def stripped_log(folder):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_log(folder / "log.jsonl")]


def weights(folder, name="last.safetensors"):
    return load_file(str(folder / name))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------- atomic writes


def test_an_atomic_write_fsyncs_the_full_temp_file_before_renaming_it(tmp_path, monkeypatch):
    # Without the fsync a power loss after the rename can leave a renamed but empty file: the
    # data must be on disk (all of it: after the write and flush) before os.replace.
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_size))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    data = b"x" * 10_000
    write_atomic(tmp_path / "f.bin", lambda f: f.write(data))
    assert events == [("fsync", len(data)), ("replace", "f.bin")]
    assert (tmp_path / "f.bin").read_bytes() == data
    events.clear()
    save_atomic({"w": torch.ones(3)}, tmp_path / "checkpoint.pt")  # the checkpoint goes the same way
    assert [e[0] for e in events] == ["fsync", "replace"] and events[0][1] > 0


def test_an_atomically_written_file_is_as_readable_as_a_plainly_written_one(tmp_path):
    (tmp_path / "plain").write_bytes(b"x")  # open() honours the umask; mkstemp alone would give 0600
    write_atomic(tmp_path / "atomic", lambda f: f.write(b"x"))
    mode = lambda p: p.stat().st_mode & 0o777
    assert mode(tmp_path / "atomic") == mode(tmp_path / "plain")


def test_a_failed_rename_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text("old\n")

    def replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"], "no .summary.json.*.tmp left"


# ---------------------------------------------------------------------------- kills around the log


class Killed(BaseException):
    """A kill at a chosen point (a BaseException, like KeyboardInterrupt: no handler may swallow it)."""


def test_a_kill_between_an_epochs_log_line_and_its_checkpoint_resumes_to_the_same_log(tmp_path, monkeypatch):
    quiet(cfg(tmp_path, name="full")).fit()
    folder = tmp_path / "run"
    real_save = grid_module.save_atomic
    logged_at_save = []

    def save(state, path):
        logged_at_save.append([r["epoch"] for r in read_log(folder / "log.jsonl")])
        if state["epoch"] == 2:
            raise Killed  # epoch 2 is in the log, not in the checkpoint
        real_save(state, path)

    monkeypatch.setattr(grid_module, "save_atomic", save)
    with pytest.raises(Killed):
        quiet(cfg(tmp_path)).fit()
    # The log line goes first: a kill can leave a logged epoch without a checkpoint (rerun and its line
    # replaced), never a checkpointed epoch without its log line.
    assert logged_at_save == [[1], [1, 2]]
    monkeypatch.setattr(grid_module, "save_atomic", real_save)
    resume(folder).fit()
    assert [r["epoch"] for r in read_log(folder / "log.jsonl")] == [1, 2, 3], "epoch 2 logged once"
    assert stripped_log(folder) == stripped_log(tmp_path / "full")
    assert_same_weights(weights(folder), weights(tmp_path / "full"))


def test_a_kill_inside_the_log_append_resumes_to_the_same_log(tmp_path, monkeypatch):
    quiet(cfg(tmp_path, name="full")).fit()
    folder = tmp_path / "run"
    real_append = RunFolder.append_log

    def append(self, record):
        if record["epoch"] == 2:  # half the line written, then killed (before the checkpoint)
            with open(self.file("log.jsonl"), "a") as f:
                f.write(json_line(record)[:25])
            raise Killed
        real_append(self, record)

    monkeypatch.setattr(RunFolder, "append_log", append)
    with pytest.raises(Killed):
        quiet(cfg(tmp_path)).fit()
    assert not (folder / "log.jsonl").read_text().endswith("\n"), "a torn last line"
    monkeypatch.setattr(RunFolder, "append_log", real_append)
    resume(folder).fit()
    assert (folder / "log.jsonl").read_text().count("\n") == 3
    assert stripped_log(folder) == stripped_log(tmp_path / "full")
    assert (folder / "log.csv").read_text().count("\n") == 4, "the csv (header + 3 rows) follows the log"


def test_a_start_killed_at_any_write_before_its_first_checkpoint_resumes_with_resume(tmp_path, monkeypatch):
    """The README: a requeued job may always pass --resume once its run folder exists. A kill -9 at each
    write of a start (the folder's lock, then every file put in place up to the first checkpoint) leaves
    no folder, or one that --resume finishes to the uninterrupted run's log and weights."""
    quiet(cfg(tmp_path, name="full")).fit()
    (tmp_path / "plain").mkdir()  # the run folder, made elsewhere and renamed, is as readable as this one
    assert (tmp_path / "full").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    monkeypatch.setattr(Grid, "_remove_unstarted", lambda self: None)  # a kill -9 tidies nothing up
    real_replace, real_acquire = os.replace, RunLock.acquire
    done = []

    def kill_at(n):
        def point():
            done.append(1)
            if len(done) == n:
                raise Killed

        def replace(a, b):
            real_replace(a, b)
            point()

        def acquire(self):
            real_acquire(self)
            point()
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(RunLock, "acquire", acquire)

    n = 0
    while True:
        n += 1
        done.clear()
        folder = tmp_path / f"run{n}"
        kill_at(n)
        with pytest.raises(Killed):
            quiet(cfg(tmp_path, name=f"run{n}")).fit()
        monkeypatch.setattr(os, "replace", real_replace)
        monkeypatch.setattr(RunLock, "acquire", real_acquire)
        if (folder / "checkpoint.pt").exists():
            break  # past the first checkpoint: other tests cover those kills
        if folder.exists():
            resume(folder).fit()
            assert stripped_log(folder) == stripped_log(tmp_path / "full"), n
            assert_same_weights(weights(folder), weights(tmp_path / "full"))
    assert n > 4, "the lock, config.yaml, meta.json, log.csv, checkpoint.pt"


# ---------------------------------------------------------------------------- resume and the RNG


def test_a_resume_restores_the_rng_so_dropout_draws_the_same_masks(tmp_path):
    # wrn_16_1 takes drop_rate (dropout draws from torch's global RNG) and needs 32x32 images.
    wrn = ["model.student=wrn_16_1", "model.student_options={drop_rate: 0.3}", "data.options.image_size=32",
           "data.options.size=48"]
    quiet(cfg(tmp_path, *wrn, name="full")).fit()
    paused = quiet(cfg(tmp_path, *wrn, "runtime.time_limit=1e-6")).fit()
    assert paused["paused"] and paused["epochs_done"] == 1
    torch.manual_seed(123)  # whatever the process did to the RNG meanwhile, the checkpoint's state counts
    resume(tmp_path / "run", "runtime.time_limit=null").fit()
    assert stripped_log(tmp_path / "run") == stripped_log(tmp_path / "full")
    assert_same_weights(weights(tmp_path / "run"), weights(tmp_path / "full"))


# ---------------------------------------------------------------------------- schedules


def test_the_warm_up_ends_exactly_at_its_length_and_the_cosine_takes_over():
    # Documented: a linear warm-up over the first warmup_epochs epochs ((e + 1) / w), and the cosine
    # "from lr to 0 over the epochs", 0.5 (1 + cos(pi e / epochs)), of the whole run (not shifted).
    c = load_config(None, ["optim.epochs=10", "optim.lr_schedule=cosine", "optim.warmup_epochs=2"])
    assert lr_factor(c, 1) == 1.0  # the warm-up's last epoch
    assert lr_factor(c, 2) == pytest.approx(0.5 * (1 + math.cos(0.2 * math.pi)))  # the first after it
    m = load_config(None, ["optim.epochs=10", "optim.milestones=[5]", "optim.warmup_epochs=3"])
    assert [lr_factor(m, e) for e in (2, 3, 5)] == pytest.approx([1.0, 1.0, 0.1])


def test_the_trained_lr_follows_the_warm_up_and_cosine(tmp_path):
    quiet(cfg(tmp_path, "optim.lr_schedule=cosine", "optim.warmup_epochs=1", "optim.lr=0.05")).fit()
    lrs = [r["lr"] for r in read_log(tmp_path / "run" / "log.jsonl")]
    assert lrs == pytest.approx([0.05, 0.05 * 0.5 * (1 + math.cos(math.pi / 3)),
                                 0.05 * 0.5 * (1 + math.cos(2 * math.pi / 3))])


def test_a_per_iteration_schedule_gets_the_fractional_epoch_of_every_step(tmp_path, monkeypatch):
    # BTKD's cos2_iter schedule changes beta within an epoch: step i of epoch e must see e + i / steps.
    teacher = build_model("convnet", num_classes=5, width=4)  # any weights: the epochs are what is checked
    export_weights(teacher, tmp_path / "teacher.safetensors")
    calls = []
    real = TrainStep.set_epoch

    def record(self, epoch):
        calls.append(epoch)
        real(self, epoch)

    monkeypatch.setattr(TrainStep, "set_epoch", record)
    t = quiet(cfg(tmp_path, "optim.epochs=2", "optim.milestones=[]", "distill.method=kd", "distill.btkd.enabled=true",
                  "distill.btkd.schedule=cos2_iter",
                  "model.teacher=convnet", "model.teacher_options={width: 4}",
                  f"model.teacher_checkpoint={tmp_path / 'teacher.safetensors'}"))
    assert t.grid.per_iteration
    calls.clear()  # only the loop's calls
    t.fit()
    assert calls == [e + i / STEPS for e in range(2) for i in range(STEPS)]


# ---------------------------------------------------------------------------- best epoch, fp32 re-score


def test_a_tie_for_the_best_accuracy_keeps_the_earlier_epoch(tmp_path, monkeypatch):
    accs = iter([50.0, 60.0, 60.0])
    snapshots = []  # the student's weights at each epoch's evaluation (its end)

    def evaluate(self, model):
        snapshots.append({k: v.detach().clone() for k, v in self.members[0].student.state_dict().items()})
        acc = next(accs)
        return {"acc": acc, "top5": acc, "loss": 1.0, "n": 96}

    monkeypatch.setattr(Grid, "evaluate", evaluate)
    summary = quiet(cfg(tmp_path)).fit()
    assert (summary["best_epoch"], summary["best_acc"]) == (2, 60.0)
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["best_epoch"] for r in log] == [1, 2, 2]
    best = weights(tmp_path / "run", "best.safetensors")
    assert_same_weights(best, snapshots[1])
    assert any(not torch.equal(snapshots[1][k], snapshots[2][k]) for k in best), \
        "epochs 2 and 3 must differ for the check to mean anything"


def test_the_fp32_rescore_of_a_bf16_run_turns_tf32_off(tmp_path, monkeypatch):
    # TF32 is no fp32: the summary's last_acc_fp32 is a forward with IEEE fp32 products (a no-op on the
    # CPU, so the call itself is what can be checked here).
    seen = []
    real = grid_module.float32_forward

    def spy(*args, **kwargs):
        seen.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(grid_module, "float32_forward", spy)
    summary = quiet(cfg(tmp_path, "runtime.precision=bf16", "optim.epochs=1", "optim.milestones=[]")).fit()
    assert summary["last_acc_fp32"] is not None
    assert seen and all(call == ((), {"tf32": False}) or call == ((False,), {}) for call in seen), seen


# ---------------------------------------------------------------------------- subsets


def test_subsets_follow_subset_seed_not_the_run_seed(tmp_path):
    def drawn(name, *overrides):
        quiet(cfg(tmp_path, "data.train_subset=40", "data.test_subset=20", "optim.epochs=1", "optim.milestones=[]",
                  *overrides, name=name)).fit()
        subsets = json.loads((tmp_path / name / "meta.json").read_text())["data_subsets"]
        return {part: subsets[part]["indices_sha256"] for part in ("train_subset", "test_subset")}

    # a bench's seeds must compare students on the same images; only subset_seed picks others
    base = drawn("s0", "seed=0")
    assert drawn("s1", "seed=1") == base
    other = drawn("subset1", "seed=0", "data.subset_seed=1")
    assert other["train_subset"] != base["train_subset"] and other["test_subset"] != base["test_subset"]


def test_a_resume_rewrites_the_epochs_tensorboard_already_had_without_doubling_them(tmp_path, monkeypatch):
    # A kill between epoch 2's log (and TensorBoard events) and its checkpoint: the resume reruns epoch 2,
    # whose events must replace the killed process's, not sit beside them.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    real_save = grid_module.save_atomic

    def save(state, path):
        if state["epoch"] == 2:
            raise Killed
        real_save(state, path)

    monkeypatch.setattr(grid_module, "save_atomic", save)
    with pytest.raises(Killed):
        quiet(cfg(tmp_path, "runtime.tensorboard=true")).fit()
    monkeypatch.setattr(grid_module, "save_atomic", real_save)
    folder = tmp_path / "run"
    resume(folder).fit()
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("test_acc")
    assert [e.step for e in scalars] == [1, 2, 3]
    assert [e.value for e in scalars] == pytest.approx([r["test_acc"] for r in read_log(folder / "log.jsonl")])
