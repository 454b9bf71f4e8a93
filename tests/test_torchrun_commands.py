"""Regressions from a torchrun audit: `btkd eval` adds up the processes' shares of the test set and
prints once; a test set smaller than the number of processes is refused before training (a process
with no share would leave the sum); inspect-teacher refuses torchrun; a bench reports its global
batch; a bench.yaml beside runs/ does not make single runs bench members."""

import json
import os
import subprocess
import sys

import pytest

import btkd
from btkd.bench import run_bench
from btkd.bench.spec import bench_from_dict
from btkd.cli import main
from btkd.config import load_config
from btkd.engine import Trainer

DATA = {"name": "synthetic", "options": {"size": 202, "num_classes": 5, "image_size": 8, "prototypes": True},
        "global_batch_size": 16, "eval_batch_size": 40, "train_subset": 96, "test_subset": 101}
RUN = {"output_dir": ".", "optim": {"epochs": 2, "milestones": []}, "runtime": {"progress": False},
       "model": {"student": "mlp"}, "distill": {"method": "ce"}, "data": DATA}


def torchrun(tmp_path, *argv):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "btkd.cli", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          # this btkd, wherever the test runs from
                          env={**os.environ, "OMP_NUM_THREADS": "1",
                               "PYTHONPATH": os.path.dirname(os.path.dirname(btkd.__file__))})


def test_eval_under_torchrun_scores_the_whole_test_set_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Trainer(load_config({**RUN, "name": "m"}), echo=lambda *_: None).fit()
    assert main(["eval", "m/last.safetensors"]) == 0
    want = capsys.readouterr().out.strip()
    assert "(101 images)" in want
    proc = torchrun(tmp_path, "eval", "m/last.safetensors")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == want, "one line, the whole test set's figures"


def test_a_test_set_smaller_than_the_processes_is_refused_before_training(tmp_path):
    import dataclasses

    from trees import random_image_tree

    from btkd.config import ConfigError
    from btkd.engine.build import build_data, setup_runtime
    from btkd.engine.distributed import Context

    random_image_tree(tmp_path / "tree", {"train": 4, "val": 3})
    tree = {"name": "imagefolder", "root": str(tmp_path / "tree"), "image_size": 8, "workers": 0, "batch_size": 2,
            "eval_batch_size": 2, "test_subset": 1}
    for data in (tree, {**DATA, "test_subset": 1}):  # streamed from disk, and held in memory
        cfg = load_config({**RUN, "name": "x", "data": data})
        rt = dataclasses.replace(setup_runtime(cfg), ctx=Context(rank=1, world_size=2))  # rank 1 of 2
        with pytest.raises(ConfigError, match="the test set holds 1 images, fewer than the 2 processes"):
            build_data(cfg, rt)


def test_inspect_teacher_refuses_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["inspect-teacher", "ckpt.pth", "--model", "convnet", "--data", "synthetic"]) == 2
    assert "without torchrun" in capsys.readouterr().err


def test_a_bench_reports_its_global_batch(tmp_path):
    spec = bench_from_dict({**RUN, "output_dir": str(tmp_path), "name": "b", "optim": {"epochs": 1, "milestones": []},
                            "bench": {"seeds": [0], "methods": {"ce": {"distill": {"method": "ce"}}}}})
    results = run_bench(spec, echo=lambda *_: None)
    assert results["data"]["batch_size"] == 16  # data.global_batch_size, not data.batch_size's default 64
    assert "batch 16)" in (tmp_path / "b" / "results.md").read_text()


def test_a_bench_yaml_beside_runs_does_not_make_single_runs_bench_members(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bench.yaml").write_text("bench: {}\n")  # the user's own bench config
    Trainer(load_config({**RUN, "output_dir": "runs", "name": "r", "runtime": {"progress": False, "time_limit": 1e-6}}),
            echo=lambda *_: None).fit()  # paused after epoch 1
    assert main(["train", "--resume", "runs/r", "runtime.time_limit=null"]) == 0, capsys.readouterr().err
    assert "last-epoch acc" in capsys.readouterr().out
