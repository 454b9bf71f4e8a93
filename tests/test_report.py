"""`btkd report` on run folders: a run still in progress, a missing folder, the table's columns, and
plots that label seeds, keep overlapping runs visible, carry the title and do not zoom noise up."""

import json

import pytest

from btkd.cli import main
from btkd.config import load_config
from btkd.engine import Grid, Trainer
from btkd.report import load_run, results_table, style, write_report, y_limits

DATA = {"name": "synthetic", "options": {"size": 64, "num_classes": 4, "image_size": 8, "prototypes": True},
        "batch_size": 16, "eval_batch_size": 32}


def cfg(out, name, **over):
    base = {"name": name, "output_dir": str(out), "data": DATA, "optim": {"epochs": 3, "milestones": []},
            "runtime": {"progress": False}, "model": {"student": "convnet", "student_options": {"width": 4}},
            "distill": {"method": "ce"}}
    return load_config({**base, **over})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished teacher, two finished KD+BTKD students (seeds 0 and 1), and one KD+BTKD student killed
    during its third epoch of three."""
    out = tmp_path_factory.mktemp("runs")
    quiet = dict(echo=lambda *_: None)
    Trainer(cfg(out, "teacher", optim={"epochs": 2, "milestones": []}), **quiet).fit()
    student = {"model": {"student": "mlp", "teacher": "convnet", "teacher_options": {"width": 4},
                         "teacher_checkpoint": str(out / "teacher" / "last.safetensors")},
               "distill": {"method": "kd", "btkd": {"enabled": True}}}
    for seed in (0, 1):
        Trainer(cfg(out, f"btkd_s{seed}", seed=seed, **student), **quiet).fit()
    original = Grid.train_epoch

    def killed_in_epoch_3(self, epoch, bar=None):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, bar)

    Grid.train_epoch = killed_in_epoch_3
    try:
        with pytest.raises(KeyboardInterrupt):
            Trainer(cfg(out, "unfinished", **student), **quiet).fit()
    finally:
        Grid.train_epoch = original
    assert not (out / "unfinished" / "summary.json").exists()
    return out


def test_a_run_in_progress_is_reported_up_to_its_last_epoch(runs, tmp_path, capsys):
    run = load_run(runs / "unfinished")
    assert not run["complete"]
    s = run["summary"]
    log = [json.loads(line) for line in (runs / "unfinished" / "log.jsonl").read_text().splitlines()]
    assert (s["epochs_done"], s["epochs"], s["last_acc"]) == (2, 3, log[-1]["test_acc"])
    assert s["best_acc"] == max(r["test_acc"] for r in log) and s["btkd"] and s["method"] == "kd"
    assert main(["report", str(runs / "teacher"), str(runs / "unfinished"), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "| unfinished (in progress, epoch 2 of 3) | synthetic | 64 | mlp | KD+BTKD | 0 |" in md
    assert "| teacher | synthetic | 64 | convnet | CE | 0 |" in md
    assert "not a final result" in md and (tmp_path / "accuracy.png").stat().st_size > 1000
    # a folder named twice (a glob and a name) is one run
    assert main(["report", str(runs / "teacher"), str(runs / "teacher" / ".." / "teacher"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text().count("| teacher |") == 1


def test_the_table_shows_data_speed_and_what_btkd_rectified(runs):
    table = results_table([load_run(runs / "teacher"), load_run(runs / "btkd_s0")])
    header = table.splitlines()[0]
    for column in ("dataset", "train size", "images/s", "teacher wrong on train (%)", "rectified / epoch"):
        assert column in header
    row = table.splitlines()[3].split("|")
    log = [json.loads(line) for line in (runs / "btkd_s0" / "log.jsonl").read_text().splitlines()]
    wrong = 100 * sum(r["frac_wrong"] for r in log) / len(log)
    rectified = sum(r["n_rectified"] for r in log) / len(log)
    assert row[10].strip() == f"{wrong:.1f}" and row[11].strip() == f"{rectified:,.0f}"
    assert float(row[13].replace(",", "")) > 0  # images/s
    # the accuracy columns: last epoch, best epoch (with its epoch), the teacher's; a teacher's own run has none
    s = json.loads((runs / "btkd_s0" / "summary.json").read_text())
    assert [c.strip() for c in row[7:10]] == [f"{s['last_acc']:.2f}", f"{s['best_acc']:.2f} (epoch {s['best_epoch']})",
                                            f"{s['teacher_test_acc']:.2f}"]
    assert table.splitlines()[2].split("|")[9].strip() == "-"


def _run_dict(**summary):
    s = {"name": "r", "student": "convnet", "method": "kd", "btkd": False, "seed": 0, "epochs": 3, "epochs_done": 3,
         "last_acc": 50.0, "best_acc": 60.0, "best_epoch": 2, "teacher_test_acc": 70.0, **summary}
    return {"summary": s, "log": [], "complete": True, "dataset": "synthetic", "train_size": 64}


def test_a_diverged_run_says_so_and_counts_the_epochs_it_kept():
    row = results_table([_run_dict(diverged=True, epochs_done=2)]).splitlines()[2].split("|")
    assert row[1].strip() == "r (diverged, kept epoch 2)" and row[12].strip() == "2"


def test_a_run_in_progress_names_the_first_epoch_of_its_best_accuracy(tmp_path):
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": {"student": "convnet"}, "distill": {"method": "ce"},
                                                          "optim": {"epochs": 5}}))
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "test_acc": a}) + "\n"
                                                for e, a in ((1, 40.0), (2, 55.0), (3, 55.0), (4, 50.0))))
    s = load_run(tmp_path)["summary"]
    assert (s["best_acc"], s["best_epoch"], s["last_acc"], s["epochs_done"]) == (55.0, 2, 50.0, 4)


def test_missing_and_foreign_folders_are_named(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert f"no such folder: {tmp_path / 'nope'}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a btkd run folder"):
        write_report([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_run(tmp_path / "nope")
    # --resume of a folder that is not there says so, not that it lacks a config.yaml
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert f"no such folder: {tmp_path / 'nope'}" in capsys.readouterr().err


def test_plots_label_seeds_keep_overlaps_visible_and_carry_the_title(runs, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = {}
    original_close = plt.close

    def keep(fig=None):
        figures[len(figures)] = fig
        return None

    monkeypatch.setattr(plt, "close", keep)
    try:
        write_report([runs / "btkd_s0", runs / "btkd_s1", runs / "unfinished"], tmp_path, title="My title")
    finally:
        monkeypatch.setattr(plt, "close", original_close)
    assert len(figures) == 4  # accuracy, beta, teacher wrong, rectified
    for fig in figures.values():
        ax = fig.axes[0]
        assert ax.get_title().startswith("My title")
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("seed 0" in t for t in labels) and any("seed 1" in t for t in labels)
        assert any("epoch 2/3" in t for t in labels)  # the unfinished run says so
        lines = ax.get_lines()
        looks = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}
        assert len(looks) == len(lines), "every run is drawn in its own style"
        plt.close(fig)
    acc = figures[0].axes[0]
    lo, hi = acc.get_ylim()
    assert hi - lo >= 5.0 - 1e-9  # at least 5 points of accuracy, however flat the curves


def test_the_accuracy_plot_names_the_teacher_and_keeps_the_legend_off_the_curves(runs, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    write_report([runs / "btkd_s0", runs / "btkd_s1"], tmp_path)
    monkeypatch.undo()
    acc = json.loads((runs / "btkd_s0" / "summary.json").read_text())["teacher_test_acc"]
    ax = figures[0].axes[0]
    teacher = [line for line in ax.get_lines() if line.get_label().startswith("teacher")]
    assert len(teacher) == 1  # both students learn from the same teacher: one line
    assert teacher[0].get_label() == f"teacher convnet ({acc:.2f} %)" and list(teacher[0].get_ydata()) == [acc, acc]
    for fig in figures:
        fig.canvas.draw()
        legend = fig.axes[0].get_legend()
        assert legend.get_window_extent().x0 >= fig.axes[0].get_window_extent().x1  # beside the axes
        plt.close(fig)


def test_y_limits_keep_a_minimum_span():
    assert y_limits([70.1, 70.3], 5.0, 0, 100) == pytest.approx((67.7, 72.7))
    assert y_limits([99.0, 99.9], 5.0, 0, 100) == pytest.approx((95.0, 100.0))
    assert y_limits([0.5, 1.0], 5.0, 0, 100) == pytest.approx((0.0, 5.0))
    lo, hi = y_limits([40.0, 80.0], 5.0, 0, 100)
    assert lo < 40 and hi > 80 and hi - lo == pytest.approx(44.0)
    assert len({tuple(sorted(style(k, 240).items(), key=str)) for k in range(20)}) == 20
    # colours cycle every 10 runs, line styles every 4, markers every 7
    looks = [(style(k, 240)["color"], style(k, 240)["linestyle"], style(k, 240)["marker"]) for k in range(140)]
    assert len(set(looks)) == 140 and [len({look[i] for look in looks}) for i in range(3)] == [10, 4, 7]


def test_a_run_extended_by_a_resume_is_in_progress_until_it_ends_again(tmp_path, capsys):
    import yaml

    folder, config = tmp_path / "ext", tmp_path / "ext.yaml"
    config.write_text(yaml.safe_dump({"name": "ext", "output_dir": str(tmp_path), "data": DATA,
                                      "optim": {"epochs": 2, "milestones": []}, "runtime": {"progress": False},
                                      "model": {"student": "convnet", "student_options": {"width": 4}},
                                      "distill": {"method": "ce"}}))
    assert main(["train", str(config)]) == 0
    ended = (folder / "summary.json").read_text()
    assert load_run(folder)["complete"]
    assert main(["train", "--resume", str(folder), "optim.epochs=4", "runtime.time_limit=0.000001"]) == 0
    run = load_run(folder)
    assert not (folder / "summary.json").exists() and not run["complete"]
    assert run["summary"]["epochs_done"] == 3 and run["summary"]["epochs"] == 4
    # a summary of the earlier end left beside the longer log (an older btkd's folder) is not the end either
    (folder / "summary.json").write_text(ended)
    assert not load_run(folder)["complete"] and load_run(folder)["summary"]["epochs_done"] == 3
    # without a config to rebuild from, the summary is shown as it is, marked unfinished
    (folder / "config.yaml").unlink()
    run = load_run(folder)
    assert not run["complete"] and run["summary"] == json.loads(ended)
    capsys.readouterr()



def test_a_report_during_the_first_epoch_says_why_it_has_no_plots(tmp_path):
    original, seen = Grid.train_epoch, {}

    def report_first(self, epoch, bar=None):
        if epoch == 0:  # a report taken while the run trains its first epoch
            seen["md"] = write_report([self.root.path], tmp_path / "report").read_text()
        return original(self, epoch, bar)

    Grid.train_epoch = report_first
    try:
        Trainer(cfg(tmp_path, "starting", optim={"epochs": 1, "milestones": []}), echo=lambda *_: None).fit()
    finally:
        Grid.train_epoch = original
    assert "(no plots yet: no run has finished an epoch)" in seen["md"] and "install matplotlib" not in seen["md"]


def test_a_plot_interrupted_while_it_is_written_leaves_the_previous_file(tmp_path, monkeypatch):
    # plots are rewritten by every report: a kill mid-write once left a torn PNG until the next one
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from btkd.report import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = tmp_path / "accuracy.png"
    save_figure(fig, path, dpi=50)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    def torn(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(type(fig), "savefig", torn)
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, path, dpi=50)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["accuracy.png"]
    plt.close(fig)


def test_a_report_removes_the_temp_files_a_killed_report_left_and_keeps_its_old_one_whole(runs, tmp_path,
                                                                                        monkeypatch):
    # a kill while report.md or a plot was written leaves .<name>.<random>.tmp; the next report cleans it
    from btkd.report import PLOT_FILES

    stale = [tmp_path / ".report.md.k1ll3d.tmp"] + [tmp_path / f".{name}.k1ll3d.tmp" for name in PLOT_FILES]
    for p in stale:
        p.write_bytes(b"partial")
    (tmp_path / ".notes.txt.mine.tmp").write_text("the user's own")
    write_report([runs / "btkd_s0"], tmp_path)
    assert not any(p.exists() for p in stale)
    assert (tmp_path / ".notes.txt.mine.tmp").read_text() == "the user's own"
    made = {p.name for p in tmp_path.glob("*.png")}
    assert made and made <= set(PLOT_FILES), "PLOT_FILES names every plot a report writes"

    # report.md itself is written atomically: a kill before its rename keeps the previous one whole
    import btkd.engine.checkpoint as checkpoint

    before, rename = (tmp_path / "report.md").read_text(), checkpoint.os.replace

    def killed_at_report_md(src, dst):
        if str(dst).endswith("report.md"):
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed_at_report_md)
    with pytest.raises(KeyboardInterrupt):
        write_report([runs / "btkd_s0"], tmp_path, title="a new title")
    assert (tmp_path / "report.md").read_text() == before and "a new title" not in before
    assert not list(tmp_path.glob(".report.md.*.tmp"))


def test_a_bench_members_time_is_marked_as_its_bench_pass_not_its_own(runs, tmp_path):
    # Two students trained side by side (a bench's grid): each log records the pass's time, which the
    # report must not show as if the member had taken it alone.
    from btkd.engine.grid import MemberSpec

    root = tmp_path / "bench"
    specs = [MemberSpec(f"ce-s{seed}", cfg(tmp_path, f"ce-s{seed}", seed=seed, optim={"epochs": 1, "milestones": []}),
                        root / "runs" / f"ce-s{seed}") for seed in (0, 1)]
    Grid(specs, root, echo=lambda *_: None).fit()
    members = [root / "runs" / s.label for s in specs]
    path = write_report([runs / "teacher", *members], tmp_path / "out")
    md = path.read_text()
    rows = {line.split("|")[1].strip(): line.split("|") for line in md.splitlines() if line.startswith("| ")}
    for member in members:
        summary = json.loads((member / "summary.json").read_text())
        assert rows[member.name][14].strip() == f"{summary['wall_time']:.1f} (shared by 2)"
        assert rows[member.name][13].strip().endswith(" (shared by 2)")
    assert "shared" not in rows["teacher"][13] + rows["teacher"][14], "a run of its own is its own time"
    assert "*shared by N*: a bench trains its N students in one pass" in md


def test_a_flat_accuracy_curve_is_shown_over_five_points_and_a_teacher_without_accuracy_gets_no_line(tmp_path,
                                                                                                        monkeypatch):
    import matplotlib.pyplot as plt

    from btkd.report import _plots

    runs = [{**_run_dict(teacher="convnet"), "log": [{"epoch": 1, "test_acc": 70.1}, {"epoch": 2, "test_acc": 70.3}]},
            # a run whose meta.json (the teacher's accuracy) was not written yet
            {**_run_dict(name="r2", teacher="convnet", teacher_test_acc=None), "log": [{"epoch": 1, "test_acc": 70.2}]}]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    assert [name for name, _ in _plots(runs, tmp_path, "t")] == ["accuracy.png"]
    monkeypatch.undo()
    ax = figures[0].axes[0]
    lo, hi = ax.get_ylim()
    assert hi - lo == pytest.approx(5.0)  # 0.2 points of wobble are not drawn across the whole plot
    assert [line.get_label() for line in ax.get_lines() if line.get_label().startswith("teacher")] == \
        ["teacher convnet (70.00 %)"]
    plt.close(figures[0])
