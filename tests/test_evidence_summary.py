"""benchmarks/evidence_summary.py: the one table over every committed CPU bench, and its headline."""

import json
import shutil

import pytest

from repo_scripts import ROOT, load_script

summary = load_script("benchmarks/evidence_summary.py")
RESULTS = ROOT / "benchmarks" / "results"


def test_the_committed_summary_is_what_the_committed_results_give():
    # a bench that lands without the summary regenerated fails here: the README quotes its headline
    committed = (RESULTS / "evidence_summary.md").read_text()
    benches = [summary.summarise(RESULTS / rel, role, rel) for rel, role in summary.BENCHES
               if (RESULTS / rel / "results.json").is_file()]
    missing = [rel for rel, _ in summary.BENCHES if not (RESULTS / rel / "results.json").is_file()]
    assert summary.markdown(benches, missing, summary.plain_loop_reruns(RESULTS)) == committed


def test_the_plain_loop_reruns_are_listed_with_both_loops_differences():
    reruns = {r["bench"]: r for r in summary.plain_loop_reruns(RESULTS)}
    assert {"fashion_mnist/bench", "fashion_mnist/conv_student", "cifar100_cpu/bench"} <= set(reruns)
    for name, r in reruns.items():
        assert (RESULTS / name / "results.json").is_file()
        bench = json.loads((RESULTS / name / "results.json").read_text())
        cells = {c["label"]: c for c in bench["cells"]}
        seeds = json.loads((RESULTS / "plain_loop" / r["file"]).read_text())["seeds"]
        # the bench's KD - alone over the loop's seeds, from its per-seed figures
        kd, ce = ([cells[m]["last_acc"][cells[m]["seeds"].index(s)] for s in seeds] for m in ("kd", "ce"))
        assert r["differences"]["KD - alone"]["bench"]["mean"] == pytest.approx(
            sum(a - b for a, b in zip(kd, ce)) / len(seeds))
        if seeds == bench["seeds"]:  # then it is the bench's own interval, as its results.json has it
            kd_alone = next(c for c in bench["comparisons"] if (c["a"], c["b"]) == ("kd", "ce"))
            assert r["differences"]["KD - alone"]["bench"]["ci"] == pytest.approx(kd_alone["ci"])
    text = summary.markdown([], [], list(reruns.values()))
    assert "| cifar100_cpu/bench | 5 | -6.32 [-6.93, -5.71] | -6.33 [-6.67, -5.98] |" in text


def test_every_committed_bench_is_listed_with_a_role():
    found = {str(p.parent.relative_to(RESULTS)) for p in RESULTS.glob("*/*/results.json")}
    listed = dict(summary.BENCHES)
    assert found <= set(listed), f"benches not in BENCHES: {sorted(found - set(listed))}"
    assert set(listed.values()) <= {"planned", "diagnostic", "unit"}
    # a unit is listed, not counted, because a planned bench pools it (`btkd report UNIT UNIT --out`)
    pooled = {u["folder"] for rel, role in listed.items() if role == "planned" and (RESULTS / rel / "results.json").is_file()
              for u in json.loads((RESULTS / rel / "results.json").read_text()).get("units") or []}
    for rel, role in listed.items():
        if role == "unit" and (RESULTS / rel / "results.json").is_file():
            assert f"benchmarks/results/{rel}" in pooled, f"{rel} is a unit of no planned bench"


@pytest.mark.parametrize("ci, expected", [([-1.0, -0.1], "lower"), ([0.1, 1.0], "higher"),
                                          ([-1.0, 1.0], "no clear difference"),
                                          ([0.0, 1.0], "no clear difference"), ([-1.0, 0.0], "no clear difference")])
def test_a_difference_counts_only_when_its_interval_excludes_zero(ci, expected):
    assert summary.reading(ci) == expected


def copy_bench(rel, root):
    shutil.copytree(RESULTS / rel, root / rel, ignore=shutil.ignore_patterns("runs", "*.png"))
    return root / rel


def test_only_full_btkd_pairs_are_rows_and_only_own_weights_of_planned_benches_count(tmp_path, capsys):
    # resnet8 -> mlp holds 12 methods: KD and DKD each +/- BTKD, five ablations, KD +/- BTKD at the
    # authors' weights. Rows: the three pairs with full BTKD; headline: the two at the hosts' own weights.
    folder = copy_bench("cifar100_cpu_resnet8/bench", tmp_path)
    assert summary.main(["--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| cifar100_cpu_resnet8/bench |")]
    hosts = [(r.split(" | ")[6], r.split(" | ")[7]) for r in rows[:3]]
    assert hosts == [("KD", "own"), ("DKD", "own"), ("KD, CE 0.5 / KD 0.5", "authors")]
    assert len(rows) == 4  # and one row in the nearest-to-teacher table
    assert "BTKD against its host is lower in 2 of 2 pairs, higher in 0" in out
    assert "| -1.82 [-2.09, -1.55] | lower |" in rows[0]  # the bench's own figures, read as the bench does
    assert "| 25.48 | 21.93 | -3.55 [-3.75, -3.35] |" in rows[0]  # alone, host, host vs alone
    assert "Not run yet:" in out and "`fashion_mnist/bench`" in out

    # the same bench filed as a diagnostic: its rows stay, the headline counts none of them
    results = json.loads((folder / "results.json").read_text())
    for c in results["comparisons"]:  # and a pair that BTKD raised is read as higher
        if (c["kind"], c["a"]) == ("btkd_vs_host", "kd_btkd"):
            c["mean"], c["ci"] = 0.5, [0.1, 0.9]
    (folder / "results.json").write_text(json.dumps(results))
    for role in ("diagnostic", "unit"):  # a unit's figures are counted in the planned bench that pools it
        text = summary.markdown([summary.summarise(folder, role, "b")], [])
        assert "lower in 0 of 0 pairs" in text and "| +0.50 [+0.10, +0.90] | higher |" in text
        assert f"| b | {role} |" in text
    text = summary.markdown([summary.summarise(folder, "planned", "b")], [])
    assert "lower in 1 of 2 pairs, higher in 1, with no clear difference in 0" in text


def test_a_pooled_table_takes_its_spec_from_its_units_and_its_units_are_not_counted(tmp_path, capsys, monkeypatch):
    # convnet16_6seeds is `btkd report` of two units: no bench.yaml of its own, its units' read under --root
    for rel in ("convnet16", "convnet16_more_seeds", "convnet16_6seeds"):
        copy_bench(f"cifar100_cpu_resnet8/{rel}", tmp_path)
    assert not (tmp_path / "cifar100_cpu_resnet8/convnet16_6seeds/bench.yaml").exists()
    assert summary.main(["--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| cifar100_cpu_resnet8/convnet16_6seeds |"))
    assert "| planned | cifar100 | resnet8 (55.23) | convnet | 6 | KD | own | 37.10 | 37.12 |" in row
    assert row.endswith("| -1.04 [-1.58, -0.50] | lower |")
    # the units' rows are listed, and only the pooled pair counts
    assert "| cifar100_cpu_resnet8/convnet16 | unit |" in out and "| cifar100_cpu_resnet8/convnet16_more_seeds | unit |" in out
    assert "lower in 1 of 1 pairs" in out and "the student trained alone is lower in 0 of 1" in out

    # a pooled table whose units are not committed results is refused, saying what to pool
    folder = tmp_path / "cifar100_cpu_resnet8/convnet16_6seeds"
    results = json.loads((folder / "results.json").read_text())
    results["units"][0]["folder"] = "runs/cifar100_cpu_evidence/bench_c100cpu_resnet8_convnet16"
    (folder / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit, match="pools a unit outside benchmarks/results"):
        summary.main(["--root", str(tmp_path)])


def test_a_bench_in_progress_is_marked(tmp_path):
    folder = copy_bench("cifar100_cpu_resnet8/convnet8", tmp_path)
    results = json.loads((folder / "results.json").read_text())
    results["complete"] = False
    (folder / "results.json").write_text(json.dumps(results))
    assert "| cifar100_cpu_resnet8/convnet8 (in progress) | planned |" in summary.markdown(
        [summary.summarise(folder, "planned", "cifar100_cpu_resnet8/convnet8")], [])


def test_no_results_at_all_is_an_error_that_says_what_to_run(tmp_path, capsys):
    assert summary.main(["--root", str(tmp_path)]) == 2
    assert "run a CPU bench script first" in capsys.readouterr().err


def test_smoke_and_unfinished_plain_loop_runs_are_left_out(tmp_path):
    folder = tmp_path / "plain_loop"
    folder.mkdir()
    diffs = {k: {"plain": {"mean": -1.0, "ci": [-2.0, 0.0]}, "bench": {"mean": -1.5, "ci": [-2.5, -0.5]}}
             for k in ("KD - alone", "KD+BTKD - KD")}
    done = {"bench": "benchmarks/results/x/bench", "seeds": [0, 1], "comparison": {"differences": diffs}}
    (folder / "a.json").write_text(json.dumps({**done, "smoke": True}))
    (folder / "b.json").write_text(json.dumps({"bench": "benchmarks/results/y/bench", "seeds": [0, 1],
                                               "complete": False, "runs": []}))
    (folder / "c.json").write_text(json.dumps({**done, "complete": True}))
    reruns = summary.plain_loop_reruns(tmp_path)
    assert [(r["bench"], r["file"]) for r in reruns] == [("x/bench", "c.json")]
    assert "| x/bench | 2 | -1.00 [-2.00, +0.00] | -1.50 [-2.50, -0.50] |" in summary.markdown([], [], reruns)
