"""Benches: the grid engine's pairing, K = 1 equal to `btkd distill`, a grid member equal to its solo
run, resume after a kill, divergence in a grid, the statistics on hand-made inputs, and a tiny
end-to-end bench through the CLI."""

import importlib.util
import json
import math
import re

import pytest
import torch

from btkd.bench import describe, load_bench, paired_difference, run_bench
from btkd.bench.plots import PLOT_FILES
from btkd.bench.run import bench_grid, resume_bench, write_bench_report
from btkd.bench.spec import bench_from_dict, derived_comparisons
from btkd.bench.stats import t_quantile
from btkd.config import ConfigError, load_config
from btkd.engine import Grid, Trainer
from btkd.engine.run_folder import read_log as read_run_log

TIMING = {"epoch_time", "images_per_s", "wall_time"}

DATA = {"name": "synthetic", "options": {"size": 96, "num_classes": 5, "image_size": 8, "prototypes": True},
        "batch_size": 16, "eval_batch_size": 40}


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    Trainer(load_config({"name": "teacher", "output_dir": str(out), "data": DATA, "optim": {"epochs": 2, "milestones": [1]},
                         "model": {"student": "convnet", "student_options": {"width": 4}},
                         "distill": {"method": "ce"}, "runtime": {"progress": False}})).fit()
    return out / "teacher" / "last.safetensors"


def bench_dict(tmp_path, teacher_ckpt, methods, seeds=(0, 1), epochs=3, name="b"):
    return {"name": name, "output_dir": str(tmp_path), "data": DATA,
            "model": {"student": "mlp", "teacher": "convnet", "teacher_options": {"width": 4},
                      "teacher_checkpoint": str(teacher_ckpt)},
            "optim": {"epochs": epochs, "lr": 0.05, "milestones": [2] if epochs > 2 else []},
            "runtime": {"progress": False},
            "bench": {"seeds": list(seeds), "methods": methods}}


METHODS = {"ce": {"distill": {"method": "ce"}},
           "kd": {"distill": {"method": "kd"}},
           "kd_btkd": {"distill": {"method": "kd", "btkd": {"enabled": True}}},
           "dkd_btkd": {"distill": {"method": "dkd", "options": {"warmup": 2}, "btkd": {"enabled": True}}}}


def strip(log):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in log]


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------ statistics


def test_describe_by_hand():
    assert describe([1.0, 2.0, 3.0]) == {"n": 3, "mean": 2.0, "std": 1.0}
    assert describe([5.0]) == {"n": 1, "mean": 5.0, "std": None}
    assert describe([None, float("nan"), 4.0, 6.0]) == {"n": 2, "mean": 5.0, "std": pytest.approx(math.sqrt(2))}
    assert describe([]) == {"n": 0, "mean": None, "std": None}


def test_paired_difference_by_hand():
    # diffs 2, 3, 4: mean 3, sd 1, t(0.975, 2) = 4.302653, half width 4.302653 / sqrt(3) = 2.484138
    out = paired_difference([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])
    assert out["diffs"] == [2.0, 3.0, 4.0] and out["mean"] == 3.0 and out["std"] == 1.0
    assert out["t_crit"] == pytest.approx(4.302653, abs=1e-6)
    assert out["ci"] == pytest.approx([3 - 2.484138, 3 + 2.484138], abs=1e-6)
    # pairing: a large shared seed effect does not widen the interval
    shared = paired_difference([90.0, 60.0, 75.0], [89.0, 59.0, 74.0])
    assert shared["ci"] == pytest.approx([1.0, 1.0]) and shared["std"] == 0.0
    one = paired_difference([3.0], [1.0])
    assert one["mean"] == 2.0 and one["ci"] is None and "one seed" in one["note"]
    dropped = paired_difference([3.0, None, 7.0], [1.0, 2.0, 3.0])
    assert dropped["diffs"] == [2.0, 4.0] and dropped["dropped"] == 1
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])


def test_t_quantile_values():
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(0.975, 1000) == pytest.approx(1.9623, abs=1e-3)


# ------------------------------------------------------------------------------------------ bench configs


def test_bench_config_resolves_each_method(tmp_path, teacher_ckpt):
    spec = bench_from_dict(bench_dict(tmp_path, teacher_ckpt, {
        "kd": {"distill": {"method": "kd", "options": {"tau": 2.0}}},
        "dkd": {"distill": {"method": "dkd"}, "optim": {"lr": 0.01}},
        "kd_btkd": {"title": "mine", "distill": {"method": "kd", "options": {"tau": 2.0}, "btkd": {"enabled": True}}},
        "kd_elim": {"distill": {"method": "kd", "options": {"tau": 2.0}, "btkd": {"enabled": True, "rectify": "none"}}},
    }), ["bench.seeds=[3, 4]"])
    assert spec.seeds == [3, 4] and [m.label for m in spec.methods] == ["kd", "dkd", "kd_btkd", "kd_elim"]
    dkd = spec.config("dkd", 4)
    assert dkd.seed == 4 and dkd.optim.lr == 0.01 and dkd.distill.options == {}  # kd's tau does not leak
    assert spec.config("kd", 3).optim.lr == 0.05 and spec.config("kd", 3).distill.options == {"tau": 2.0}
    assert [m.title for m in spec.methods] == ["KD", "DKD", "mine", "KD+BTKD (rectify=none)"]
    assert derived_comparisons(spec) == [("btkd_vs_host", "kd_btkd", "kd"), ("btkd_vs_host", "kd_elim", "kd"),
                                         ("ablation_vs_btkd", "kd_elim", "kd_btkd")]
    # the resolved dict reloads to the same bench
    again = bench_from_dict(spec.to_dict())
    assert again.configs == spec.configs and [m.title for m in again.methods] == [m.title for m in spec.methods]


def test_each_host_without_btkd_is_compared_with_the_student_alone_of_its_own_student(tmp_path, teacher_ckpt):
    spec = bench_from_dict(bench_dict(tmp_path, teacher_ckpt, {
        "ce": {"distill": {"method": "ce"}},
        "kd": {"distill": {"method": "kd"}},
        "kd_btkd": {"distill": {"method": "kd", "btkd": {"enabled": True}}},
        "dkd": {"distill": {"method": "dkd"}},
        "kd_conv": {"model": {"student": "convnet", "student_options": {"width": 4}}, "distill": {"method": "kd"}},
    }))
    # BTKD members are compared with their host; kd_conv has no student alone of its own kind
    assert derived_comparisons(spec) == [("btkd_vs_host", "kd_btkd", "kd"), ("host_vs_alone", "kd", "ce"),
                                         ("host_vs_alone", "dkd", "ce")]


@pytest.mark.parametrize("methods, overrides, match", [
    ({"kd": {"data": {"batch_size": 8}}}, [], "unknown key bench.methods.kd.data"),
    ({"kd": {"optim": {"epochs": 5}}}, [], "same epochs"),
    ({"kd": {"model": {"teacher": "resnet8"}}}, [], "cannot differ between methods"),
    ({"kd": {"distill": {"method": "kd", "options": {"alpha": 1}}}}, [], "bench.methods.kd"),
    ({"a/b": {"distill": {"method": "kd"}}}, [], "plain name"),
    ({"kd": {"distill": {"method": "kd"}}}, ["bench.seeds=[0, 0]"], "distinct"),
    ({"kd": {"distill": {"method": "kd"}}}, ["seed=3"], r"seed=3 has no effect on a bench that sets bench.seeds=.*"
     r"pass bench.seeds=\[3\]"),
    ({"kd": {"distill": {"method": "kd"}}}, ["bench.compare=[[kd, nope]]"], "bench.compare"),
    ({"kd": {"distill": {"method": "kd"}}}, ["bench.only=[dkd]"], "bench.only"),
    ({"kd": {"distill": {"method": "kd"}}}, ["bench.only=[]"], "bench.only"),
    ({}, [], "bench.methods"),
    # the methods' own distill sections replace the base's: an override of it would reach none
    ({"ce": {"distill": {"method": "ce"}}, "kd": {"distill": {"method": "kd"}}, "dkd": {"distill": {"method": "dkd"}}},
     ["distill.options.warmup=1"], r"would reach none of them; .* e.g. bench.methods.dkd.distill.options.warmup=1 "
     r"\(it applies to \['dkd'\]\)"),
    ({"kd": {"distill": {"method": "kd"}}, "kd_btkd": {"distill": {"method": "kd", "btkd": {"enabled": True}}}},
     ["distill.btkd.rectify=none"], r"e.g. bench.methods.kd_btkd.distill.btkd.rectify=none \(it applies to \['kd_btkd'\]\)"),
    ({"kd": {"distill": {"method": "kd"}}}, ["distill.options.nope=1"], "would reach none of them; none of them takes it"),
    # a value where a mapping or list belongs: an error naming the key, not a TypeError
    ({"kd": {"distill": {"method": "kd"}}}, ["bench.methods.kd=1"], r"bench.methods.kd=1 must be a mapping"),
    ({"kd": {"optim": 1}}, [], r"bench.methods.kd.optim=1 must be a mapping"),
    ({"kd": {"model": "resnet8"}}, [], r"bench.methods.kd.model='resnet8' must be a mapping"),
    ({"kd": {"distill": {"method": "kd"}}}, ["bench.compare=1"], r"bench.compare=1 must be a list"),
])
def test_bench_config_errors_name_the_key(tmp_path, teacher_ckpt, methods, overrides, match):
    with pytest.raises(ConfigError, match=match):
        bench_from_dict(bench_dict(tmp_path, teacher_ckpt, methods), overrides)


def test_a_methods_unknown_model_is_a_config_error_when_the_bench_loads(tmp_path):
    """load_bench's docstring: a mistake in any method is a ConfigError before anything trains; a method's
    model.student was only built (a plain ValueError) when the grid started."""
    methods = {"kd": {"distill": {"method": "kd"}},
               "kd_wide": {"distill": {"method": "kd"}, "model": {"student": "mpl"}}}
    with pytest.raises(ConfigError, match=r"bench.methods.kd_wide: model.student='mpl' is not a model btkd builds. "
                       "Did you mean 'mlp'"):
        bench_from_dict(bench_dict(tmp_path, tmp_path / "unread.safetensors", methods))


def test_warnings_name_the_key_each_bench_method_takes(tmp_path, teacher_ckpt):
    """DKD's 20-epoch warm-up on a 2-epoch bench: a method with its own distill section takes the
    per-method key; one that inherits the base's takes the base's."""
    data = bench_dict(tmp_path, teacher_ckpt, {"inherits": {"title": "DKD, the base's"},
                                               "own": {"distill": {"method": "dkd"}}}, seeds=(0,), epochs=2)
    said = []
    bench_grid(bench_from_dict({**data, "distill": {"method": "dkd"}}), echo=said.append)
    warned = {m.split(":")[1].strip(): m for m in said if "warm-up" in m}
    assert "e.g. distill.options.warmup=1)" in warned["inherits-s0"]
    assert "e.g. bench.methods.own.distill.options.warmup=1)" in warned["own-s0"]


def test_btkd_options_left_to_members_without_btkd_are_warned_of_once_naming_them(tmp_path, teacher_ckpt):
    # a method with its own distill section replaces the base's; one without inherits it, options and all
    data = bench_dict(tmp_path, teacher_ckpt, {"kd": {"title": "KD, the base's"},
                                               "kd_btkd": {"distill": {"method": "kd", "btkd": {"enabled": True}}}})
    said = []
    bench_grid(bench_from_dict({**data, "distill": {"method": "kd", "btkd": {"schedule": "linear"}}}),
               echo=said.append)
    warned = [m for m in said if "distill.btkd" in m]
    assert warned == ["warning: kd-s0, kd-s1: distill.btkd.schedule=linear set while distill.btkd.enabled=false, so "
                      "it does nothing and each of them runs its method without BTKD; add distill.btkd.enabled=true "
                      "to use it (or drop it)"]


def test_builtin_bench_configs_load():
    spec = load_bench("cifar100/bench/res32x4_res8x4")
    labels = [m.label for m in spec.methods]
    assert {"ce", "kd", "kd_btkd", "dkd", "dkd_btkd"} <= set(labels) and len(spec.seeds) >= 3
    assert spec.config("kd", 0).model.teacher_checkpoint.endswith("last.safetensors")
    ablation = load_bench("cifar100/bench/ablations_res32x4_res8x4")
    opts = {m.label: spec_btkd(ablation.config(m.label, 0)) for m in ablation.methods}
    assert opts["kd_btkd_elimination"]["rectify"] == "none"
    assert opts["kd_btkd_nosplit"]["split"] is False
    assert opts["kd_btkd_constant"]["schedule"] == "constant"
    assert opts["kd_btkd_reweight"]["rectify"] == "reweight"
    assert opts["kd_btkd_batchmean"]["reduction"] == "batch"


def spec_btkd(cfg):
    b = cfg.distill.btkd
    return {"rectify": b.rectify, "split": b.split, "schedule": b.schedule, "reduction": b.reduction}


# ------------------------------------------------------------------------------------------ the grid engine


def test_pairing_same_batches_teacher_logits_and_initial_weights(tmp_path, teacher_ckpt):
    spec = bench_from_dict(bench_dict(tmp_path, teacher_ckpt, METHODS, epochs=1))
    grid = bench_grid(spec, echo=lambda *_: None)
    initial = {m.label: weights(m.student) for m in grid.members}
    seen = {m.label: [] for m in grid.members}
    for k, m in enumerate(grid.members):
        m.student.register_forward_pre_hook(lambda mod, args, label=m.label: seen[label].append(("x", args[0].clone())))
        if grid.step.computes[k] is not None:
            compute = grid.step.computes[k]

            def spy(student_logits, teacher_logits, labels, *a, _c=compute, _l=m.label, **kw):
                seen[_l].append(("teacher", teacher_logits.clone()))
                seen[_l].append(("y", labels.clone()))
                return _c(student_logits, teacher_logits, labels, *a, **kw)

            grid.step.computes[k] = spy
    grid.train_epoch(0)
    by_seed = {s: [m.label for m in grid.members if m.cfg.seed == s] for s in spec.seeds}
    for seed, labels in by_seed.items():
        xs = [[t for kind, t in seen[label] if kind == "x"] for label in labels]
        assert len(xs[0]) == 6  # 96 images / batch 16
        for other in xs[1:]:
            assert all(torch.equal(a, b) for a, b in zip(xs[0], other)), "same seed, same batches"
        distilling = [label for label in labels if not label.startswith("ce")]
        ts = [[t for kind, t in seen[label] if kind == "teacher"] for label in distilling]
        ys = [[t for kind, t in seen[label] if kind == "y"] for label in distilling]
        for other_t, other_y in zip(ts[1:], ys[1:]):
            assert all(torch.equal(a, b) for a, b in zip(ts[0], other_t)), "same seed, same teacher logits"
            assert all(torch.equal(a, b) for a, b in zip(ys[0], other_y))
        first = initial[labels[0]]
        for label in labels[1:]:
            assert_same_weights(first, initial[label])  # one architecture: the same starting point
    x0 = [t for kind, t in seen["kd-s0"] if kind == "x"]
    x1 = [t for kind, t in seen["kd-s1"] if kind == "x"]
    assert not torch.equal(x0[0], x1[0]), "other seeds see other batches"
    assert not torch.equal(initial["kd-s0"]["net.2.weight"], initial["kd-s1"]["net.2.weight"])


def test_one_member_bench_equals_btkd_distill(tmp_path, teacher_ckpt):
    methods = {"kd_btkd": {"distill": {"method": "kd", "btkd": {"enabled": True}}}}
    spec = bench_from_dict(bench_dict(tmp_path / "bench", teacher_ckpt, methods, seeds=(1,)))
    grid = bench_grid(spec, echo=lambda *_: None)
    grid.fit()
    base = {k: v for k, v in bench_dict(tmp_path / "single", teacher_ckpt, {}).items() if k != "bench"}
    cfg = load_config(base, ["seed=1", "name=kd_btkd", "distill.method=kd", "distill.btkd.enabled=true"])
    single = Trainer(cfg, echo=lambda *_: None)
    single.fit()
    bench_log = read_log(tmp_path / "bench" / "b" / "runs" / "kd_btkd-s1" / "log.jsonl")
    assert strip(bench_log) == strip(read_log(tmp_path / "single" / "kd_btkd" / "log.jsonl"))
    assert_same_weights(weights(grid.members[0].student), weights(single.student))


def test_a_grid_member_trains_exactly_as_it_would_alone(tmp_path, teacher_ckpt):
    spec = bench_from_dict(bench_dict(tmp_path, teacher_ckpt, METHODS, seeds=(0, 1), epochs=2))
    grid = bench_grid(spec, echo=lambda *_: None)
    grid.fit()
    for label in ("dkd_btkd-s1", "ce-s0"):
        member = next(m for m in grid.members if m.label == label)
        alone = Trainer(member.cfg, run_dir=tmp_path / "alone" / label, echo=lambda *_: None)
        alone.fit()
        in_grid = strip(read_log(member.folder.file("log.jsonl")))
        if label.startswith("ce"):  # alone, a CE run builds no teacher, so it logs no teacher figures
            in_grid = [{k: v for k, v in r.items() if k not in ("frac_wrong", "teacher_train_acc")} for r in in_grid]
        assert in_grid == strip(read_log(alone.run_dir / "log.jsonl"))
        assert_same_weights(weights(member.student), weights(alone.student))


def interrupt_in_epoch_2(monkeypatch):
    """Ctrl-C as epoch 2 starts (after epoch 1's checkpoint); returns the real `Grid.train_epoch`."""
    original = Grid.train_epoch

    def dies_in_epoch_2(self, epoch, bar=None):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch, bar)

    monkeypatch.setattr(Grid, "train_epoch", dies_in_epoch_2)
    return original


def test_bench_resumes_after_a_kill_to_the_uninterrupted_result(tmp_path, teacher_ckpt, monkeypatch):
    full = bench_grid(bench_from_dict(bench_dict(tmp_path / "full", teacher_ckpt, METHODS)), echo=lambda *_: None)
    full.fit()
    killed_spec = bench_from_dict(bench_dict(tmp_path / "killed", teacher_ckpt, METHODS))
    killed = bench_grid(killed_spec, echo=lambda *_: None)
    original = interrupt_in_epoch_2(monkeypatch)
    folder = killed_spec.folder
    with pytest.raises(KeyboardInterrupt, match=re.escape(f"continue with: btkd bench --resume {folder}") + "$"):
        killed.fit()
    monkeypatch.setattr(Grid, "train_epoch", original)
    with open(folder / "runs" / "kd-s0" / "log.jsonl", "a") as f:
        f.write('{"epoch": 2, "loss_to')  # a kill in the middle of appending epoch 2's line
    # what kills during the bench's own atomic writes leave, beside a file of the user's
    stale = [folder / ".bench.yaml.k1ll3d01.tmp", folder / ".results.json.k1ll3d02.tmp",
             folder / ".results.md.k1ll3d03.tmp"]
    stale += [folder / f".{name}.k1ll3d04.tmp" for name in PLOT_FILES]  # a kill while a plot was saved
    for path in stale:
        path.write_text("partial")
    (folder / ".notes.txt.mine.tmp").write_text("the user's own")
    with pytest.raises(FileExistsError, match="--resume"):
        bench_grid(killed_spec, echo=lambda *_: None)
    resume_bench(folder, echo=lambda *_: None)
    for member in killed.members:  # the record says the run was interrupted, also when nothing changed
        resumes = json.loads(member.folder.file("meta.json").read_text())["resumes"]
        assert [(r["at_epoch"], r["changes"]) for r in resumes] == [(1, {})]
    resumed = bench_grid(load_bench(folder / "bench.yaml"), resume=True, echo=lambda *_: None)
    assert resumed.start_epoch == 3
    for a, b in zip(full.members, resumed.members):
        assert strip(read_log(a.folder.file("log.jsonl"))) == strip(read_log(b.folder.file("log.jsonl"))), a.label
        assert_same_weights(weights(a.student), weights(b.student))
    results = json.loads((folder / "results.json").read_text())
    assert results["complete"] and results["format"] == "btkd-bench-results-1"
    assert [p.name for p in stale if p.exists()] == []
    assert (folder / ".notes.txt.mine.tmp").read_text() == "the user's own"
    if importlib.util.find_spec("matplotlib"):  # PLOT_FILES names every plot the report writes
        assert {p.name for p in folder.glob("*.png")} == set(PLOT_FILES)
    # a finished bench that lost its checkpoint is not started again over its results
    (folder / "checkpoint.pt").unlink()
    logs = {p: p.read_bytes() for p in folder.glob("runs/*/log.jsonl")}
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        resume_bench(folder, echo=lambda *_: None)
    assert {p: p.read_bytes() for p in logs} == logs and len(logs) == len(METHODS) * 2
    # nor does a resume take another distill setting: what the bench measures stays
    with pytest.raises(ConfigError, match=r"a resume cannot change \['distill.options.tau=2'\]"):
        resume_bench(folder, ["distill.options.tau=2"], echo=lambda *_: None)


def test_a_bench_replayed_from_an_emulated_cuda_graph_logs_what_an_eager_one_does(tmp_path, teacher_ckpt, monkeypatch):
    # The GPU window's path (a CUDA graph of every member, two lanes; a pause, then a resume that
    # captures again with the checkpoint's lr) on the CPU: the trainer takes the device for a GPU and
    # its step's capture and replays are emulated (tests/fake_cuda_graph.py). Compile stays off.
    import btkd.engine.build as build
    import btkd.engine.grid as grid
    from btkd.engine.step import TrainStep
    from fake_cuda_graph import fake_cuda_graph, graph_step

    monkeypatch.setattr(build.Runtime, "on_cuda", property(lambda self: True))  # fused SGD, a tensor lr, the graph
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    monkeypatch.setattr(grid, "TrainStep", lambda *a, cuda_graph=False, **kw: (graph_step if cuda_graph else
                                                                                 (lambda s: s))(TrainStep(*a, **kw)))
    quiet = lambda *_: None  # noqa: E731
    methods = {k: METHODS[k] for k in ("ce", "kd_btkd", "dkd_btkd")}

    def spec(name, **runtime):
        d = bench_dict(tmp_path, teacher_ckpt, methods, name=name)
        d["runtime"].update(compile="off", device="cpu", **runtime)  # the CPU, even where a GPU is
        return bench_from_dict(d)

    with fake_cuda_graph(monkeypatch):
        run_bench(spec("eager", cuda_graph="off"), echo=quiet)
        assert run_bench(spec("graph", cuda_graph="on", time_limit=1e-6), echo=quiet)["complete"] is False
        resume_bench(tmp_path / "graph", ["runtime.time_limit=null"], echo=quiet)
    members = sorted(p.name for p in (tmp_path / "eager" / "runs").iterdir())
    assert len(members) == 6
    for member in members:
        graph = tmp_path / "graph" / "runs" / member
        assert json.loads((graph / "meta.json").read_text())["cuda_graph"] is True
        logged = [{k: v for k, v in r.items() if k != "resume_changes"} for r in strip(read_log(graph / "log.jsonl"))]
        assert logged == strip(read_log(tmp_path / "eager" / "runs" / member / "log.jsonl")), member


def test_a_diverging_member_is_frozen_and_reported_while_the_others_train_on(tmp_path, teacher_ckpt):
    methods = {"kd": {"distill": {"method": "kd"}},
               "wild": {"distill": {"method": "kd"}, "optim": {"lr": 1.0e30}}}
    spec = bench_from_dict(bench_dict(tmp_path, teacher_ckpt, methods, seeds=(0,)))
    results = run_bench(spec, echo=lambda *_: None)
    cells = {c["label"]: c for c in results["cells"]}
    assert cells["wild"]["diverged"]["0"]["epoch"] == 1 and cells["wild"]["last_acc"] == [None]
    assert cells["kd"]["last_acc"][0] is not None and cells["kd"]["epochs_done"] == [3]
    summary = json.loads((spec.folder / "runs" / "wild-s0" / "summary.json").read_text())
    assert summary["diverged"]["epoch"] == 1 and not (spec.folder / "runs" / "wild-s0" / "last.safetensors").exists()
    again = resume_bench(spec.folder, echo=lambda *_: None)  # a finished bench with a diverged member resumes
    assert again["cells"] == results["cells"]
    # extended and paused: the diverged member keeps its summary (it trains no more), the others' go
    longer = resume_bench(spec.folder, ["optim.epochs=5", "runtime.time_limit=0.000001"], echo=lambda *_: None)
    cells = {c["label"]: c for c in longer["cells"]}
    assert cells["wild"]["diverged"]["0"]["epoch"] == 1 and cells["wild"]["last_acc"] == [None]
    assert not (spec.folder / "runs" / "kd-s0" / "summary.json").exists() and not longer["complete"]


def test_tiny_bench_end_to_end_through_the_cli(tmp_path, teacher_ckpt, capsys):
    import yaml

    from btkd.cli import main

    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(bench_dict(tmp_path, teacher_ckpt, METHODS, seeds=(0, 1, 2), epochs=2), sort_keys=False))
    assert main(["bench", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "## Paired differences" in printed and "| KD+BTKD | KD |" in printed
    assert "precision fp32, teacher forward fp32 with BN as trained" in printed  # what made the split
    folder = tmp_path / "b"
    results = json.loads((folder / "results.json").read_text())
    assert results["command"] == f"btkd bench {path}"
    assert [c["label"] for c in results["cells"]] == list(METHODS)
    kd_btkd = next(c for c in results["cells"] if c["label"] == "kd_btkd")
    assert kd_btkd["last_acc_stats"]["n"] == 3 and kd_btkd["last_acc_stats"]["std"] is not None
    assert kd_btkd["curves"]["beta"] == pytest.approx([1.0, 0.5])  # cos^2(pi/2 * e / 2) for e = 0, 1
    comp = next(c for c in results["comparisons"] if c["a"] == "kd_btkd" and c["b"] == "kd")
    assert comp["kind"] == "btkd_vs_host" and len(comp["diffs"]) == 3 and len(comp["ci"]) == 2
    assert comp["mean"] == pytest.approx(sum(a - b for a, b in zip(kd_btkd["last_acc"], next(
        c for c in results["cells"] if c["label"] == "kd")["last_acc"])) / 3)
    assert results["teacher"]["test_acc"] is not None and len(results["vs_teacher"]) == 4
    for png in ("accuracy.png", "beta.png", "teacher_wrong.png", "rectified.png", "differences.png"):
        assert (folder / png).stat().st_size > 1000, png
    # `btkd report` on the bench folder rebuilds the same figures elsewhere, naming the bench's command
    assert main(["report", str(folder), "--out", str(tmp_path / "rep")]) == 0
    again = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert again["cells"] == results["cells"] and again["command"] == results["command"]
    assert (tmp_path / "rep" / "results.md").read_text().startswith(f"# Bench `{results['name']}`")
    assert main(["report", str(folder), "--out", str(tmp_path / "rep"), "--title", "R32x4 -> R8x4"]) == 0
    assert (tmp_path / "rep" / "results.md").read_text().startswith(f"# R32x4 -> R8x4\n\nBench `{results['name']}`")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_result(tmp_path, teacher_ckpt):
    """SIGKILL (no clean-up runs) at moments drawn from a seeded generator, each followed by the
    command a user would run next: `--resume` when a checkpoint exists, else the same command again."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    import yaml

    def config(root):
        d = bench_dict(root, teacher_ckpt, {k: METHODS[k] for k in ("kd", "kd_btkd")}, seeds=(0, 1), epochs=4)
        d["data"] = {**DATA, "options": {**DATA["options"], "size": 480}}
        path = root / "bench.yaml"
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        return path

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses below: the same summation order, bit for bit
    try:
        reference = run_bench(load_bench(config(tmp_path / "ref")), echo=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    path = config(tmp_path / "killed")
    folder = tmp_path / "killed" / "b"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(7)
    kills = 0
    for attempt in range(8):
        cmd = ["bench", "--resume", str(folder)] if (folder / "checkpoint.pt").is_file() else ["bench", str(path)]
        proc = subprocess.Popen([sys.executable, "-m", "btkd.cli", *cmd], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if attempt < 3:  # three kills, then let it finish
            time.sleep(rng.uniform(1.5, 4.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        _, err = proc.communicate(timeout=300)
        if attempt >= 3 or proc.returncode == 0:
            if proc.returncode == 0 and (folder / "results.json").is_file():
                break
        assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
    assert kills >= 1
    results = json.loads((folder / "results.json").read_text())
    assert results["complete"]
    for mine, ref in zip(results["cells"], reference["cells"]):
        assert mine["last_acc"] == ref["last_acc"] and mine["curves"] == ref["curves"], mine["label"]
    for label in ("kd-s0", "kd_btkd-s1"):
        a = read_log(folder / "runs" / label / "log.jsonl")
        b = read_log(tmp_path / "ref" / "b" / "runs" / label / "log.jsonl")
        assert strip(a) == strip(b)
    assert not list(folder.rglob(".*.tmp")), "no temp files left behind"


HOSTS_TINY = ["model.student=mlp", "model.teacher=convnet", "model.teacher_options={width: 4}", "optim.epochs=2",
              "optim.milestones=[]", "bench.seeds=[0]", "runtime.progress=false", "data.name=synthetic",
              "data.options={size: 96, num_classes: 5, image_size: 8, prototypes: true}", "data.batch_size=16",
              "data.eval_batch_size=40", "bench.methods.sld.distill.options.student_from=1"]


def test_every_host_trains_from_the_hosts_bench_config(tmp_path, teacher_ckpt):
    spec = load_bench("cifar100/bench/hosts_res32x4_res8x4",
                      HOSTS_TINY + [f"output_dir={tmp_path}", f"model.teacher_checkpoint={teacher_ckpt}"])
    labels = [m.label for m in spec.methods]
    assert {"kd_ls_btkd", "dkd_ls_btkd", "nkd_btkd", "dist_btkd", "ctkd_btkd", "mlkd", "mlkd_btkd", "label_swap", "sld",
            "rld"} <= set(labels)
    grid = bench_grid(spec, echo=lambda *_: None)
    ctkd = next(m for m in grid.members if m.label == "ctkd-s0")
    before = ctkd.loss_fn.host.raw.detach().clone()
    grid.fit()
    for m in grid.members:
        log = read_run_log(m.folder.file("log.jsonl"))
        assert len(log) == 2 and all(math.isfinite(r["loss_total"]) for r in log), m.label
        assert not m.diverged, m.label
    assert not torch.equal(before, ctkd.loss_fn.host.raw.detach()), "CTKD's temperature is trained"
    state = torch.load(grid.root.checkpoint, weights_only=True)
    assert torch.equal(state["members"]["ctkd-s0"]["loss"]["host.raw"], ctkd.loss_fn.host.raw.detach())


def test_learnable_epoch_dependent_and_two_view_hosts_resume_exactly(tmp_path, teacher_ckpt, monkeypatch):
    methods = {"ctkd": {"distill": {"method": "ctkd", "options": {"lambda_epochs": 2}}},
               "ctkd_btkd": {"distill": {"method": "ctkd", "btkd": {"enabled": True}}},
               "sld": {"distill": {"method": "sld", "options": {"student_from": 1}}},  # two views
               "mlkd_btkd": {"distill": {"method": "mlkd", "btkd": {"enabled": True}}}}
    full = bench_grid(bench_from_dict(bench_dict(tmp_path / "full", teacher_ckpt, methods, seeds=(0,))),
                      echo=lambda *_: None)
    full.fit()
    spec = bench_from_dict(bench_dict(tmp_path / "killed", teacher_ckpt, methods, seeds=(0,)))
    killed = bench_grid(spec, echo=lambda *_: None)
    original = Grid.train_epoch

    def dies(self, epoch, bar=None):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, bar)

    monkeypatch.setattr(Grid, "train_epoch", dies)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    monkeypatch.setattr(Grid, "train_epoch", original)
    resumed = bench_grid(load_bench(spec.folder / "bench.yaml"), resume=True, echo=lambda *_: None)
    resumed.fit()
    for a, b in zip(full.members, resumed.members):
        assert strip(read_log(a.folder.file("log.jsonl"))) == strip(read_log(b.folder.file("log.jsonl"))), a.label
        assert_same_weights(weights(a.student), weights(b.student))
        assert_same_weights(weights(a.loss_fn), weights(b.loss_fn))


def test_btkd_on_a_rectifying_host_is_a_config_error(tmp_path, teacher_ckpt):
    with pytest.raises(ConfigError, match="already rectifies.*Distill"):
        bench_from_dict(bench_dict(tmp_path, teacher_ckpt, {
            "sld_btkd": {"distill": {"method": "sld", "btkd": {"enabled": True}}}}))


# ------------------------------------------------------------------------------------------ two views (MLKD)

MLKD_METHODS = {"kd": {"distill": {"method": "kd"}},
                "mlkd": {"distill": {"method": "mlkd"}},
                "mlkd_btkd": {"distill": {"method": "mlkd", "btkd": {"enabled": True}}}}


def test_a_two_view_host_trains_in_a_grid_beside_one_view_members_that_see_the_same_batches(tmp_path, teacher_ckpt):
    spec = bench_from_dict(bench_dict(tmp_path, teacher_ckpt, MLKD_METHODS, seeds=(0,), epochs=2))
    said = []
    grid = bench_grid(spec, echo=said.append)
    assert grid.views == 2
    # batch 16 over 5 classes: the class-level term is (3.2 / 0.64)^2 = 25 times its recipe's size
    warned = [m for m in said if "class-level term" in m]
    assert len(warned) == 2 and "25 times" in warned[0]
    assert "bench.methods.mlkd.distill.options.class_weight=0.04" in warned[0]  # the key a bench takes
    grid.fit()
    logs = {m.label: read_log(m.folder.file("log.jsonl")) for m in grid.members}
    for label, log in logs.items():
        assert len(log) == 2 and all(math.isfinite(r["loss_total"]) for r in log), label
    # the teacher's error on the weak view is the lane's, whatever the member
    assert [r["frac_wrong"] for r in logs["kd-s0"]] == [r["frac_wrong"] for r in logs["mlkd_btkd-s0"]]
    # BTKD rectifies the wrong rows of both views: more than the weak view's wrong count
    weak_wrong = [round(r["frac_wrong"] * r["samples"]) for r in logs["mlkd_btkd-s0"]]
    assert all(r["n_rectified"] >= w for r, w in zip(logs["mlkd_btkd-s0"], weak_wrong))
    assert any(r["n_rectified"] > w for r, w in zip(logs["mlkd_btkd-s0"], weak_wrong))
    # the KD member trains exactly as alone: the weak view is the one-view loader's batch
    kd = next(m for m in grid.members if m.label == "kd-s0")
    alone = Trainer(kd.cfg, run_dir=tmp_path / "alone", echo=lambda *_: None)
    alone.fit()
    assert strip(logs["kd-s0"]) == strip(read_log(alone.run_dir / "log.jsonl"))
    assert_same_weights(weights(kd.student), weights(alone.student))


def test_mlkd_configs_load_with_the_authors_learning_rate():
    cfg = load_config("cifar100/mlkd_btkd/res32x4_res8x4")
    assert cfg.distill.method == "mlkd" and cfg.distill.btkd.enabled and cfg.optim.lr == 0.025
    assert load_config("cifar100/mlkd/vgg13_mv2").optim.epochs == 480
    spec = load_bench("cifar100/bench/hosts_res32x4_res8x4")
    lrs = {label: cfg.optim.lr for (label, seed), cfg in spec.configs.items() if seed == 0}
    assert lrs["mlkd"] == lrs["mlkd_btkd"] == 0.025 and lrs["kd"] == 0.05


def test_units_on_separate_seeds_pool_into_the_bench_that_trains_all_seeds_at_once(tmp_path, teacher_ckpt, capsys):
    """A GPU window trains one seed of a bench; `btkd report UNIT UNIT --out` pools the units, and
    the pooled figures are those of one bench over all the seeds."""
    import yaml

    from btkd.bench.results import collect_units, load_units, results_table
    from btkd.cli import main

    methods = {k: METHODS[k] for k in ("kd", "kd_btkd")}
    whole = run_bench(bench_from_dict(bench_dict(tmp_path, teacher_ckpt, methods, seeds=(0, 1, 2), epochs=2,
                                                 name="whole")), echo=lambda *_: None)
    for name, seeds in (("u0", (2,)), ("u1", (0, 1))):
        run_bench(bench_from_dict(bench_dict(tmp_path, teacher_ckpt, methods, seeds=seeds, epochs=2, name=name)),
                  echo=lambda *_: None)
    assert main(["report", str(tmp_path / "u0"), str(tmp_path / "u1"), "--out", str(tmp_path / "pooled")]) == 0
    pooled = json.loads((tmp_path / "pooled" / "results.json").read_text())
    assert pooled["seeds"] == [0, 1, 2] and pooled["complete"] and pooled["folder"] is None
    assert [u["seeds"] for u in pooled["units"]] == [[2], [0, 1]]
    for a, b in zip(pooled["cells"], whole["cells"]):
        assert a["last_acc"] == b["last_acc"] and a["best_acc"] == b["best_acc"], a["label"]
        assert a["curves"]["test_acc_mean"] == pytest.approx(b["curves"]["test_acc_mean"])
    assert [(c["a"], c["b"], c["diffs"], c["ci"]) for c in pooled["comparisons"]] == \
        [(c["a"], c["b"], c["diffs"], c["ci"]) for c in whole["comparisons"]]
    assert pooled["teacher"]["test_acc"] == whole["teacher"]["test_acc"]
    md = (tmp_path / "pooled" / "results.md").read_text()
    assert "pooled from 2 units" in md and "seeds [0, 1, 2]" in md
    assert md.startswith("# Bench pooled from `u0`, `u1`\n")  # not the first unit's name alone
    # it names the command that rebuilds it (each unit's folder keeps the command that trained it)
    assert pooled["command"] == f"btkd report {tmp_path / 'u0'} {tmp_path / 'u1'} --out {tmp_path / 'pooled'}"
    assert f"- command: `{pooled['command']}`" in md
    # the units' pooled spec: every method on every seed, as collect_units pools them
    spec = load_units([tmp_path / "u0", tmp_path / "u1"])
    assert spec.seeds == [0, 1, 2] and [m.label for m in spec.methods] == ["kd", "kd_btkd"]
    capsys.readouterr()

    # what is not a unit of the same bench is refused, naming the difference
    def unit(name, seeds, train=False, methods=methods, **top):
        spec = bench_from_dict({**bench_dict(tmp_path, teacher_ckpt, methods, seeds=seeds, epochs=2, name=name), **top})
        if train:
            run_bench(spec, echo=lambda *_: None)
        else:
            (tmp_path / name).mkdir()
            (tmp_path / name / "bench.yaml").write_text(yaml.safe_dump(spec.to_dict()))
        return tmp_path / name

    with pytest.raises(ConfigError, match="method 'kd' with seed 0 was trained in both"):
        collect_units([tmp_path / "u1", tmp_path / "whole"])
    lr = unit("lr", (5,), optim={"epochs": 2, "lr": 0.1, "milestones": []})
    with pytest.raises(ConfigError, match="optim.lr=0.1 there and 0.05 here"):
        collect_units([tmp_path / "u0", lr])
    # units may also split the methods: KD+BTKD on seed 2 alone, KD on seed 2 in another unit, and a
    # third method that only some seeds have is reported missing where it is
    only_kd = unit("only_kd", (2,), train=True, bench={"seeds": [2], "methods": methods, "only": ["kd"]})
    only_btkd = unit("only_btkd", (2,), train=True, methods={"kd_btkd": METHODS["kd_btkd"]})
    assert [m.label for m in load_bench(only_kd / "bench.yaml").methods] == ["kd"]
    ce = unit("ce", (0,), train=True, methods={"ce": METHODS["ce"]})
    split = collect_units([tmp_path / "u1", only_kd, only_btkd, ce])
    assert [c["label"] for c in split["cells"]] == ["kd", "kd_btkd", "ce"] and split["complete"]
    for a, b in zip(split["cells"][:2], whole["cells"]):
        assert a["last_acc"] == b["last_acc"], a["label"]
    assert split["missing"] == [["ce", 1], ["ce", 2]] and split["cells"][2]["last_acc"][1:] == [None, None]
    comp = next(c for c in split["comparisons"] if c["a"] == "kd_btkd")
    assert comp["diffs"] == next(c for c in whole["comparisons"] if c["a"] == "kd_btkd")["diffs"]
    assert "Not trained by any unit" in results_table(split) and "CE (student alone) seed 1" in results_table(split)
    # a unit of students alone loaded no teacher: its seeds meet the bench's teacher figure
    ce_vs = next(c for c in split["vs_teacher"] if c["a"] == "ce")
    assert ce_vs["n"] == 1 and ce_vs["diffs"] == [split["cells"][2]["last_acc"][0] - split["teacher"]["test_acc"]]
    # units that share no method still share the bench's settings; where they ran may differ without
    # hiding a pair (a method and itself with BTKD, trained in units with other time limits)
    lim_a = unit("lim_a", (9,), train=True, methods={"kd": METHODS["kd"]}, runtime={"progress": False, "time_limit": 5.0})
    lim_b = unit("lim_b", (9,), train=True, methods={"kd_btkd": METHODS["kd_btkd"]},
                 runtime={"progress": False, "time_limit": 7.0})
    assert [(c["a"], c["b"]) for c in collect_units([lim_a, lim_b])["comparisons"]] == [("kd_btkd", "kd")]
    longer = unit("longer", (10,), methods={"kd_btkd": METHODS["kd_btkd"]}, optim={"epochs": 3, "lr": 0.05,
                                                                                    "milestones": []})
    with pytest.raises(ConfigError, match="optim.epochs=3 there and 2 here"):
        collect_units([lim_a, longer])
    # where it ran may differ (a time limit, the teacher file's place), what it distilled from may not
    moved = unit("moved", (7,), runtime={"progress": False, "time_limit": 5.0})
    assert collect_units([tmp_path / "u0", moved])["seeds"] == [2, 7]
    from safetensors.torch import load_file, save_file

    other_bytes = tmp_path / "teacher_copy.safetensors"  # the same tensors, other bytes: another sha256
    save_file(load_file(teacher_ckpt), other_bytes, metadata={"copy": "yes"})
    copied = unit("copied", (8,), train=True,
                  model={"student": "mlp", "teacher": "convnet", "teacher_options": {"width": 4},
                         "teacher_checkpoint": str(other_bytes)})
    with pytest.raises(ConfigError, match="different teacher weights"):
        collect_units([tmp_path / "u0", copied])
    # units split by method share no method config: their base recipes must agree all the same
    lr_btkd = unit("lr_btkd", (11,), methods={"kd_btkd": METHODS["kd_btkd"]},
                   optim={"epochs": 2, "lr": 0.5, "milestones": []})
    with pytest.raises(ConfigError, match="its base config has optim.lr=0.5 there and 0.05 here"):
        collect_units([lim_a, lr_btkd])
    # and they must have run alike: a unit whose students ran in bf16 does not pool with an fp32 one
    bf16 = unit("bf16", (12,), train=True)
    for member in (bf16 / "runs").iterdir():
        meta = json.loads((member / "meta.json").read_text())
        (member / "meta.json").write_text(json.dumps({**meta, "precision": "bf16"}))
    with pytest.raises(ConfigError, match="precision='fp32' in .*u0, 'bf16' in .*bf16"):
        collect_units([tmp_path / "u0", bf16])
    assert main(["report", str(tmp_path / "u0"), str(tmp_path / "u1")]) == 2
    assert "give --out FOLDER" in capsys.readouterr().err


def test_bench_only_trains_part_of_the_methods_and_keeps_their_pairs(tmp_path, teacher_ckpt):
    d = bench_dict(tmp_path, teacher_ckpt, METHODS)
    d["bench"]["compare"] = [["kd_btkd", "ce"], ["dkd_btkd", "kd"]]
    spec = bench_from_dict(d, ["bench.only=[kd_btkd, ce]"])
    assert [m.label for m in spec.methods] == ["ce", "kd_btkd"]  # the bench's order, not only's
    assert spec.compare == [("kd_btkd", "ce")]  # a pair with a method left out goes
    assert spec.config("kd_btkd", 1) == bench_from_dict(d).config("kd_btkd", 1)  # the same member
    assert "only" not in spec.to_dict()["bench"] and list(spec.to_dict()["bench"]["methods"]) == ["ce", "kd_btkd"]


def test_a_bf16_bench_reports_its_last_weights_with_an_fp32_test_forward_too(tmp_path, teacher_ckpt):
    spec = bench_from_dict(bench_dict(tmp_path, teacher_ckpt, {"kd": METHODS["kd"], "ce": METHODS["ce"]}, seeds=(0, 1),
                                      epochs=2), ["runtime.precision=bf16"])
    results = run_bench(spec, echo=lambda *_: None)
    md = (spec.folder / "results.md").read_text()
    differs = False
    for cell in results["cells"]:
        for seed, fp32 in zip(cell["seeds"], cell["last_acc_fp32"]):
            summary = json.loads((spec.folder / "runs" / f"{cell['label']}-s{seed}" / "summary.json").read_text())
            assert fp32 == summary["last_acc_fp32"] is not None
            differs |= fp32 != summary["last_acc"]
        assert cell["last_acc_fp32_stats"]["n"] == 2
    assert ("scored with an fp32 test forward" in md) == differs
    # a summary from an earlier end of the run (extended by a resume, not finished again) is not reported
    from btkd.bench.results import collect

    path = spec.folder / "runs" / "kd-s0" / "summary.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({**summary, "epochs_done": 1}))
    kd = next(c for c in collect(spec.folder)["cells"] if c["label"] == "kd")
    assert kd["last_acc_fp32"][0] is None and kd["last_acc_fp32"][1] is not None


def test_a_bench_override_or_method_that_changes_a_model_drops_its_options(tmp_path, teacher_ckpt):
    data = bench_dict(tmp_path, teacher_ckpt, {"kd": METHODS["kd"],
                                               "wide": {"model": {"student": "convnet", "student_options": {"width": 8}}},
                                               "mlp": {"model": {"student": "mlp"}}})
    data["model"]["student"], data["model"]["student_options"] = "convnet", {"width": 4}
    spec = bench_from_dict(data)
    options = {m.label: spec.config(m.label, 0).model.student_options for m in spec.methods}
    assert options == {"kd": {"width": 4}, "wide": {"width": 8}, "mlp": {}}
    spec = bench_from_dict(data, ["model.teacher=mlp"])  # the teacher's width is a convnet's
    assert spec.config("kd", 0).model.teacher_options == {}
    assert bench_from_dict(data).config("kd", 0).model.teacher_options == {"width": 4}


def test_a_bench_extended_by_a_resume_is_unfinished_until_it_ends_again(tmp_path, teacher_ckpt):
    """A resume that raises optim.epochs and pauses again: the summary of the earlier end goes, the
    results say unfinished, and no pair compares members stopped at different epochs."""
    from btkd.bench.results import collect_units, results_table

    methods = {k: METHODS[k] for k in ("kd", "kd_btkd")}
    spec = bench_from_dict(bench_dict(tmp_path, teacher_ckpt, methods, seeds=(0, 1), epochs=2))
    assert run_bench(spec, echo=lambda *_: None)["complete"]
    ended = {p: p.read_text() for p in spec.folder.glob("runs/*/summary.json")}
    again = resume_bench(spec.folder, ["optim.epochs=4", "runtime.time_limit=0.000001"], echo=lambda *_: None)
    assert again["epochs"] == 4 and not again["complete"]
    assert all(c["epochs_done"] == [3, 3] for c in again["cells"])
    assert not list(spec.folder.glob("runs/*/summary.json"))
    assert "**unfinished**" in (spec.folder / "results.md").read_text()
    # a summary left from the earlier end (a folder written by an older btkd) does not count as the end
    for path, text in ended.items():
        path.write_text(text)
    assert not collect_units([spec.folder])["complete"]

    # units split by method, one finished and one paused: their pairs are left out, and said so
    done = bench_from_dict(bench_dict(tmp_path, teacher_ckpt, {"kd": METHODS["kd"]}, seeds=(0, 1), epochs=3,
                                      name="done"))
    run_bench(done, echo=lambda *_: None)
    paused = bench_from_dict(bench_dict(tmp_path, teacher_ckpt, {"kd_btkd": METHODS["kd_btkd"]}, seeds=(0, 1), epochs=3,
                                        name="paused"), ["runtime.time_limit=0.000001"])
    run_bench(paused, echo=lambda *_: None)
    pooled = collect_units([done.folder, paused.folder])
    assert not pooled["complete"] and [u["complete"] for u in pooled["units"]] == [True, False]
    pair = next(c for c in pooled["comparisons"] if c["a"] == "kd_btkd")
    assert pair["n"] == 0 and pair["dropped"] == 2 and pair["ci"] is None
    assert "stopped at different epochs: seed 0 (1 vs 3 epochs), seed 1 (1 vs 3 epochs)" in pair["note"]
    assert "| KD+BTKD | KD | - | - |" in results_table(pooled)
    # units on other cards may score the teacher a sample apart: each seed meets its own unit's figure
    first = pooled["teacher"]["test_acc"]
    for member in (done.folder / "runs").iterdir():
        meta = json.loads((member / "meta.json").read_text())
        (member / "meta.json").write_text(json.dumps({**meta, "teacher_test_acc": 99.0}))
    pooled = collect_units([done.folder, paused.folder])
    vs = {c["a"]: c for c in pooled["vs_teacher"]}
    kd, kd_btkd = (next(c for c in pooled["cells"] if c["label"] == k) for k in ("kd", "kd_btkd"))
    assert vs["kd"]["diffs"] == pytest.approx([a - 99.0 for a in kd["last_acc"]])
    assert vs["kd_btkd"]["diffs"] == pytest.approx([a - first for a in kd_btkd["last_acc"]])
    assert pooled["teacher"]["test_acc_measured"] == sorted({first, 99.0})
    assert "the units measured" in results_table(pooled)


def test_a_bench_killed_before_its_first_report_keeps_the_command_that_started_it(tmp_path, teacher_ckpt,
                                                                                   monkeypatch):
    spec = bench_from_dict(bench_dict(tmp_path, teacher_ckpt, {"kd": METHODS["kd"]}, seeds=(0,), epochs=2))
    original = interrupt_in_epoch_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_bench(spec, echo=lambda *_: None, command="btkd bench the-config bench.seeds=[0]")
    monkeypatch.setattr(Grid, "train_epoch", original)
    assert not (spec.folder / "results.json").exists()
    results = resume_bench(spec.folder, echo=lambda *_: None, command="btkd bench --resume it")
    assert results["command"] == "btkd bench the-config bench.seeds=[0]"  # not the resume's: it rebuilds nothing
    assert "command: `btkd bench the-config bench.seeds=[0]`" in (spec.folder / "results.md").read_text()


def test_a_resume_keeps_where_the_run_started_and_records_where_it_went_on(tmp_path, teacher_ckpt, monkeypatch):
    from btkd.engine import runinfo

    monkeypatch.setattr(runinfo, "_git_commit", lambda: "first")
    spec = bench_from_dict(bench_dict(tmp_path, teacher_ckpt, {"kd": METHODS["kd"]}, seeds=(0,), epochs=1))
    run_bench(spec, echo=lambda *_: None, command="btkd bench the-config")
    meta_path = spec.folder / "runs" / "kd-s0" / "meta.json"
    monkeypatch.setattr(runinfo, "_git_commit", lambda: "second")
    # a resume of the finished bench trains nothing and rewrites nothing of its record
    before = meta_path.read_bytes()
    resume_bench(spec.folder, echo=lambda *_: None, command="btkd bench --resume it")
    assert meta_path.read_bytes() == before
    # extended: the run's commit stays the one it started with, the resume's goes with its entry
    results = resume_bench(spec.folder, ["optim.epochs=2"], echo=lambda *_: None, command="btkd bench --resume it")
    meta = json.loads(meta_path.read_text())
    assert meta["git_commit"] == "first" and meta["resumes"][-1]["environment"]["git_commit"] == "second"
    assert meta["resumes"][-1]["at_epoch"] == 1 and results["complete"]
    assert results["command"] == "btkd bench the-config"  # the command that started the bench
    # the report says the bench was continued, with what changed and on which commit
    md = (spec.folder / "results.md").read_text()
    assert [{k: r[k] for k in ("at_epoch", "changes")} for r in results["units"][0]["resumes"]] == [
        {"at_epoch": 1, "changes": {"optim.epochs": {"from": 1, "to": 2}}}]
    assert ("- resumed 1 time from the bench's checkpoint (`btkd bench --resume`): after epoch 1 "
            "(optim.epochs 1 -> 2; commit second)\n") in md
    # a pooled report names each unit's resumes on its line; a unit never resumed says nothing
    other = bench_from_dict(bench_dict(tmp_path / "other", teacher_ckpt, {"kd": METHODS["kd"]}, seeds=(1,), epochs=2))
    run_bench(other, echo=lambda *_: None)
    assert "resumed" not in (other.folder / "results.md").read_text()
    pooled = write_bench_report([spec.folder, other.folder], out=tmp_path / "pooled")
    lines = [line for line in (tmp_path / "pooled" / "results.md").read_text().splitlines() if line.startswith("  - `")]
    assert [line.endswith(", resumed after epoch 1 (optim.epochs 1 -> 2; commit second)") for line in lines] == [
        True, False]
    assert [u["resumes"] == [] for u in pooled["units"]] == [False, True]
    # a report of the bench written elsewhere keeps the command that started it, and its resumes
    elsewhere = write_bench_report(spec.folder, out=tmp_path / "elsewhere")
    assert elsewhere["command"] == "btkd bench the-config"
    assert "after epoch 1 (optim.epochs 1 -> 2; commit second)" in (tmp_path / "elsewhere" / "results.md").read_text()
