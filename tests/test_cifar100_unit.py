"""benchmarks/cifar100/unit.sh, run as a GPU window runs it, on a tiny staged CIFAR-100 look-alike:
a run whose fast path fails before its first epoch end trains again without it, and the window's
record says so; a failure after progress, or with FALLBACK=off, is returned as it is."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from btkd.models import build_model
from trees import write_shards

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.student=resnet8", "data.train_subset=128", "data.test_subset=64", "optim.epochs=2",
        "optim.milestones=[1]", "runtime.progress=false"]

# The btkd command unit.sh calls (its BTKD): every call is logged; MODE picks how it fails.
WRAPPER = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case $MODE in
  fast_path)  # the first epoch fails inside the run (its folder opened) until compile and the graph are off
    if [[ " $* " != *" runtime.compile=off runtime.cuda_graph=off "* ]]; then
      exec "$PYTHON" -c '
import sys
from btkd.engine.grid import Grid
def fail(*args, **kwargs):
    raise RuntimeError("simulated failure of the fast path")
Grid.train_epoch = fail
from btkd.cli import main
sys.exit(main(sys.argv[1:]))' "$@"; fi ;;
  after_progress)  # trains (a checkpoint is written), then fails
    "$PYTHON" -m btkd.cli "$@"; echo "simulated failure after progress"; exit 1 ;;
esac
exec "$PYTHON" -m btkd.cli "$@"
"""


@pytest.fixture
def window(tmp_path):
    """Run unit.sh as a window does: WORK holds stage/ (a tiny CIFAR-100 in shards with SHA256SUMS)."""
    work, out = tmp_path / "home", tmp_path / "out"
    write_shards(work / "stage", (("train-0", 256), ("test", 128)))
    wrapper = tmp_path / "btkd.sh"
    wrapper.write_text(WRAPPER)

    teacher = tmp_path / "teacher.safetensors"  # an untrained resnet8 is teacher enough for a bench's mechanics
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in build_model("resnet8").state_dict().items()}, str(teacher))

    def run(mode, fallback, kind="teacher", preflight="auto"):
        args = ["teacher", "resnet32x4", *TINY] if kind == "teacher" else [
            "bench", "res32x4_res8x4", "bench.seeds=[0]", "model.teacher=resnet8",
            f"model.teacher_checkpoint={teacher}", *TINY]
        run.folder = work / "runs" / ("teacher_resnet32x4" if kind == "teacher" else "bench_res32x4_res8x4")
        env = {**os.environ, "OUT": str(out), "WORK": str(work), "PYTHON": sys.executable, "BUDGET": "400",
               "LIMIT": "0.0001", "SMOKE": "0", "FALLBACK": fallback, "PREFLIGHT": preflight, "MODE": mode,
               "CALLS": str(tmp_path / "calls"),
               "BTKD": f"bash {wrapper}"}
        proc = subprocess.run(["bash", "benchmarks/cifar100/unit.sh", *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        calls = (tmp_path / "calls").read_text().splitlines()
        return proc, json.loads((out / "unit.json").read_text())["windows"][-1], calls

    run.out = out
    return run


@pytest.mark.parametrize("kind", ["teacher", "bench"])
def test_a_fast_path_that_fails_before_the_first_epoch_end_trains_again_without_it(window, kind):
    proc, record, calls = window("fast_path", "on", kind)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(calls) == 3
    assert "runtime.compile=off" in calls[1] and "runtime.cuda_graph=off" not in calls[1]
    assert calls[2].endswith("runtime.compile=off runtime.cuda_graph=off")
    assert record["fallback"] == "runtime.compile=off runtime.cuda_graph=off"
    assert record["outcome"] == "paused"  # it trained its epoch, then paused at the time limit
    assert (window.out / "fast_path_failure.txt").read_text().count("simulated failure of the fast path") == 2
    configs = [window.folder / "config.yaml"] if kind == "teacher" else sorted(window.folder.glob("runs/*/config.yaml"))
    assert len(configs) == (1 if kind == "teacher" else 5)  # a bench: CE, KD, DKD, each +/- BTKD
    for config in configs:  # a later window resumes on that path
        runtime = yaml.safe_load(config.read_text())["runtime"]
        assert (runtime["compile"], runtime["cuda_graph"]) == ("off", "off")
    assert sorted(p.name for p in window.out.iterdir()) == [
        "checkpoint.part.00", "fast_path_failure.txt", "record.tar", "unit.json"]


def test_with_fallback_off_a_failure_is_returned_as_it_is(window):
    proc, record, calls = window("fast_path", "off")
    assert proc.returncode == 1
    assert len(calls) == 1 and record["outcome"] == "failed" and "fallback" not in record
    assert not (window.out / "fast_path_failure.txt").exists()


def test_a_failure_after_the_window_made_progress_is_not_retried(window):
    proc, record, calls = window("after_progress", "on")
    assert proc.returncode == 1
    assert len(calls) == 1 and record["outcome"] == "failed" and "fallback" not in record
    # what it trained comes back, as a paused unit's checkpoint would
    assert (window.out / "checkpoint.part.00").is_file() and not (window.out / "fast_path_failure.txt").exists()


def test_a_failed_gpu_preflight_trains_the_window_without_the_fast_path(window):
    # PREFLIGHT=on here, on the CPU: benchmarks/gpu_preflight.py finds no GPU and fails, as it fails on
    # a GPU whose graph trains otherwise than the eager step, a fault the fallback (a crash) cannot see.
    proc, record, calls = window("", "on", preflight="on")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "the GPU preflight failed" in proc.stdout
    assert len(calls) == 1 and calls[0].endswith("runtime.compile=off runtime.cuda_graph=off")
    assert record["fallback"] == "preflight: runtime.compile=off runtime.cuda_graph=off"
    assert record["outcome"] == "paused"
    assert "no CUDA GPU here" in (window.out / "fast_path_failure.txt").read_text()
    runtime = yaml.safe_load((window.folder / "config.yaml").read_text())["runtime"]
    assert (runtime["compile"], runtime["cuda_graph"]) == ("off", "off")
