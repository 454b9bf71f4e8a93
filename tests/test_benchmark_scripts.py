"""The scripts in benchmarks/, run on the CPU at their smallest (small models where a script's own are
CIFAR-sized): each still runs against the library and writes what its committed results file holds.
Values are never checked against wall-clock time, only their presence and sign."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from btkd.bench.spec import load_bench
from btkd.config import load_config
from btkd.engine.checkpoint import export_weights
from btkd.models import build_model
from repo_scripts import ROOT, load_script


@pytest.fixture(autouse=True)
def keep_torch_threads():
    # the scripts run in this process and some set torch's thread count (imagefolder_throughput: 1); a
    # later test's bf16 forward then reduces in another order and gives other numbers
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


RESULTS = ROOT / "benchmarks" / "results"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a GPU-only script says without CUDA")


def committed(name):
    return json.loads((RESULTS / name).read_text())


def small(build):  # the scripts' resnet32x4 / resnet8x4 as the mlp: resnets take seconds a step on a slow CPU
    return lambda name, num_classes=100, **kw: build("mlp", num_classes)


def test_throughput_writes_the_committed_rows(tmp_path, monkeypatch):
    script = load_script("benchmarks/throughput.py")
    monkeypatch.setattr(script, "build_model", small(build_model))
    out = tmp_path / "throughput.json"
    script.main(["--batch-sizes", "8", "--steps", "1", "--workers", "0", "--out", str(out)])
    got, ref = json.loads(out.read_text()), committed("throughput_cpu.json")
    assert got.keys() == ref.keys() and got["graph"] is False and got["steps"] == 1
    (row,) = got["rows"]
    assert row.keys() == ref["rows"][0].keys() and row["batch_size"] == 8
    for key in ("reference_images_per_s", "engine_images_per_s", "engine_over_reference"):
        assert row[key] > 0
    assert row["btkd_overhead"] > -1 and row["kd_spread"] >= 0


@no_cuda
def test_throughput_graph_says_it_needs_a_gpu_before_running(capsys, monkeypatch):
    script = load_script("benchmarks/throughput.py")
    monkeypatch.setattr(script, "time_reference_steps", lambda *a: pytest.fail("timed a reference loop first"))
    with pytest.raises(SystemExit) as exit_:
        script.main(["--graph", "--steps", "1"])
    assert exit_.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err


def test_cpu_grid_small_size_writes_the_committed_keys_and_identical_logs(tmp_path, monkeypatch):
    # --size below the 1000 test images it evaluates on used to fail (data.test_subset=1000)
    script = load_script("benchmarks/cpu_grid.py")
    work = tmp_path / "work"
    monkeypatch.setattr(script, "tempfile", SimpleNamespace(mkdtemp=lambda prefix="": work.mkdir() or str(work)))
    out = tmp_path / "cpu_grid.json"
    script.main(["--size", "256", "--epochs", "1", "--repeats", "1", "--out", str(out)])
    got = json.loads(out.read_text())
    assert got.keys() == committed("cpu_grid.json").keys()
    assert got["logs_identical"] is True and got["grid_over_separate"] > 0 and got["train_images"] == 256
    assert len(got["seconds_grid"]) == len(got["seconds_separate"]) == 1
    assert got["command"].startswith("python benchmarks/cpu_grid.py --size 256")
    assert not work.exists()  # its bench folders are removed


def tiny_gpu_bench_args(tmp_path):
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.safetensors"
    export_weights(build_model("mlp", num_classes=100), teacher)
    return ["--teacher", str(teacher), "model.teacher=mlp", "model.student=mlp",
            "data.options={size: 128, num_classes: 100, image_size: 16}", "data.test_subset=64"]


def test_gpu_bench_smoke_writes_its_grids_and_ratios(tmp_path):
    script = load_script("benchmarks/gpu_bench.py")
    script.main(["--smoke", "--grids", "1,4", "--out", str(tmp_path)] + tiny_gpu_bench_args(tmp_path))
    got = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert set(got["grids"]) == {"1/same", "4/same"}
    assert got["grids"]["4/same"]["methods"] == ["kd", "kd_btkd", "dkd", "dkd_btkd"]
    for g in got["grids"].values():
        assert len(g["epoch_s"]) == 1 and g["sec_per_epoch"] > 0 and g["first_epoch_s"] > 0
    assert set(got["grid_over_single"]) == {"4/same"} and got["grid_over_single"]["4/same"] > 0
    assert got["command"].startswith("python benchmarks/gpu_bench.py --smoke --grids 1,4")


@no_cuda
def test_gpu_bench_without_smoke_says_it_needs_a_gpu(monkeypatch):
    script = load_script("benchmarks/gpu_bench.py")
    monkeypatch.setattr(script, "run_grid", lambda *a: pytest.fail("ran a 50,000-image grid on the CPU"))
    with pytest.raises(SystemExit, match="needs a CUDA GPU.*--smoke"):
        script.main(["--grids", "1"])


def test_gpu_speed_smoke_prints_the_committed_keys_and_its_accuracy_check_is_uncompiled(tmp_path, monkeypatch,
                                                                                        capsys):
    script = load_script("benchmarks/gpu_speed.py")
    monkeypatch.setattr(script, "build_model", small(build_model))
    monkeypatch.setattr(script, "load_config", lambda name, overrides: load_config(
        name, overrides + ["model.teacher=mlp", "model.student=mlp"]))
    monkeypatch.setattr(script, "REF_WORKERS", 0)
    monkeypatch.setattr(script, "tempfile", SimpleNamespace(mkdtemp=lambda: str(tmp_path)))
    script.main(["--smoke"])
    out = capsys.readouterr().out
    got = json.loads(out[out.index("\n{") + 1:])
    ref = committed("gpu_speed.json")
    assert {k for k in ref if "compiled" not in k} <= got.keys()
    for key in ("speedup_over_reference", "ms_per_step_fast_kd", "grid4_over_single", "sec_per_epoch_reference"):
        assert got[key] > 0
    assert got["test_acc_last_epoch"].keys() == ref["test_acc_last_epoch"].keys()
    if not torch.cuda.is_available():  # on a CPU all three accuracy-check paths are the same fp32 eager step
        assert got["loss_rel_diff_graph_fp32_vs_eager_fp32"] == got["loss_rel_diff_fast_bf16_vs_eager_fp32"] == 0
    # measured uncompiled: runtime.compile=auto would compile the graph rows on a GPU now
    for name in ("proto_teacher", "acc_plain_fp32_eager", "acc_graph_fp32", "acc_fast"):
        assert yaml.safe_load((tmp_path / name / "config.yaml").read_text())["runtime"]["compile"] == "off"


def test_gpu_equivalence_reads_keys_a_kd_btkd_log_has_and_runs_uncompiled(tmp_path, monkeypatch):
    script = load_script("benchmarks/gpu_equivalence.py")
    monkeypatch.setattr(script, "DATA", script.DATA + [
        "data.options={size: 128, num_classes: 100, image_size: 32, prototypes: true}", "data.test_subset=64"])
    for flag in ("deterministic", "benchmark"):  # run() sets them: restored after the test
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))
    torch.manual_seed(0)
    (tmp_path / "teacher").mkdir()
    export_weights(build_model("mlp", 100), tmp_path / "teacher" / "last.safetensors")
    log = script.run(tmp_path, "A", ["runtime.cuda_graph=off", "model.teacher=mlp", "model.student=mlp"],
                     True, epochs=1)
    assert len(log) == 1 and all(log[0][k] is not None for k in script.KEYS)
    # the graph runs (B, D) share DATA: a compiled graph would no longer be the graph alone
    assert yaml.safe_load((tmp_path / "A" / "config.yaml").read_text())["runtime"]["compile"] == "off"


@no_cuda
def test_gpu_equivalence_without_cuda_says_it_needs_a_gpu():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        load_script("benchmarks/gpu_equivalence.py").main([])


@no_cuda
def test_gpu_preflight_without_cuda_exits_2_and_says_why(capsys):
    assert load_script("benchmarks/gpu_preflight.py").main([]) == 2
    assert "no CUDA GPU" in capsys.readouterr().out


def test_strong_view_writes_the_committed_keys(tmp_path):
    out = tmp_path / "strong_view.json"
    load_script("benchmarks/strong_view.py").main(["--size", "128", "--batch", "32", "--repeats", "1",
                                                   "--out", str(out)])
    got = json.loads(out.read_text())
    assert got.keys() == committed("strong_view_cpu.json").keys()
    assert got["strong_over_weak"] > 0 and got["images"] == 128
    assert got["all_times"].keys() == {"weak", "weak_and_strong"}
    assert got["command"] == f"python benchmarks/strong_view.py --size 128 --batch 32 --repeats 1 --out {out}"


def test_imagefolder_throughput_writes_the_committed_keys(tmp_path):
    out = tmp_path / "imagefolder.json"
    load_script("benchmarks/imagefolder_throughput.py").main([
        "--images", "8", "--classes", "2", "--batch", "4", "--image-size", "32", "--workers", "0", "1",
        "--epochs", "1", "--draft-repeats", "1", "--out", str(out)])
    got, ref = json.loads(out.read_text()), committed("imagefolder_throughput_cpu.json")
    assert got.keys() == ref.keys()
    assert [r.keys() for r in got["loader_rows"]] == [ref["loader_rows"][0].keys()] * 4
    assert all(r["images_per_s_median"] > 0 for r in got["loader_rows"])
    assert [r["image"] for r in got["draft_decode"]] == ["500x375", "1600x1200"]
    assert got["draft_decode"][0].keys() == ref["draft_decode"][0].keys()
    assert got["gpu_node_estimate"].keys() == ref["gpu_node_estimate"].keys()
    assert all(w > 0 for w in got["gpu_node_estimate"]["workers_per_gpu"])


SHELL = sorted((ROOT / "benchmarks").glob("*.sh")) + sorted((ROOT / "benchmarks" / "cifar100").glob("*.sh"))


@pytest.mark.parametrize("script", SHELL, ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_fashion_mnist_scripts_name_configs_that_resolve_and_the_folders_they_make():
    # the long CPU runs: every config they train resolves, and its run name is the folder they read back
    text = {p.name: p.read_text() for p in (ROOT / "benchmarks").glob("fashion_mnist_*.sh")}
    benches = [m for t in text.values() for m in re.findall(r"^\s*bench (\w+)", t, re.M)]
    assert {"convnet_mlp", "convnet_mlp_authors_weights", "convnet_mlp_hosts", "convnet_mlp_mlkd_levels",
            "convnet_mlp_dist_terms", "convnet_convnet8", "convnet_mlp_small_data"} <= set(benches)
    for name in benches:
        assert load_bench(f"fashion_mnist/bench/{name}", []).name == f"bench_fmnist_{name}"
    assert "TEACHER=$RUNS/" + load_config("fashion_mnist/teachers/convnet", []).name in text["fashion_mnist_bench.sh"]
    keep = (ROOT / "benchmarks" / "keep_bench.sh").read_text()  # the bench NAME AS they call: its defaults
    assert "CONFIGS=${CONFIGS:-fashion_mnist/bench}" in keep and "PREFIX=${PREFIX:-bench_fmnist_}" in keep
    for t in text.values():
        for config in re.findall(r"fashion_mnist/bench/[a-z0-9_]+", t):
            load_bench(config, [])


@pytest.mark.parametrize("setting, benches", [
    # the names the script takes -> (config, the results folder it keeps them in)
    ("convnet", {"bench": ("convnet_mlp", "bench"),
                 "authors_weights": ("convnet_mlp_authors_weights", "authors_weights")}),
    ("resnet8", {"mlp": ("resnet8_mlp", "bench"), "convnet8": ("resnet8_convnet8", "convnet8"),
                 "convnet16": ("resnet8_convnet16", "convnet16"),
                 "convnet16_more_seeds": ("resnet8_convnet16_more_seeds", "convnet16_more_seeds"),
                 "convnet16_long": ("resnet8_convnet16_long", "convnet16_long")})])
def test_the_cifar100_cpu_script_names_configs_that_resolve_and_the_folders_it_makes(setting, benches):
    text = (ROOT / "benchmarks" / "cifar100_cpu_bench.sh").read_text()
    teacher = load_config(f"cifar100/cpu/teachers/{setting}", [])  # the script trains teachers/$SETTING
    assert teacher.name == f"teacher_c100cpu_{setting}"  # ... into TEACHER_RUN=$RUNS/teacher_c100cpu_$SETTING
    assert "TEACHER_RUN=$RUNS/teacher_c100cpu_$SETTING" in text
    # the setting's benches, all by default, each run under its own name into $OUT/AS
    assert re.search(rf'^  {setting}\) DEFAULT_OUT=\S+; ALL="{" ".join(benches)}" ;;$', text, re.M)
    branch = text.split('if [ "$SETTING" = convnet ]; then')[1].split("\nelse\n")[0 if setting == "convnet" else 1]
    calls = re.findall(r"^  if wanted (\w+); then\s+bench (\w+) (\w+)", branch.split("\nfi\n")[0], re.M)
    assert [(name, (config, folder)) for name, config, folder in calls] == list(benches.items())
    runs = re.search(r"^RUNS=\$\{RUNS:-(\S+)\}", text, re.M)[1]
    assert "\nCONFIGS=cifar100/cpu/bench\nPREFIX=bench_c100cpu_\n" in text  # keep_bench.sh's bench reads them
    load_bench(f"cifar100/cpu/bench/{setting}_mlp", [])  # inspect-teacher's config
    for name, _ in benches.values():
        bench = load_bench(f"cifar100/cpu/bench/{name}", [])  # $CONFIGS/NAME
        assert bench.name == f"bench_c100cpu_{name}"  # the folder the script reads back
        # the bench's default teacher file is where the script's own teacher run puts it
        assert bench.base["model"]["teacher_checkpoint"] == f"{runs}/{teacher.name}/last.safetensors"
        assert bench.base["model"]["teacher"] == teacher.model.student
        assert bench.base["model"].get("teacher_options", {}) == teacher.model.student_options
        assert bench.base["data"]["name"] == teacher.data.name == "cifar100"


def test_the_width16_benchs_second_unit_pools_with_the_first_into_six_seeds():
    # seeds 3-5 of resnet8_convnet16 and nothing else changed: `btkd report` pools the two units
    from btkd.bench.results import _pool

    first, second = (load_bench(f"cifar100/cpu/bench/{n}", []) for n in ("resnet8_convnet16", "resnet8_convnet16_more_seeds"))
    assert (first.seeds, second.seeds) == ([0, 1, 2], [3, 4, 5])
    pooled, owner = _pool([Path("convnet16"), Path("convnet16_more_seeds")], [first, second])
    assert pooled.seeds == [0, 1, 2, 3, 4, 5] and [m.label for m in pooled.methods] == ["ce", "kd", "kd_btkd"]
    assert {str(f) for (_, s), f in owner.items() if s >= 3} == {"convnet16_more_seeds"}
    text = (ROOT / "benchmarks" / "cifar100_cpu_bench.sh").read_text()
    assert '"$BTKD" report "$OUT/convnet16" "$OUT/convnet16_more_seeds" --out "$OUT/convnet16_6seeds"' in text


@pytest.mark.parametrize("args, message", [
    (["resnet9"], "unknown setting 'resnet9': give convnet or resnet8"),
    (["resnet8", "convnet32"], "unknown bench 'convnet32' for resnet8: give some of: mlp convnet8 convnet16 "
                              "convnet16_more_seeds convnet16_long"),
    (["convnet", "bench", "mlp"], "unknown bench 'mlp' for convnet: give some of: bench authors_weights")])
def test_the_cifar100_cpu_script_refuses_an_unknown_setting_or_bench(args, message, tmp_path):
    # before it trains or writes anything: RUNS and OUT point at a folder that must stay empty
    env = {**os.environ, "RUNS": str(tmp_path / "runs"), "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", "benchmarks/cifar100_cpu_bench.sh", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_gpu_smoke_names_scripts_and_configs_that_exist():
    text = (ROOT / "benchmarks" / "gpu_smoke.sh").read_text()
    for script in re.findall(r"(benchmarks/\w+\.py|tests/\w+\.py)", text):
        assert (ROOT / script).is_file(), script
    for config in re.findall(r"(cifar100/(?:teachers|\w+)/\w+) ", text):
        load_config(config, [])


def test_kill_fuzz_resumes_a_run_killed_at_a_write_to_the_uninterrupted_one(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path),  # its folders, kept for a look, land here
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src")] + os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    proc = subprocess.run([sys.executable, "benchmarks/kill_fuzz.py", "--sample", "1", "--second", "0", "--seed", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("OK   killed at ")
    total = re.fullmatch(r"distill: 1 of (\d+) boundaries, 0 differed \(folders in .*\)", lines[-1])
    assert total and int(total[1]) > 10  # the lock, temp files, renames and log appends of 4 epochs
