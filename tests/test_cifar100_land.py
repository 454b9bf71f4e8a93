"""benchmarks/cifar100/land.py: what a GPU window returns is filed and the evidence table rebuilt.
Tiny real runs stand in for the CIFAR-100 units: a teacher, and a bench trained as two units on
different seeds, returned in the very form unit.sh returns them."""

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from btkd.bench import run_bench
from btkd.bench.spec import bench_from_dict
from btkd.config import load_config
from btkd.engine import Trainer
from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
DATA = {"name": "synthetic", "options": {"size": 96, "num_classes": 5, "image_size": 8, "prototypes": True},
        "batch_size": 16, "eval_batch_size": 40}


@pytest.fixture(scope="module")
def land():
    return load_script("benchmarks/cifar100/land.py")


def unit_json(folder: Path, command: str, outcomes=("finished",)) -> None:
    windows = [{"resumed": i > 0, "limit_min": 7.0, "seconds": 400, "outcome": o, "commit": "0123456789abcdef"}
               for i, o in enumerate(outcomes)]
    (folder / "unit.json").write_text(json.dumps({"command": command, "windows": windows}))


def pack(folder: Path, out: Path, names) -> None:
    """record.tar, as unit.sh packs it: the files of ``names`` present in ``folder``."""
    with tarfile.open(out / "record.tar", "w") as tar:
        for name in names:
            if (folder / name).is_file():
                tar.add(folder / name, arcname=name)


def returned_teacher(tmp_path: Path) -> Path:
    """A finished teacher run, returned as unit.sh returns one: its weights in half precision, here in
    two shards (as vgg13's), and its small files in record.tar."""
    from btkd.weights import read_weights, save_half

    Trainer(load_config({"name": "teacher", "output_dir": str(tmp_path / "runs"), "data": DATA,
                         "optim": {"epochs": 2, "milestones": [1]}, "runtime": {"progress": False},
                         "model": {"student": "convnet", "student_options": {"width": 4}},
                         "distill": {"method": "ce"}}), echo=lambda *_: None).fit()
    run, out = tmp_path / "runs" / "teacher", tmp_path / "out_teacher"
    out.mkdir()
    pack(run, out, ("config.yaml", "meta.json", "log.jsonl", "summary.json"))
    shards = save_half(read_weights(run / "last.safetensors"), out, "teacher_resnet32x4", max_bytes=6 * 1024)
    assert len(shards) >= 2
    unit_json(out, "bash benchmarks/cifar100/unit.sh teacher resnet32x4", ("paused", "finished"))
    return out


KD_METHODS = {"kd": {"distill": {"method": "kd"}}, "kd_btkd": {"distill": {"method": "kd", "btkd": {"enabled": True}}}}


def returned_bench(tmp_path: Path, teacher: str, seeds, name="bench_res32x4_res8x4", tag="", check=None,
                   methods=KD_METHODS) -> Path:
    spec = bench_from_dict({"name": name, "output_dir": str(tmp_path / "runs"), "data": DATA,
                            "model": {"student": "mlp", "teacher": "convnet", "teacher_options": {"width": 4},
                                      "teacher_checkpoint": str(teacher)},
                            "optim": {"epochs": 2, "lr": 0.05, "milestones": []}, "runtime": {"progress": False},
                            "bench": {"seeds": list(seeds), "methods": methods}})
    run_bench(spec, echo=lambda *_: None)
    out = tmp_path / f"out_bench_{'_'.join(map(str, seeds))}{tag}"
    out.mkdir()
    folder = spec.folder
    if check is not None:  # the unit checked a published teacher's precision before training
        (folder / "inspect_teacher.json").write_text(json.dumps(check))
    runs = [str(f.relative_to(folder)) for f in sorted((folder / "runs").rglob("*"))
            if f.name in ("config.yaml", "meta.json", "log.jsonl", "summary.json")]
    pack(folder, out, ["bench.yaml", "results.json", "results.md", "inspect_teacher.json", *runs])
    shutil.rmtree(folder)  # the next unit trains a bench of the same name, as on a fresh machine
    unit_json(out, "bash benchmarks/cifar100/unit.sh bench res32x4_res8x4 bench.seeds=" + str(list(seeds)))
    return out


def test_a_teacher_and_two_bench_units_are_filed_and_pooled_into_the_table(tmp_path, land, capsys, monkeypatch):
    weights, results, paused_dir = tmp_path / "weights", tmp_path / "results", tmp_path / "paused"
    here = Path.cwd()
    args = ["--weights", str(weights), "--results", str(results), "--paused", str(paused_dir)]
    assert land.main(["--table", *args]) == 0
    table = (results / "README.md").read_text()
    assert "| resnet32x4 | 79.42 | not trained yet |" in table and "No bench unit filed yet." in table

    # a paused unit is not filed
    paused = tmp_path / "paused"
    paused.mkdir()
    (paused / "checkpoint.part.00").write_bytes(b"x")
    unit_json(paused, "bash benchmarks/cifar100/unit.sh teacher resnet32x4", ("paused",))
    assert land.main([str(paused), *args]) == 0
    assert "paused" in capsys.readouterr().out and not weights.exists()
    kept = paused_dir / "teacher_resnet32x4"  # kept for the next window, which stages it from there
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoint.part.00", "unit.json"]

    teacher_out = returned_teacher(tmp_path)
    assert land.main([str(teacher_out), *args]) == 0
    assert not kept.exists()  # finished: the paused state is spent
    entry = json.loads((weights / "manifest.json").read_text())["resnet32x4"]
    summary = json.loads((tmp_path / "runs" / "teacher" / "summary.json").read_text())
    assert entry["test_acc_last"] == summary["last_acc"] and len(entry["windows"]) == 2
    assert "trained in 2 windows" in entry["note"] and (weights / "resnet32x4" / "unit.json").is_file()
    assert entry["file"] == "resnet32x4.safetensors" and "shards" not in entry  # returned in shards, small whole
    assert (weights / "resnet32x4" / "log.jsonl").is_file()
    row = next(line for line in (results / "README.md").read_text().splitlines() if line.startswith("| resnet32x4"))
    diff = summary["last_acc"] - 79.42
    assert f"| {summary['last_acc']:.2f} | {diff:+.2f} | no | - |" in row and "not measured" in row

    # two bench units on their own seeds, distilling from the published teacher by name; the first
    # one checked its precision first, and the check joins the teacher's record
    monkeypatch.setenv("BTKD_WEIGHTS", str(weights))
    check = {"test_error": 57.5,
             "split_decisions_changed_by_precision": {"reference": "fp32 (IEEE: no TF32)", "of": 50000,
                                                      "bf16": {"per_epoch": [12, 14, 10], "share": 0.0},
                                                      "tf32": {"per_epoch": [1, 2, 0], "share": 0.0}}}
    assert land.main([str(returned_bench(tmp_path, "weights:resnet32x4", (1,), check=check)), *args]) == 0
    assert "precision check filed" in capsys.readouterr().out
    assert json.loads((weights / "resnet32x4" / "inspect_teacher.json").read_text()) == check
    assert "| 12.0 / 1.0 of 50000 |" in (results / "README.md").read_text()
    assert "| no | 42.50 |" in (results / "README.md").read_text()  # the half-precision weights' accuracy
    assert land.main([str(returned_bench(tmp_path, "weights:resnet32x4", (0,))), *args]) == 0
    table = (results / "README.md").read_text()
    head = "| method | last epoch | last epoch, fp32 test forward |"
    rows = table.split(head, 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    assert rows and all(r.split("|")[2] == r.split("|")[3] for r in rows)  # an fp32 run: the same figures

    # the GPU smoke checks a window ran in its spare time: verdicts filed, its full log not committed
    smoke = returned_bench(tmp_path, "weights:resnet32x4", (2,))
    (smoke / "gpu_smoke.txt").write_text("== strong_view: python benchmarks/strong_view.py --device cuda\n"
                                         "Traceback (most recent call last): File \"/somewhere/x.py\"\n"
                                         "== strong_view: FAILED (3 s)\n== teacher: ok (40 s)\n")
    (smoke / "strong_view_gpu.json").write_text('{"device": "a GPU"}')
    # and the teacher-precision cost it measured before them: filed, no device path in it
    (smoke / "gpu_bench.json").write_text(json.dumps({
        "device": "a GPU", "command": "python benchmarks/gpu_bench.py --grids 5 --out /device/out/here --epochs 3",
        "grids": {"5/same": {}, "5/fp32": {}, "5/tf32": {}}, "over_same_teacher": {"5/fp32": 1.61, "5/tf32": 1.08}}))
    assert land.main([str(smoke), *args]) == 0
    said = capsys.readouterr().out
    assert "1 FAILED" in said and "x bf16 teacher: 5/fp32 1.61, 5/tf32 1.08" in said
    measured = json.loads((tmp_path / "gpu_bench_teacher_precision.json").read_text())
    assert measured["command"] == "python benchmarks/gpu_bench.py --grids 5 --out benchmarks/results --epochs 3"
    assert measured["ran_in"].startswith("the spare time of `bash benchmarks/cifar100/unit.sh bench")
    # a later window cut short (one grid) does not replace it; a damaged file is said, not a crash
    (smoke / "gpu_bench.json").write_text(json.dumps({"grids": {"5/same": {}}, "command": ""}))
    assert "holds fewer grids than the filed" in land.file_gpu_bench(smoke, results)
    assert json.loads((tmp_path / "gpu_bench_teacher_precision.json").read_text()) == measured
    (smoke / "gpu_bench.json").write_text('{"grids": {"5/sa')
    assert "is not JSON" in land.file_gpu_bench(smoke, results)
    filed = (tmp_path / "gpu_smoke.md").read_text()
    assert "== strong_view: FAILED (3 s)" in filed and "== teacher: ok (40 s)" in filed and "/somewhere" not in filed
    assert json.loads((tmp_path / "strong_view_gpu.json").read_text()) == {"device": "a GPU"}


    # an inspect unit's precision check replaces the teacher's
    inspected = tmp_path / "inspected"
    inspected.mkdir()
    check["split_decisions_changed_by_precision"]["bf16"]["per_epoch"] = [3, 3, 3]
    (inspected / "inspect_teacher.json").write_text(json.dumps(check))
    (inspected / "inspect_teacher.md").write_text("# check\n")
    pack(inspected, inspected, ("inspect_teacher.json", "inspect_teacher.md"))
    for f in ("inspect_teacher.json", "inspect_teacher.md"):
        (inspected / f).unlink()
    unit_json(inspected, "bash benchmarks/cifar100/unit.sh inspect resnet32x4", ("inspected",))
    assert land.main([str(inspected), *args]) == 0
    assert "| 3.0 / 1.0 of 50000 |" in (results / "README.md").read_text()

    bench = results / "bench_res32x4_res8x4"
    assert sorted(p.name for p in bench.glob("unit_s*")) == ["unit_s0_kd+kd_btkd", "unit_s1_kd+kd_btkd",
                                                             "unit_s2_kd+kd_btkd"]  # bench.only
    pooled = json.loads((bench / "results.json").read_text())
    assert pooled["seeds"] == [0, 1, 2] and pooled["complete"] and len(pooled["units"]) == 3
    table = (results / "README.md").read_text()
    assert "3 units, seeds [0, 1, 2], complete" in table and "teacher forward in fp32 (BN as trained)" in table
    assert "| KD | " in table and "| 73.33 |" in table
    kd_btkd = next(c for c in pooled["comparisons"] if c["a"] == "kd_btkd" and c["b"] == "kd")
    assert len(kd_btkd["diffs"]) == 3 and kd_btkd["ci"] is not None
    assert "| KD+BTKD | KD | " in table

    assert Path.cwd() == here  # land.main works from the repository root and comes back

    # the same seeds filed twice are refused, and so is a unit that does not pool with those filed,
    # before anything of it is filed (the table still builds)
    with pytest.raises(SystemExit, match="filed already"):
        land.main([str(returned_bench(tmp_path, "weights:resnet32x4", (0,), tag="again")), *args])
    clash = returned_bench(tmp_path, "weights:resnet32x4", (0,), tag="clash", methods={"kd": KD_METHODS["kd"]})
    with pytest.raises(SystemExit, match="not filed: method 'kd' with seed 0 was trained in both"):
        land.main([str(clash), *args])
    assert len(list(bench.glob("unit_s*"))) == 3
    assert land.main(["--table", *args]) == 0


def test_the_committed_evidence_table_is_rebuilt_from_what_is_filed(tmp_path, land):
    """benchmarks/results/cifar100/README.md is what `land.py --table` makes of the committed units
    and weights (rebuilt here in a copy, so the test changes nothing)."""
    committed = ROOT / "benchmarks" / "results" / "cifar100"
    copy = tmp_path / "cifar100"
    shutil.copytree(committed, copy)
    weights = ROOT / "weights"
    assert land.main(["--table", "--weights", str(weights), "--results", str(copy),
                      "--paused", str(tmp_path / "paused")]) == 0
    assert (copy / "README.md").read_text() == (committed / "README.md").read_text(), \
        "stale: run `python benchmarks/cifar100/land.py --table` and commit the table"


def test_the_teacher_row_compares_the_fp32_test_forward_with_the_published_figure(tmp_path, land):
    weights = tmp_path / "weights"
    weights.mkdir()
    entry = {"file": "resnet32x4.safetensors", "test_acc_last": 79.00, "epochs": 240, "batch": 64, "card": "H100",
             "record": "resnet32x4/"}
    (weights / "manifest.json").write_text(json.dumps({"resnet32x4": entry}))
    row = next(r for r in land.teacher_rows(weights) if r.startswith("| resnet32x4 "))
    assert "| 79.42 | 79.00 | -0.42 | yes |" in row  # a run evaluated in fp32 has one figure
    entry["test_acc_last_fp32"] = 78.80  # a bf16 run: its last weights also scored with an fp32 forward
    (weights / "manifest.json").write_text(json.dumps({"resnet32x4": entry}))
    row = next(r for r in land.teacher_rows(weights) if r.startswith("| resnet32x4 "))
    assert "| 79.42 | 78.80 (bf16 forward 79.00) | -0.62 | no |" in row


def test_an_unfinished_bench_unit_is_not_filed_and_figures_over_fewer_seeds_say_so(tmp_path, land):
    Trainer(load_config({"name": "teacher", "output_dir": str(tmp_path / "runs"), "data": DATA,
                         "optim": {"epochs": 1, "milestones": []}, "runtime": {"progress": False},
                         "model": {"student": "convnet", "student_options": {"width": 4}},
                         "distill": {"method": "ce"}}), echo=lambda *_: None).fit()
    teacher = tmp_path / "runs" / "teacher" / "last.safetensors"
    results = tmp_path / "results"
    args = ["--weights", str(tmp_path / "weights"), "--results", str(results), "--paused", str(tmp_path / "paused")]
    # a window that paused but whose checkpoint parts did not come back: nothing to file, said so
    lost = returned_bench(tmp_path, str(teacher), (0,), tag="lost")
    unit_json(lost, "bash benchmarks/cifar100/unit.sh bench res32x4_res8x4 bench.seeds=[0]", ("paused",))
    with pytest.raises(SystemExit, match="did not finish \\(window outcome 'paused'"):
        land.main([str(lost), *args])
    assert not results.exists() or not list(results.rglob("bench.yaml"))
    # three seeds, one of them trained for KD only: KD+BTKD's figures are over two seeds, and say so
    for seeds in ((0,), (1,)):
        assert land.main([str(returned_bench(tmp_path, str(teacher), seeds)), *args]) == 0
    only_kd = returned_bench(tmp_path, str(teacher), (2,), methods={"kd": KD_METHODS["kd"]})
    assert land.main([str(only_kd), *args]) == 0
    table = (results / "README.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| KD+BTKD |"))
    assert "(n=2 of 3)" in row
    kd_row = next(line for line in table.splitlines() if line.startswith("| KD |"))
    assert "(n=" not in kd_row.split("|")[2]
    pair = next(line for line in table.splitlines() if line.startswith("| KD+BTKD | KD |"))
    assert "(n=2, 1 pair left out)" in pair
