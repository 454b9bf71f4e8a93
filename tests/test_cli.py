"""The command line: help, configs, errors with a fix, a real train/distill/eval/report round, torchrun."""

import json
import os
import subprocess
import sys

import pytest

from btkd.cli import build_parser, main

SMALL = ["data.name=synthetic", "data.options={size: 64, num_classes: 4, image_size: 8}", "data.batch_size=16",
         "optim.epochs=2", "optim.milestones=[1]", "runtime.progress=false"]


def test_every_command_has_help(capsys):
    for cmd in ("train", "distill", "bench", "eval", "inspect-teacher", "demo", "report", "configs", "methods",
                "models"):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([cmd, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "usage: btkd" in out and "%%" not in out, cmd  # a description is printed as written


def test_configs_lists_builtins(capsys):
    assert main(["configs"]) == 0
    assert "cifar100/kd_btkd/res32x4_res8x4" in capsys.readouterr().out.split()


def test_errors_say_what_to_fix(tmp_path, capsys):
    assert main(["train", "cifar100/kd/res32x4_res8x4"]) == 2
    assert "use `btkd distill`" in capsys.readouterr().err
    assert main(["distill", "cifar100/teachers/resnet32x4"]) == 2
    assert "use `btkd train`" in capsys.readouterr().err
    assert main(["train", "nope.yaml"]) == 2
    assert "neither a file nor a built-in config" in capsys.readouterr().err
    assert main(["distill", "--resume", str(tmp_path)]) == 2
    assert "holds no config.yaml" in capsys.readouterr().err
    (tmp_path / "bench.yaml").write_text("bench: {}\n")
    assert main(["distill", "--resume", str(tmp_path)]) == 2
    assert f"is a bench folder: continue it with `btkd bench --resume {tmp_path}`" in capsys.readouterr().err
    (tmp_path / "bench.yaml").unlink()
    (tmp_path / "b" / "runs" / "kd-s0").mkdir(parents=True)  # a bench's member: the bench resumes it
    (tmp_path / "b" / "bench.yaml").write_text("bench: {}\n")
    assert main(["distill", "--resume", str(tmp_path / "b" / "runs" / "kd-s0")]) == 2
    assert f"is a member of the bench {tmp_path / 'b'}, whose checkpoint holds every member: continue it with " \
        f"`btkd bench --resume {tmp_path / 'b'}`" in capsys.readouterr().err
    (tmp_path / "b" / "config.yaml").write_text("name: x\n")
    assert main(["eval", str(tmp_path / "b" / "config.yaml")]) == 2
    assert "config.yaml is not a weights file; pass one (a run's last.safetensors" in capsys.readouterr().err
    assert main(["distill", "cifar100/kd_btkd/res32x4_res8x4", *SMALL, f"output_dir={tmp_path}",
                 f"model.teacher_checkpoint={tmp_path}/none.safetensors"]) == 2
    assert "Train the teacher first (e.g. `btkd train cifar100/teachers/resnet32x4`, whose run folder" \
        in capsys.readouterr().err
    assert main(["train", "cifar100/teachers/resnet32x4", *SMALL, "runtime.device=gpu"]) == 2
    assert "runtime.device='gpu' is not a device: use auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert main(["train", "cifar100/teachers/resnet32x4", "optim.lr=fast"]) == 2
    assert "optim.lr='fast' must be a number" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\ndata:\n  name: cifar100\n  root: " + str(tmp_path / "missing") + "\ndistill:\n  method: ce\n")
    assert main(["train", str(cfg), f"output_dir={tmp_path}"]) == 2
    assert "missing" in capsys.readouterr().err


def test_train_distill_eval_report_round(tmp_path, capsys):
    out = str(tmp_path)
    assert main(["train", "cifar100/teachers/resnet32x4", *SMALL, f"output_dir={out}", "name=t",
                 "model.student=convnet", "model.student_options={width: 4}"]) == 0
    ckpt = tmp_path / "t" / "best.safetensors"
    assert main(["distill", "cifar100/kd_btkd/res32x4_res8x4", *SMALL, f"output_dir={out}", "name=s",
                 "model.student=mlp", "model.teacher=convnet", "model.teacher_options={width: 4}",
                 f"model.teacher_checkpoint={ckpt}"]) == 0
    printed = capsys.readouterr().out
    assert "last-epoch acc" in printed and "best-epoch acc" in printed
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["btkd"] and summary["method"] == "kd"
    assert f"s: last-epoch acc {summary['last_acc']:.2f}%, best-epoch acc {summary['best_acc']:.2f}% (epoch " \
        f"{summary['best_epoch']})" in printed
    # eval reproduces the best epoch's accuracy from the exported weights
    assert main(["eval", str(tmp_path / "s" / "best.safetensors")]) == 0  # the run folder's config
    printed = capsys.readouterr().out
    assert f"top-1 {summary['best_acc']:.2f}%" in printed
    assert main(["eval", str(ckpt), "--model", "convnet", "--data", "synthetic",
                 "data.options={size: 64, num_classes: 4, image_size: 8}", "model.student_options={width: 4}"]) == 0
    assert "convnet on synthetic test: top-1" in capsys.readouterr().out
    assert main(["eval", str(ckpt)]) == 0 and "convnet" in capsys.readouterr().out
    assert main(["eval", str(ckpt), "--model", "resnet8"]) == 2
    assert "does not fit" in capsys.readouterr().err
    outside = tmp_path / "copied.safetensors"  # weights away from their run folder: the data is assumed
    outside.write_bytes(ckpt.read_bytes())
    assert main(["eval", str(outside), "--model", "convnet", "model.student_options={width: 4}"]) == 2
    assert "(btkd eval took --data cifar100, its default, as no run folder or --config names the data; give " \
        "--data NAME)" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "t" / "bset.safetensors")]) == 2  # a mistyped path is said, not --model
    assert "btkd eval: no file at" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a config key given as an option: the key=value form is named
        main(["distill", str(tmp_path / "s" / "config.yaml"), "--epochs=2"])
    assert "btkd distill: error: unrecognised arguments: --epochs=2; config settings are key=value overrides, " \
        "e.g. optim.epochs=..." in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "s")]) == 2  # the run folder: the file to pass is named
    assert f"is a folder; pass a weights file in it, e.g. btkd eval {tmp_path / 's' / 'last.safetensors'}" \
        in capsys.readouterr().err
    assert main(["inspect-teacher", str(tmp_path / "s")]) == 2  # a student's run: its config names the teacher
    assert f"is a run folder: inspect the teacher of its config, btkd inspect-teacher {tmp_path / 's' / 'config.yaml'}" \
        in capsys.readouterr().err
    assert main(["inspect-teacher", str(tmp_path / "t")]) == 2  # a teacher's run: its weights
    assert f"is a teacher's run folder: inspect its weights, btkd inspect-teacher {tmp_path / 't' / 'last.safetensors'}" \
        in capsys.readouterr().err
    assert main(["train", str(tmp_path / "t")]) == 2  # train given a run folder: its config, or --resume
    assert f"is a folder; its config is {tmp_path / 't' / 'config.yaml'}" in capsys.readouterr().err
    assert main(["eval", str(ckpt), "--device", "gpu"]) == 2
    assert "runtime.device='gpu' is not a device: use auto, cpu, cuda or cuda:N (`--device` for btkd eval)" \
        in capsys.readouterr().err
    assert main(["report", str(tmp_path / "t"), str(tmp_path / "s"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "KD+BTKD" in md and "| t | synthetic | 64 | convnet | CE | 0 |" in md
    for png in ("accuracy.png", "beta.png", "teacher_wrong.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 1000
    # the run can be continued from its folder: it is finished, so resume runs no epoch
    assert main(["distill", "--resume", str(tmp_path / "s")]) == 0
    # ... with the subcommand it was started with, as a fresh start must be
    assert main(["train", "--resume", str(tmp_path / "s")]) == 2
    assert f"holds a distillation run (distill.method='kd'); continue it with `btkd distill --resume " \
        f"{tmp_path / 's'}`" in capsys.readouterr().err
    assert main(["distill", "--resume", str(tmp_path / "t")]) == 2
    assert f"continue it with `btkd train --resume {tmp_path / 't'}`" in capsys.readouterr().err


def test_torchrun_two_processes_on_cpu(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: ddp\ndistill: {method: ce}\nmodel: {student: convnet, student_options: {width: 4}}\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "btkd.cli", "train", str(cfg), *SMALL, f"output_dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((tmp_path / "ddp" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["effective_batch_size"] == 32
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in log] == [64, 64], "both processes' samples are counted"


def test_a_bench_config_given_to_distill_says_to_use_bench(capsys):
    assert main(["distill", "cifar100/bench/res32x4_res8x4"]) == 2
    assert "btkd bench cifar100/bench/res32x4_res8x4" in capsys.readouterr().err
    assert main(["bench", "cifar100/kd/res32x4_res8x4"]) == 2
    assert "needs a 'bench:' section" in capsys.readouterr().err


def test_methods_lists_every_host_with_its_paper_and_btkd_status(capsys):
    from btkd.losses import HOSTS

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in HOSTS:
        assert f"distill.method={name};" in out
    assert "label_swap" in out and "BTKD: refused" in out and "Hinton" in out and "needs: epoch, learnable" in out


def test_version(capsys):
    from btkd import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"btkd {__version__} (torch ")


def test_models_lists_every_model_with_its_size(capsys):
    from btkd.models import MODELS

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line and not line.startswith(" ")}
    for name in MODELS:
        assert name in rows, name
    assert "(1,233,540)" in rows["resnet8x4"] and "(7,433,860)" in rows["resnet32x4"]  # 100 classes
    assert rows["resnet8x4"].split()[1:3] == ["1.23", "M"]  # the published figure, in millions
    assert main(["models", "--num-classes", "10"]) == 0
    assert "(1,210,410)" in capsys.readouterr().out  # resnet8x4 with a head of 256 x 10 + 10


def test_configs_prints_a_config_fully_resolved(tmp_path, capsys):
    import yaml

    from btkd.config import config_to_dict, load_config

    assert main(["configs", "cifar100/kd_btkd/res32x4_res8x4"]) == 0
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    assert {**printed, "name": "kd_btkd_res32x4_res8x4"} == config_to_dict(load_config("cifar100/kd_btkd/res32x4_res8x4"))
    assert "\n# name: kd_btkd_res32x4_res8x4   (the run name btkd gives it" in text  # a comment, not a key
    assert printed["runtime"]["device"] == "auto"  # defaults included
    assert main(["configs", "cifar100/kd/res32x4_res8x4", "model.student=resnet20", "optim.epochs=10",
                 "optim.milestones=[5]"]) == 0
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    assert "# name: kd_resnet32x4_resnet20 " in text
    assert (printed["model"]["student"], printed["optim"]["epochs"]) == ("resnet20", 10)
    # what it prints is a config of its own, whose runs are named after what they are
    (tmp_path / "mine.yaml").write_text(text)
    assert {k: v for k, v in config_to_dict(load_config(tmp_path / "mine.yaml")).items() if k != "name"} == printed
    assert main(["configs", str(tmp_path / "mine.yaml")]) == 0
    assert "# name: kd_resnet32x4_resnet20 " in capsys.readouterr().out
    assert main(["configs", str(tmp_path / "mine.yaml"), "distill.btkd.enabled=true"]) == 0
    assert "# name: kd_btkd_resnet32x4_resnet20 " in capsys.readouterr().out
    assert main(["configs", "cifar100/bench/res32x4_res8x4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["bench"]["seeds"] == [0, 1, 2] and "kd_btkd" in printed["bench"]["methods"]
    assert main(["configs", "cifar100/kd/nope"]) == 2
    assert "neither a file nor a built-in" in capsys.readouterr().err
    # a config that train or distill would refuse is not printed, but refused with what to fix
    for override, said in [("distill.method=kdd", "Did you mean 'kd'?"),
                           ("model.student=resnet200", "Did you mean 'resnet20'? `btkd models` lists them"),
                           ("model.teacher=wrn_40_3", "model.teacher='wrn_40_3' is not a model"),
                           ("data.name=cifar1000", "Did you mean 'cifar100'?"),
                           ("distill.options.tua=2", "host 'kd' has no option tua; its options are tau")]:
        assert main(["configs", "cifar100/kd/res32x4_res8x4", override]) == 2
        captured = capsys.readouterr()
        assert said in captured.err and captured.out == ""


def test_a_run_with_another_student_gets_its_own_folder(tmp_path, capsys):
    common = [*SMALL, f"output_dir={tmp_path}", "model.student_options={width: 4}"]
    assert main(["train", "cifar100/teachers/resnet32x4", *common, "model.student=convnet"]) == 0
    out = capsys.readouterr().out
    assert "run name: synthetic_teacher_convnet ('teacher_resnet32x4', the config's name, describes another run" in out
    assert (tmp_path / "synthetic_teacher_convnet" / "summary.json").is_file()
    assert not (tmp_path / "teacher_resnet32x4").exists()
    assert main(["train", "cifar100/teachers/resnet32x4", *common, "model.student=convnet", "name=mine"]) == 0
    assert "run name:" not in capsys.readouterr().out and (tmp_path / "mine" / "summary.json").is_file()


def test_relative_paths_are_read_from_the_current_directory_in_every_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "cifar100/teachers/resnet32x4", *SMALL, "output_dir=runs", "name=t",
                 "model.student=convnet", "model.student_options={width: 4}"]) == 0
    assert (tmp_path / "runs" / "t" / "last.safetensors").is_file()
    teacher = ["model.teacher=convnet", "model.teacher_options={width: 4}",
               "model.teacher_checkpoint=runs/t/last.safetensors"]
    assert main(["distill", "cifar100/kd/res32x4_res8x4", *SMALL, "output_dir=runs", "name=s", "model.student=mlp",
                 *teacher]) == 0
    assert main(["eval", "runs/s/last.safetensors"]) == 0
    assert main(["eval", "runs/t/last.safetensors", "--model", "convnet", "--data", "synthetic",
                 "data.options={size: 64, num_classes: 4, image_size: 8}", "model.student_options={width: 4}"]) == 0
    (tmp_path / "s.yaml").write_text("inherit: cifar100/kd/res32x4_res8x4\n")
    assert main(["inspect-teacher", "s.yaml", *SMALL[:3], *teacher, "--out", "rep", "--aug-epochs", "1"]) == 0
    assert (tmp_path / "rep" / "teacher.json").is_file()
    assert main(["report", "runs/t", "runs/s", "--out", "rep2"]) == 0
    assert (tmp_path / "rep2" / "report.md").is_file()
    capsys.readouterr()
    monkeypatch.chdir(tmp_path / "runs")  # elsewhere, the same relative path names another file
    assert main(["distill", "cifar100/kd/res32x4_res8x4", *SMALL, "output_dir=runs", "name=s2",
                 "model.student=mlp", *teacher]) == 2
    err = capsys.readouterr().err
    assert "no file at runs/t/last.safetensors" in err and f"current directory: {tmp_path / 'runs'}" in err


def test_a_reader_that_leaves_early_gets_no_traceback():
    import subprocess

    # `btkd configs | head -1`: the pipe closes before btkd has written everything
    proc = subprocess.Popen([sys.executable, "-m", "btkd.cli", "configs"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and "Traceback" not in err and "BrokenPipe" not in err, err


PLUGIN = '''
import torch
import btkd
from btkd.losses import HostLoss


@btkd.register_host("test_plugin_mse")
class MSE(HostLoss):
    def per_sample(self, s, t, y, target_probs=None):
        return ((s - t) ** 2).mean(1)


class Quarter:  # beta fixed at 0.25, asked once per epoch
    per_iteration = False

    def __call__(self, epoch, epochs):
        return 0.25


btkd.schedules.SCHEDULES["test_plugin_quarter"] = Quarter


@btkd.models.register_model("test_plugin_linear")
def linear(num_classes=100, in_channels=3, **kwargs):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * 8 * 8, num_classes))
'''


def test_a_configs_imports_bring_a_users_own_host_and_model_to_the_command_line(tmp_path, monkeypatch, capsys):
    import sys

    import yaml

    from btkd import HOSTS
    from btkd.config import ConfigError, load_config
    from btkd.models import MODELS
    from btkd.schedules import SCHEDULES

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "test_plugin_mod.py").write_text(PLUGIN)
    base = {"data": {"name": "synthetic", "options": {"size": 64, "num_classes": 4, "image_size": 8},
                     "batch_size": 16}, "optim": {"epochs": 1, "milestones": []}, "runtime": {"progress": False}}
    try:
        assert main(["train", *_yaml(tmp_path / "t.yaml", {**base, "name": "t", "distill": {"method": "ce"},
                                                          "model": {"student": "convnet", "student_options": {"width": 4}}})]) == 0
        student = {**base, "name": "s", "imports": ["test_plugin_mod"],
                   "model": {"student": "test_plugin_linear", "teacher": "convnet", "teacher_options": {"width": 4},
                             "teacher_checkpoint": "runs/t/last.safetensors"},
                   "distill": {"method": "test_plugin_mse", "btkd": {"enabled": True, "schedule": "test_plugin_quarter"}}}
        assert main(["distill", *_yaml(tmp_path / "s.yaml", student)]) == 0
        assert yaml.safe_load((tmp_path / "runs" / "s" / "config.yaml").read_text())["imports"] == ["test_plugin_mod"]
        log = json.loads((tmp_path / "runs" / "s" / "log.jsonl").read_text().splitlines()[0])
        assert log["beta"] == 0.25
        # the saved config imports it again: a resume in a fresh process finds the host and model
        del HOSTS["test_plugin_mse"], MODELS["test_plugin_linear"], SCHEDULES["test_plugin_quarter"]
        del sys.modules["test_plugin_mod"]
        assert main(["distill", "--resume", "runs/s", "optim.epochs=2"]) == 0
        assert len((tmp_path / "runs" / "s" / "log.jsonl").read_text().splitlines()) == 2
        with pytest.raises(ConfigError, match=r"imports: cannot import 'no_such_plugin' .*current directory"):
            load_config({"imports": ["no_such_plugin"]})
    finally:
        HOSTS.pop("test_plugin_mse", None)
        MODELS.pop("test_plugin_linear", None)
        SCHEDULES.pop("test_plugin_quarter", None)
        sys.modules.pop("test_plugin_mod", None)


def _yaml(path, data):
    import yaml

    path.write_text(yaml.safe_dump(data))
    return [str(path)]


def test_a_missing_extra_is_a_one_line_error_naming_it(tmp_path, monkeypatch, capsys):
    """A plain `pip install btkd` has no scikit-learn ([digits]) or Pillow ([images]): a command that
    needs one says which extra to install, in one line, as for any other user error (not a traceback)."""
    from trees import random_image_tree

    random_image_tree(tmp_path / "tree", {"train": 2, "val": 1})
    for module in ("sklearn", "sklearn.datasets", "PIL", "PIL.Image"):
        monkeypatch.setitem(sys.modules, module, None)  # their import raises ImportError
    out = ["output_dir=" + str(tmp_path / "runs"), "optim.epochs=1", "optim.milestones=[]", "runtime.progress=false"]
    assert main(["train", "fashion_mnist/teachers/convnet", "data.name=digits", "data.train_subset=null", *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("btkd train: error: ") and "pip install 'btkd[digits]'" in err and "Traceback" not in err
    assert main(["train", "fashion_mnist/teachers/convnet", "data.name=imagefolder", "data.train_subset=null",
                 f"data.root={tmp_path / 'tree'}", "data.image_size=8", "data.workers=0", *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("btkd train: error: ") and "pip install 'btkd[images]'" in err


def test_python_dash_m_btkd_is_the_command():
    # where the console script is not on the PATH (a venv not activated), `python -m btkd` still works
    out = subprocess.run([sys.executable, "-m", "btkd", "configs"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "cifar100/kd_btkd/res32x4_res8x4" in out.stdout.split()
    bad = subprocess.run([sys.executable, "-m", "btkd", "train", "nope.yaml"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "neither a file nor a built-in config" in bad.stderr


def test_a_full_disk_is_a_one_line_error_that_says_the_checkpoint_is_intact(tmp_path, monkeypatch, capsys):
    import errno

    import btkd.engine.grid as grid_module

    def full(state, path):  # the first checkpoint finds the disk full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(grid_module, "save_atomic", full)
    run = ["train", "cifar100/teachers/resnet32x4", *SMALL, f"output_dir={tmp_path}", "model.student=convnet",
           "model.student_options={width: 4}"]
    assert main([*run, "name=t"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device writing" in err and "checkpoint.pt" in err
    assert "btkd train --resume <its folder>" in err
    # stopped before its first checkpoint, the run left no folder to resume: the message says what then
    assert not (tmp_path / "t").exists() and "leaves no folder: run the same command again" in err
    monkeypatch.setattr(grid_module, "save_atomic", lambda *a: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(PermissionError):  # other OS errors keep their traceback
        main([*run, "name=u"])


def test_a_disk_that_fills_while_torch_saves_the_checkpoint_is_the_same_one_line_error(tmp_path, capsys,
                                                                                        monkeypatch):
    # torch.save's zip writer, closing after the write that found the disk full, raises its own
    # RuntimeError ("unexpected pos") over the OSError: a traceback that did not say the disk was full
    import errno

    import btkd.engine.checkpoint as checkpoint

    class Full:  # a disk with 4 kB left
        def __init__(self, f):
            self.f, self.left = f, 4096

        def write(self, b):
            if len(b) > self.left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= len(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    real, saves = checkpoint.write_atomic, []

    def write_atomic(path, write):
        if os.path.basename(path) == "checkpoint.pt":
            saves.append(path)
            if len(saves) == 2:  # epoch 2's checkpoint
                return real(path, lambda f: write(Full(f)))
        return real(path, write)

    monkeypatch.setattr(checkpoint, "write_atomic", write_atomic)
    run = ["train", "cifar100/teachers/resnet32x4", *SMALL, f"output_dir={tmp_path}", "model.student=convnet",
           "model.student_options={width: 4}", "name=t"]
    assert main(run) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"No space left on device writing {tmp_path / 't' / 'checkpoint.pt'}" in err
    monkeypatch.setattr(checkpoint, "write_atomic", real)
    assert main(["train", "--resume", str(tmp_path / "t")]) == 0  # from epoch 1's checkpoint, intact
    assert [r["epoch"] for r in map(json.loads, (tmp_path / "t" / "log.jsonl").read_text().splitlines())] == [1, 2]


def test_eval_keeps_key_value_overrides_that_its_flags_were_not_given_for(tmp_path, capsys):
    # --batch-size and --device were 500 and auto when left out, applied after data.eval_batch_size=... and
    # runtime.device=...: those were ignored without a word (a run meant for the CPU went to the GPU)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not weights")
    assert main(["eval", str(weights), "--model", "convnet", "data.eval_batch_size=0"]) == 2
    assert "data.eval_batch_size=0 is out of range: expected an integer >= 1" in capsys.readouterr().err
    assert main(["eval", str(weights), "--model", "convnet", "runtime.device=gpu"]) == 2
    assert "runtime.device='gpu' is not a device" in capsys.readouterr().err
    # a flag given still wins over the override
    assert main(["eval", str(weights), "--model", "convnet", "data.eval_batch_size=5", "--batch-size", "0"]) == 2
    assert "data.eval_batch_size=0 is out of range" in capsys.readouterr().err


def test_odd_overrides_are_one_line_errors(capsys):
    for args, said in [(["distill=yes"], "distill must be a mapping of keys to values, got True; set its keys"),
                       (["model=resnet20"], "model must be a mapping of keys to values, got 'resnet20'"),
                       (["distill.options={1: 2}"], "distill.options: the key 1 is not a name"),
                       (["name=yes"], "name=yes must be a string, but YAML reads it as bool True; quote it: "
                                      "\"name='yes'\"")]:
        assert main(["configs", "cifar100/kd/res32x4_res8x4", *args]) == 2
        err = capsys.readouterr().err
        assert err == f"btkd configs: error: {said}" + err.split(said, 1)[1] and err.count("\n") == 1, err
    # the optional overrides are not named among the missing arguments
    for command, missing in (("eval", "checkpoint"), ("inspect-teacher", "source")):
        with pytest.raises(SystemExit):
            main([command])
        err = capsys.readouterr().err
        assert err.rstrip().endswith(f"the following arguments are required: {missing}"), err


# A `btkd` process that waits in a chosen training step (counted from 1; 6 steps an epoch) for the
# SIGTERM the test sends it, as a scheduler's pre-emption or `kill PID` would land mid-epoch.
SIGTERM_CHILD = """
import os, sys, time
from pathlib import Path
from btkd.engine.step import TrainStep
from btkd.cli import main
at, argv = int(sys.argv[1]), sys.argv[3:]
marker = Path(sys.argv[2] + os.environ.get("RANK", "0"))  # one per process under torchrun
real, calls = TrainStep.__call__, [0]
def call(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == at:
        marker.touch()
        time.sleep(300)
    return real(self, *args, **kwargs)
TrainStep.__call__ = call
sys.exit(main(argv))
"""


def sigterm_at(tmp_path, step, argv, env, group=False):
    """Run ``btkd argv`` in `SIGTERM_CHILD`, SIGTERM it (``group``: with every process it started, as a
    scheduler signals a whole job) while it waits in ``step``; its stderr, after checking that it
    stopped cleanly with status 143."""
    import signal
    import time

    marker = tmp_path / f"waiting{step}_"
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(step), str(marker), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=group)
    deadline = time.monotonic() + 300
    marker = tmp_path / f"waiting{step}_0"
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1][-2000:]
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
    return err


def test_sigterm_stops_a_run_as_ctrl_c_does_and_resume_finishes_it_to_the_uninterrupted_result(tmp_path):
    import torch
    import yaml
    from safetensors.torch import load_file
    from small_run import SMALL as RUN

    from btkd.engine.run_folder import read_log

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**RUN, "output_dir": str(tmp_path), "name": "run"}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # every process sums in the same order: equal bit for bit

    def btkd(*argv):
        return subprocess.run([sys.executable, "-m", "btkd.cli", *argv], capture_output=True, text=True,
                              timeout=300, env=env)

    def terminated_at(step, *argv):
        return sigterm_at(tmp_path, step, argv, env)

    folder = tmp_path / "run"
    # in its first epoch: nothing to keep, the folder goes, as after Ctrl-C
    err = terminated_at(3, "train", str(path))
    assert "btkd train: terminated (SIGTERM); stopped before its first checkpoint" in err
    assert not folder.exists()
    # in epoch 2: epoch 1 is checkpointed, and the message gives the command that continues it
    err = terminated_at(9, "train", str(path))
    assert f"btkd train: terminated (SIGTERM); the last finished epoch is checkpointed; continue with: " \
           f"btkd train --resume {folder}" in err
    assert [r["epoch"] for r in read_log(folder / "log.jsonl")] == [1]
    assert not list(folder.glob(".*.tmp")), "no temp file left"
    done = btkd("train", "--resume", str(folder))
    assert done.returncode == 0, done.stderr[-2000:]
    reference = btkd("train", str(path), "name=ref")
    assert reference.returncode == 0, reference.stderr[-2000:]
    timing = {"epoch_time", "images_per_s", "wall_time"}
    logs = [[{k: v for k, v in r.items() if k not in timing} for r in read_log(f / "log.jsonl")]
            for f in (folder, tmp_path / "ref")]
    assert len(logs[0]) == 3 and logs[0] == logs[1]
    a, b = load_file(str(folder / "last.safetensors")), load_file(str(tmp_path / "ref" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_to_a_whole_job_with_loader_workers_stops_it_cleanly(tmp_path):
    # Slurm signals every process of a job: the DataLoader workers of an imagefolder run die of it,
    # which must not turn the run's clean stop into a traceback
    from trees import random_image_tree

    random_image_tree(tmp_path / "tree", {"train": 6, "val": 2}, size=(20, 24))
    path = tmp_path / "run.yaml"
    path.write_text(f"name: run\noutput_dir: {tmp_path}\ndistill: {{method: ce}}\n"
                    "model: {student: convnet, student_options: {width: 4}}\n"
                    f"data: {{name: imagefolder, root: {tmp_path / 'tree'}, image_size: 16, workers: 2, batch_size: 4, "
                    "eval_batch_size: 4}\noptim: {epochs: 3, milestones: []}\nruntime: {progress: false}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    err = sigterm_at(tmp_path, 5, ["train", str(path)], env, group=True)  # 3 steps an epoch: in epoch 2
    assert f"continue with: btkd train --resume {tmp_path / 'run'}" in err
    done = subprocess.run([sys.executable, "-m", "btkd.cli", "train", "--resume", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and (tmp_path / "run" / "summary.json").is_file(), done.stderr[-2000:]


def test_sigterm_to_torchrun_stops_every_worker_with_one_message(tmp_path):
    # torchrun passes the SIGTERM it gets (a scheduler's) on to its workers: each stops as after
    # Ctrl-C, and only rank 0 says what was kept
    import signal
    import time

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: ddp\ndistill: {method: ce}\nmodel: {student: convnet, student_options: {width: 4}}\n")
    child = tmp_path / "child.py"
    child.write_text(SIGTERM_CHILD)
    # 64 images, 2 processes of 16: 2 steps an epoch; both wait in epoch 2's second step
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(child), "4",
           str(tmp_path / "waiting_"), "train", str(cfg), *SMALL, "optim.epochs=3", f"output_dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 300
    markers = [tmp_path / f"waiting_{rank}" for rank in (0, 1)]
    while not all(m.exists() for m in markers) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(m.exists() for m in markers), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)  # to torchrun alone
    out, err = proc.communicate(timeout=300)
    said = (out + err).count("btkd train: ")
    assert said == 1 and f"terminated (SIGTERM); the last finished epoch is checkpointed; continue with: btkd " \
                          f"train --resume {tmp_path / 'ddp'}" in err, err[-3000:]
    assert "RuntimeError" not in err, "no worker failed on its way out (a collective its peer left)"
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1] and not list((tmp_path / "ddp").glob(".*.tmp"))


def test_the_cli_sigterm_handler_is_the_cli_s_alone(tmp_path, monkeypatch):
    # `main` installs it for the command and restores the caller's after; the library installs none
    import signal

    from btkd.engine import Grid
    from small_run import cfg, quiet

    mine = lambda signum, frame: None  # noqa: E731  (a program's own handler)
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        seen, real = [], Grid.train_epoch

        def spy(self, epoch, bar=None):
            seen.append(signal.getsignal(signal.SIGTERM))
            return real(self, epoch, bar)

        monkeypatch.setattr(Grid, "train_epoch", spy)
        quiet(cfg(tmp_path, "optim.epochs=1", "optim.milestones=[]", name="lib")).fit()
        assert seen == [mine], "a library run leaves SIGTERM to its program"
        assert main(["train", "--resume", str(tmp_path / "lib"), "optim.epochs=2"]) == 0
        assert len(seen) == 2 and seen[1] is not mine, "the CLI's own handler while the command runs"
        assert signal.getsignal(signal.SIGTERM) is mine, "and the program's again after it"
    finally:
        signal.signal(signal.SIGTERM, previous)



def test_train_prints_the_last_and_the_best_epochs_accuracy(monkeypatch, capsys):
    import btkd.engine as engine

    class Finished:  # a trainer whose run ended with a best epoch before its last
        def __init__(self, cfg):
            self.ctx, self.run_dir = type("Ctx", (), {"is_main": True})(), "runs/x"

        def fit(self):
            return {"name": "x", "last_acc": 50.0, "best_acc": 60.0, "best_epoch": 1, "last_acc_fp32": 49.5}

    monkeypatch.setattr(engine, "Trainer", Finished)
    assert main(["train", "cifar100/teachers/resnet32x4", *SMALL]) == 0
    assert "x: last-epoch acc 50.00% (49.50% with an fp32 test forward), best-epoch acc 60.00% (epoch 1); run " \
        "folder runs/x" in capsys.readouterr().out


@pytest.fixture
def commands_seen(monkeypatch):
    """The configs that `btkd eval` and `btkd inspect-teacher` build, with the evaluation and the inspection
    themselves replaced by stand-ins (no data is read, no model built)."""
    from pathlib import Path

    import btkd.engine.evaluate as evaluate
    import btkd.inspect_teacher as it

    seen = {}

    def fake_eval(cfg, checkpoint):
        seen["eval"] = cfg
        return {"acc": 50.0, "top5": 90.0, "loss": 1.0, "n": 10}

    def fake_inspect(cfg, out, aug_epochs=3, compare_bf16=False, echo=print):
        seen["inspect"] = (cfg, Path(out), aug_epochs)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "report.md").write_text("")

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", fake_eval)
    monkeypatch.setattr(it, "inspect_teacher", fake_inspect)
    return seen


RUN = {"model": {"student": "convnet", "student_options": {"width": 4}}, "distill": {"method": "ce"},
       "data": {"name": "synthetic", "root": "elsewhere/data", "options": {"size": 64, "num_classes": 4}}}


def test_eval_and_inspect_teacher_build_the_model_and_data_the_weights_were_trained_with(tmp_path, monkeypatch,
                                                                                        commands_seen):
    """The defaults their help names; a published teacher's model and data, less the data folder of the
    machine it trained on; a run's model options only for its own model, its data options only for its data."""
    from pathlib import Path

    import yaml

    from btkd.weights import file_sha256

    seen = commands_seen
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights" / "t").mkdir(parents=True)
    (tmp_path / "weights" / "t" / "config.yaml").write_text(yaml.safe_dump(RUN))
    (tmp_path / "weights" / "t.safetensors").write_bytes(b"x")
    (tmp_path / "weights" / "manifest.json").write_text(json.dumps(
        {"t": {"file": "t.safetensors", "sha256": file_sha256(tmp_path / "weights" / "t.safetensors"),
               "model": "convnet", "record": "t/"}}))
    monkeypatch.setenv("BTKD_WEIGHTS", str(tmp_path / "weights"))

    assert main(["eval", "weights:t"]) == 0
    cfg = seen["eval"]
    assert (cfg.model.student, cfg.model.student_options, cfg.data.name, cfg.data.root) == \
        ("convnet", {"width": 4}, "synthetic", None)
    assert (cfg.data.eval_batch_size, cfg.runtime.device) == (500, "auto")
    assert main(["inspect-teacher", "weights:t"]) == 0
    cfg, out, aug_epochs = seen["inspect"]
    assert (cfg.model.teacher, cfg.model.teacher_options, cfg.data.name, cfg.data.root) == \
        ("convnet", {"width": 4}, "synthetic", None)
    assert (out, aug_epochs) == (Path("reports/inspect_convnet"), 3)

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(RUN))
    assert main(["inspect-teacher", "run/checkpoint.pt", "--model", "mlp"]) == 0  # a run's checkpoint.pt too
    cfg = seen["inspect"][0]
    assert (cfg.model.teacher, cfg.model.teacher_options, cfg.data.root) == ("mlp", {}, "elsewhere/data")
    assert main(["inspect-teacher", "run/last.safetensors", "--data", "digits"]) == 0
    cfg = seen["inspect"][0]
    assert (cfg.model.teacher_options, cfg.data.name, cfg.data.options, cfg.data.root) == \
        ({"width": 4}, "digits", {}, None)


def test_inspect_teacher_knows_weights_without_a_suffix_as_eval_does(tmp_path, monkeypatch, commands_seen, capsys):
    # mdistiller names its checkpoints student_best / student_latest: they were taken for configs, and
    # --model refused ("--model and --data go with a weights file"), while `btkd eval` loads them
    import torch
    import yaml

    monkeypatch.chdir(tmp_path)
    torch.save({"model": {}}, tmp_path / "student_best")
    assert main(["inspect-teacher", "student_best", "--model", "mlp", "--data", "synthetic"]) == 0, \
        capsys.readouterr().err
    cfg = commands_seen["inspect"][0]
    assert (cfg.model.teacher, cfg.model.teacher_checkpoint, cfg.data.name) == ("mlp", "student_best", "synthetic")
    (tmp_path / "my_config").write_text(yaml.safe_dump({**RUN, "distill": {"method": "kd"}, "model": {
        "student": "mlp", "teacher": "convnet", "teacher_checkpoint": "student_best"}}))
    assert main(["inspect-teacher", "my_config"]) == 0  # a config under any name is still a config
    assert commands_seen["inspect"][0].model.teacher == "convnet"
