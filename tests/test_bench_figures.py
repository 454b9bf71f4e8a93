"""The bench's and the report's figures come from the right log columns: last-epoch against best-epoch
accuracy, the earlier epoch of a tie, per-epoch curves over the seeds that reached the epoch, student
minus teacher, when a member counts as finished, and the table's cells and verdicts.

Nothing is trained: each test writes a bench folder (a real ``bench.yaml`` loaded by the real loader)
or a run folder with chosen ``log.jsonl`` / ``summary.json`` / ``meta.json`` values, so every figure
can be checked against a value computed by hand."""

import json
import math

import pytest
import yaml

from btkd.bench.results import collect, format_mean_std, results_table, verdict
from btkd.report import load_run
from btkd.report import results_table as report_table

METHODS = {"kd": {"distill": {"method": "kd"}}, "kd_btkd": {"distill": {"method": "kd", "btkd": {"enabled": True}}}}


def write_bench(root, seeds, methods=("kd",), epochs=3):
    """An empty bench folder ``root/b``; its members are added with `write_member`."""
    data = {"name": "b", "output_dir": str(root),
            "data": {"name": "synthetic", "options": {"size": 32, "num_classes": 4, "image_size": 8}, "batch_size": 16},
            "model": {"student": "mlp", "teacher": "convnet", "teacher_checkpoint": "teacher.safetensors"},
            "optim": {"epochs": epochs, "milestones": []}, "runtime": {"progress": False},
            "bench": {"seeds": list(seeds), "methods": {m: METHODS[m] for m in methods}}}
    folder = root / "b"
    folder.mkdir(parents=True)
    (folder / "bench.yaml").write_text(yaml.safe_dump(data))
    return folder


def records(test_accs, train_accs=None, **extra):
    """One log record per epoch (1-based) with these test (and train) accuracies."""
    train_accs = train_accs or [50.0] * len(test_accs)
    return [{"epoch": e, "test_acc": t, "train_acc": tr, **extra}
            for e, (t, tr) in enumerate(zip(test_accs, train_accs), start=1)]


def write_member(folder, label, seed, log, summary_epochs="log", teacher_acc=70.0):
    """A member's run folder. ``summary_epochs``: the epochs_done its summary.json records ("log": the
    log's last epoch, as a run that ended writes it; None: no summary, a run in progress)."""
    run = folder / "runs" / f"{label}-s{seed}"
    run.mkdir(parents=True)
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    if summary_epochs is not None:
        done = log[-1]["epoch"] if summary_epochs == "log" else summary_epochs
        (run / "summary.json").write_text(json.dumps({"epochs_done": done, "wall_time": 1.0, "diverged": None}))
    (run / "meta.json").write_text(json.dumps({"teacher_test_acc": teacher_acc}))


def cell(results, label="kd"):
    return next(c for c in results["cells"] if c["label"] == label)


def table_row(markdown, first_cell):
    """The cells of the Markdown table row that starts with ``first_cell``."""
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {first_cell} |"))
    return [part.strip() for part in line.split("|")[1:-1]]


@pytest.fixture
def three_seeds(tmp_path):
    """KD over seeds 0, 1, 2, each best at epoch 1 and last at epoch 3: last [65, 67, 69] (mean 67,
    sd 2), best [70, 72, 74] (mean 72, sd 2); the teacher scored 70."""
    folder = write_bench(tmp_path, seeds=(0, 1, 2))
    for seed, (best, last) in enumerate([(70.0, 65.0), (72.0, 67.0), (74.0, 69.0)]):
        write_member(folder, "kd", seed, records([best, 60.0, last]))
    return collect(folder)


# ------------------------------------------------------------------------------------------ one member


def test_last_acc_is_the_last_epoch_and_best_acc_the_highest_test_accuracy(tmp_path):
    folder = write_bench(tmp_path, seeds=(0,))
    # train accuracy rises to its top at epoch 3, test accuracy peaks at epoch 2: best follows test
    write_member(folder, "kd", 0, records([60.0, 70.0, 65.0], train_accs=[50.0, 60.0, 90.0]))
    kd = cell(collect(folder))
    assert kd["last_acc"] == [65.0]
    assert kd["best_acc"] == [70.0] and kd["best_epoch"] == [2]
    assert kd["epochs_done"] == [3]


def test_a_tie_for_best_goes_to_the_earlier_epoch(tmp_path):
    # as the trainer keeps best.safetensors: a later epoch replaces the best only when strictly higher
    folder = write_bench(tmp_path, seeds=(0,))
    write_member(folder, "kd", 0, records([70.0, 70.0, 65.0]))
    kd = cell(collect(folder))
    assert kd["best_acc"] == [70.0] and kd["best_epoch"] == [1]


# ------------------------------------------------------------------------------------------ over seeds


def test_cell_stats_take_last_and_best_from_their_own_columns(three_seeds):
    kd = cell(three_seeds)
    assert kd["last_acc"] == [65.0, 67.0, 69.0] and kd["best_acc"] == [70.0, 72.0, 74.0]
    assert kd["best_epoch"] == [1, 1, 1]
    # sample standard deviation (n - 1): sqrt((4 + 0 + 4) / 2) = 2
    assert kd["last_acc_stats"] == {"n": 3, "mean": 67.0, "std": 2.0}
    assert kd["best_acc_stats"] == {"n": 3, "mean": 72.0, "std": 2.0}


def test_student_minus_teacher_is_last_acc_minus_the_teachers_accuracy(three_seeds):
    (vs,) = three_seeds["vs_teacher"]
    assert (vs["a"], vs["b"], vs["metric"]) == ("kd", "teacher", "last_acc")
    assert vs["diffs"] == [-5.0, -3.0, -1.0]  # 65, 67, 69 minus 70; not the best epochs' 0, 2, 4
    assert vs["mean"] == -3.0 and vs["std"] == 2.0


def test_the_table_shows_last_and_best_stats_and_per_seed_last_accuracies(three_seeds):
    cells, vs_teacher = results_table(three_seeds).split("## Student minus teacher")
    # method, last epoch, best epoch (optimistic), per-seed last epoch
    assert table_row(cells, "KD")[:4] == ["KD", "67.00 ± 2.00", "72.00 ± 2.00", "65.00, 67.00, 69.00"]
    # -3 with t(0.975, 2) * 2 / sqrt(3) = 4.968 either side: the interval holds 0
    assert table_row(vs_teacher, "KD") == ["KD", "-3.00 [-7.97, +1.97]", "not clearly"]


def test_curves_average_the_seeds_that_reached_each_epoch(tmp_path):
    folder = write_bench(tmp_path, seeds=(0, 1))
    write_member(folder, "kd", 0, records([60.0, 70.0, 80.0], beta=0.5))
    write_member(folder, "kd", 1, records([62.0, 74.0]), summary_epochs=None)  # still in its third epoch
    results = collect(folder)
    curves = cell(results)["curves"]
    assert curves["epoch"] == [1, 2, 3]
    # epoch 3: only seed 0 reached it, so the mean is its value (not 80 / 2 seeds)
    assert curves["test_acc_mean"] == [61.0, 72.0, 80.0]
    # sample standard deviation of two values a, b is |a - b| / sqrt(2): [60, 62] -> sqrt(2), [70, 74] -> sqrt(8)
    assert curves["test_acc_std"][:2] == pytest.approx([math.sqrt(2), math.sqrt(8)])
    assert curves["test_acc_std"][2] is None  # one seed: no spread
    assert curves["beta"] == [0.5, 0.5, 0.5]  # only seed 0 logs beta
    assert cell(results)["epochs_done"] == [3, 2] and not results["complete"]


# ------------------------------------------------------------------------------------------ finished or not


@pytest.mark.parametrize("log_epochs, summary_epochs, complete", [
    (3, "log", True),  # ended at the bench's last epoch
    (2, "log", False),  # a summary of epoch 2 of a 3-epoch bench (an older, shorter end)
    (3, 2, False),  # the summary of an earlier end, beside a log that went on
    (2, None, False),  # no summary: in progress
])
def test_a_member_is_finished_only_with_a_summary_of_the_benchs_last_epoch(tmp_path, log_epochs, summary_epochs,
                                                                           complete):
    folder = write_bench(tmp_path, seeds=(0,), epochs=3)
    write_member(folder, "kd", 0, records([60.0, 62.0, 64.0][:log_epochs]), summary_epochs=summary_epochs)
    results = collect(folder)
    assert results["complete"] is complete and results["units"][0]["complete"] is complete
    assert cell(results)["last_acc"] == [[60.0, 62.0, 64.0][log_epochs - 1]]
    assert ("**unfinished**" in results_table(results)) is not complete


# ------------------------------------------------------------------------------------------ formatting


def test_format_mean_std():
    assert format_mean_std({"n": 4, "mean": 70, "std": 2}) == "70.00 ± 2.00"
    assert format_mean_std({"n": 2, "mean": 71.234, "std": 0.5}) == "71.23 ± 0.50"
    assert format_mean_std({"n": 1, "mean": 70.0, "std": None}) == "70.00"  # one seed: no spread
    assert format_mean_std({"n": 0, "mean": None, "std": None}) == "-"


@pytest.mark.parametrize("ci, mean, expected", [
    ([-0.5, 1.5], 0.5, "no clear difference"),  # a positive mean, but the interval holds 0
    ([-1.5, 0.5], -0.5, "no clear difference"),
    ([0.0, 1.0], 0.5, "no clear difference"),  # touching 0 is not excluding it
    ([-1.0, 0.0], -0.5, "no clear difference"),
    ([0.1, 2.0], 1.0, "better"),
    ([-2.0, -0.1], -1.0, "worse"),
    (None, 1.0, "-"),  # one seed: no interval, no verdict
])
def test_verdict_is_better_or_worse_only_when_the_interval_excludes_zero(ci, mean, expected):
    assert verdict({"ci": ci, "mean": mean}) == expected


# ------------------------------------------------------------------------------------------ btkd report (run folders)


def write_run(folder, test_accs):
    """A run folder in progress: its config and log, no summary yet."""
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "name": folder.name, "seed": 0, "data": {"name": "synthetic"}, "model": {"student": "mlp"},
        "distill": {"method": "kd"}, "optim": {"epochs": 3}}))
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(test_accs,
                                                                                    train_accs=[50.0, 90.0])))
    return folder


def test_a_run_in_progress_reports_its_last_logged_epoch_not_its_best(tmp_path):
    run = load_run(write_run(tmp_path / "r", [70.0, 60.0]))
    assert not run["complete"]
    s = run["summary"]
    assert (s["last_acc"], s["best_acc"], s["best_epoch"], s["epochs_done"]) == (60.0, 70.0, 1, 2)
    row = table_row(report_table([run]), "r (in progress, epoch 2 of 3)")
    assert row[6:8] == ["60.00", "70.00 (epoch 1)"]  # last-epoch acc, best-epoch acc


def test_a_run_in_progress_gives_a_tie_for_best_to_the_earlier_epoch(tmp_path):
    s = load_run(write_run(tmp_path / "r", [70.0, 70.0]))["summary"]
    assert (s["best_acc"], s["best_epoch"]) == (70.0, 1)


# ------------------------------------------------------------------------------------------ the plots


def plotted(results, tmp_path, monkeypatch, **kw):
    """`bench_plots` with its figures kept open: {file name: figure}."""
    import matplotlib.pyplot as plt

    from btkd.bench.plots import bench_plots

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    made = bench_plots(results, tmp_path / "plots", **kw)
    monkeypatch.undo()
    assert len(figures) == len(made)
    return {name: fig for (name, _), fig in zip(made, figures)}


def looks(ax):
    return {line.get_label(): (line.get_color(), line.get_linestyle(), line.get_marker()) for line in ax.get_lines()}


@pytest.fixture
def kd_and_btkd(tmp_path):
    """KD and KD+BTKD over seeds 0 and 1, 3 epochs; the teacher scored 70."""
    folder = write_bench(tmp_path, seeds=(0, 1), methods=("kd", "kd_btkd"))
    for seed in (0, 1):
        write_member(folder, "kd", seed, records([60.0 + seed, 62.0, 64.0], frac_wrong=0.1))
        write_member(folder, "kd_btkd", seed, records([58.0, 61.0 + seed, 63.0], frac_wrong=0.1, beta=0.5,
                                                      n_rectified=12))
    return collect(folder)


def test_a_method_keeps_its_style_in_every_bench_plot(kd_and_btkd, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figs = plotted(kd_and_btkd, tmp_path, monkeypatch)
    assert set(figs) == {"accuracy.png", "beta.png", "teacher_wrong.png", "rectified.png", "differences.png"}
    acc = looks(figs["accuracy.png"].axes[0])
    # beta and rectified draw KD+BTKD alone: it must not take KD's colour there
    for name in ("beta.png", "rectified.png", "teacher_wrong.png"):
        assert looks(figs[name].axes[0])["KD+BTKD"] == acc["KD+BTKD"], name
    assert acc["KD"] != acc["KD+BTKD"]
    ax = figs["accuracy.png"].axes[0]
    bands = ax.collections  # ± one sd, in its line's colour
    assert len(bands) == 2
    for band, label in zip(bands, ("KD", "KD+BTKD")):
        assert matplotlib_colors_equal(band.get_facecolor()[0], acc[label][0])
    for fig in figs.values():
        plt.close(fig)


def matplotlib_colors_equal(a, b):
    from matplotlib.colors import to_rgb

    return to_rgb(a) == pytest.approx(to_rgb(b))


def test_bench_plots_name_the_teacher_keep_the_legend_off_the_curves_and_carry_the_title(kd_and_btkd, tmp_path,
                                                                                        monkeypatch):
    import matplotlib.pyplot as plt

    figs = plotted(kd_and_btkd, tmp_path, monkeypatch, title="My bench")
    ax = figs["accuracy.png"].axes[0]
    teacher = [line for line in ax.get_lines() if line.get_label().startswith("teacher")]
    assert len(teacher) == 1 and list(teacher[0].get_ydata()) == [70.0, 70.0]
    assert teacher[0].get_label() == "teacher convnet (70.00 %)"
    assert "teacher convnet (70.00 %)" in [t.get_text() for t in ax.get_legend().get_texts()]
    lo, hi = ax.get_ylim()
    assert lo <= 58.0 and hi >= 70.0
    for name, fig in figs.items():
        ax = fig.axes[0]
        assert ax.get_title().startswith("My bench (2 seeds)"), name
        if ax.get_legend() is not None:  # beside the axes, not over the data
            fig.canvas.draw()
            assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1, name
        plt.close(fig)


def test_an_unfinished_bench_says_which_seeds_stopped_where(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    folder = write_bench(tmp_path, seeds=(0, 1))
    write_member(folder, "kd", 0, records([60.0, 70.0, 80.0]))
    write_member(folder, "kd", 1, records([62.0, 74.0]), summary_epochs=None)
    results = collect(folder)
    assert table_row(results_table(results), "KD")[3] == "80.00, 74.00 (epoch 2)"
    figs = plotted(results, tmp_path, monkeypatch)
    assert "unfinished" in figs["accuracy.png"].axes[0].get_title()
    for fig in figs.values():
        plt.close(fig)
