"""Reports: a Markdown summary table and PNG plots from one or more run folders.

A run folder still in progress (no ``summary.json`` yet: running, killed, or paused by
``runtime.time_limit``) is reported from its ``log.jsonl`` up to the last finished epoch, and its row
says so. Plots give every run its own colour, line style and marker, so runs whose curves overlap stay
visible, label each run with its seed, and never zoom a y-axis below a minimum span (5 points of
accuracy), so that noise does not look like an effect. The accuracy plot draws each teacher's test
accuracy as a labelled line; legends sit beside the axes, off the curves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .engine.checkpoint import write_atomic
from .engine.run_folder import read_log, remove_stale_temp_files, write_text_atomic

__all__ = ["load_run", "results_table", "write_report", "run_label", "resumes_text", "MIN_SPAN"]

# The smallest y-range a plot shows, per logged key (in the plotted unit): a 0.3-point wobble of
# test accuracy drawn across the whole height of a plot looks like a trend.
MIN_SPAN = {"test_acc": 5.0, "frac_wrong": 5.0}


def load_run(run_dir: Path) -> Dict[str, Any]:
    """A run folder's summary, log, config and meta. Without ``summary.json`` (a run in progress) the
    summary is rebuilt from ``config.yaml`` and ``log.jsonl`` up to the last finished epoch, and
    ``complete`` is False."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no such folder: {run_dir}")
    config = _read_yaml(run_dir / "config.yaml")
    meta = _read_json(run_dir / "meta.json")
    log = read_log(run_dir / "log.jsonl")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if summary is not None and (not log or summary.get("epochs_done") == log[-1]["epoch"]):
        complete = True
    elif config:  # in progress, or extended by a resume past the end its summary describes
        summary = _summary_in_progress(run_dir, config, meta, log)
        complete = False
    elif summary is not None:  # no config to rebuild it from: the summary, marked unfinished
        complete = False
    else:
        raise FileNotFoundError(f"{run_dir} is not a btkd run folder (no summary.json, config.yaml or log.jsonl); "
                                "give run folders (output_dir/name), or a bench folder")
    data = config.get("data") or {}
    return {"dir": run_dir, "summary": summary, "log": log, "config": config, "meta": meta, "complete": complete,
            "dataset": data.get("name", "?"), "train_size": meta.get("train_size")}


def _read_yaml(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # written atomically, so only a foreign file is unreadable; the table shows "-"
    return data if isinstance(data, dict) else {}


def _summary_in_progress(run_dir: Path, config: Dict, meta: Dict, log: List[Dict]) -> Dict[str, Any]:
    model, distill = config.get("model") or {}, config.get("distill") or {}
    btkd = bool((distill.get("btkd") or {}).get("enabled"))
    accs = [(r["test_acc"], r["epoch"]) for r in log if r.get("test_acc") is not None]
    best = max(accs, key=lambda a: (a[0], -a[1])) if accs else (None, None)  # the first epoch of the best
    last = log[-1] if log else {}
    return {
        "name": run_dir.name, "student": model.get("student"), "teacher": model.get("teacher"),
        "method": distill.get("method", "kd"), "btkd": btkd, "seed": config.get("seed", 0),
        "epochs": (config.get("optim") or {}).get("epochs"), "epochs_done": last.get("epoch", 0),
        "last_acc": last.get("test_acc"), "best_acc": best[0], "best_epoch": best[1],
        "teacher_test_acc": meta.get("teacher_test_acc"), "diverged": None, "wall_time": last.get("wall_time"),
        "images_per_s_mean": _mean([r["images_per_s"] for r in log if "images_per_s" in r]),
        "frac_wrong_mean": _mean([r["frac_wrong"] for r in log if "frac_wrong" in r]),
    }


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _method(summary: Dict) -> str:
    if summary["method"] == "ce":
        return "CE"
    return summary["method"].upper() + ("+BTKD" if summary.get("btkd") else "")


def run_label(run: Dict) -> str:
    """A run's name in legends: its folder name, model, method and seed."""
    s = run["summary"]
    what = f"{s['student']} {_method(s)}"
    progress = "" if run.get("complete", True) else f", epoch {s['epochs_done']}/{s['epochs']}"
    return f"{s['name']}: {what}, seed {s.get('seed', '?')}{progress}"


def _status(run: Dict) -> str:
    s = run["summary"]
    if not run.get("complete", True):
        return f" (in progress, epoch {s['epochs_done']} of {s['epochs']})"
    if s.get("diverged"):
        return f" (diverged, kept epoch {s['epochs_done']})"
    return ""


def _fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def shared_by(run: Dict) -> int:
    """How many students trained in the pass whose time a run's log records: a bench's members
    share one (its wall time, epoch times and images/s are the pass's), a run of its own is 1."""
    grid = (run.get("meta") or {}).get("grid") or {}
    return int(grid.get("members") or (run.get("summary") or {}).get("grid_members") or 1)


def results_table(runs: Sequence[Dict]) -> str:
    """Markdown: one row per run; last-epoch and best-epoch test accuracy (best names its epoch), the
    data, the teacher's error on its augmented training batches and the samples BTKD rectified. A
    bench member's images/s and wall time are its bench's shared pass, and say so."""
    lines = ["| run | dataset | train size | model | method | seed | last-epoch acc (%) | best-epoch acc (%) | "
             "teacher acc (%) | teacher wrong on train (%) | rectified / epoch | epochs | images/s | wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        s = r["summary"]
        best = f"{s['best_acc']:.2f} (epoch {s['best_epoch']})" if s.get("best_acc") is not None else "-"
        wrong = s.get("frac_wrong_mean")
        rectified = _mean([e["n_rectified"] for e in r["log"] if "n_rectified" in e]) if s.get("btkd") else None
        size = r.get("train_size")
        epochs = s.get("epochs_done") if r.get("complete", True) else f"{s['epochs_done']} of {s['epochs']}"
        n = shared_by(r)
        shared = "" if n == 1 else f" (shared by {n})"  # not apportioned: the students trained side by side
        speed, wall = _fmt(s.get("images_per_s_mean"), ",.0f"), _fmt(s.get("wall_time"), ".1f")
        lines.append(
            f"| {s['name']}{_status(r)} | {r.get('dataset', '?')} | {'-' if size is None else f'{size:,}'} | "
            f"{s['student']} | {_method(s)} | {s.get('seed', '-')} | {_fmt(s.get('last_acc'))} | {best} | "
            f"{_fmt(s.get('teacher_test_acc'))} | {_fmt(None if wrong is None else 100 * wrong, '.1f')} | "
            f"{_fmt(rectified, ',.0f')} | {epochs} | {speed if speed == '-' else speed + shared} | "
            f"{wall if wall == '-' else wall + shared} |")
    return "\n".join(lines)


def resumes_text(resumes: Sequence[Dict[str, Any]], started: Optional[Dict[str, Any]] = None) -> str:
    """The resumes a run's meta.json records, for a reader: "after epoch 2 (optim.lr 0.05 -> 0.01;
    commit 1a2b3c4d5e)", ... Each names what it changed and, where it differs from ``started`` (the
    environment the run started in), the commit, machine, torch or number of processes it ran on."""
    started = started or {}
    parts = []
    for r in resumes:
        said = [f"{key} {_plain(c.get('from'))} -> {_plain(c.get('to'))}" for key, c in (r.get("changes") or {}).items()]
        env = r.get("environment") or {}
        for key, name in (("git_commit", "commit"), ("device", "device"), ("torch_version", "torch"),
                          ("world_size", "processes")):
            if env.get(key) is not None and env.get(key) != started.get(key):
                said.append(f"{name} {str(env[key])[:10] if key == 'git_commit' else env[key]}")
        parts.append(f"after epoch {r.get('at_epoch')}" + (f" ({'; '.join(said)})" if said else ""))
    return ", ".join(parts)


def _plain(value: Any) -> str:
    return "null" if value is None else str(value)


def no_plots_note() -> str:
    """Why a report has no plots: matplotlib is missing, or no run has an epoch to plot yet."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return "(plots skipped: install matplotlib, e.g. `pip install 'btkd[report]'`)"
    return "(no plots yet: no run has finished an epoch)"


def write_report(run_dirs: Sequence[Path], out_dir: Path, title: str = "btkd report",
                 notes: Optional[List[str]] = None) -> Path:
    """Write ``report.md`` and the plots into ``out_dir``; returns the Markdown file's path."""
    runs = [load_run(d) for d in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir, ("report.md",) + PLOT_FILES)  # of a report that a kill interrupted
    plots = _plots(runs, out_dir, title)
    md = [f"# {title}", "", results_table(runs), ""]
    md += [f"- {n}" for n in notes or []]
    md += ["- *last-epoch* is the accuracy after the final epoch; *best-epoch* is the highest test accuracy of "
           "any epoch (an optimistic figure, as the field reports it). *teacher wrong on train*: the share of "
           "augmented training samples the teacher got wrong, mean over epochs; *rectified / epoch*: the samples "
           "BTKD rectified per epoch (BTKD runs)."]
    if any(shared_by(r) > 1 for r in runs):
        md += ["- *shared by N*: a bench trains its N students in one pass, so its members' wall time is the "
               "whole pass's and their images/s are images of their seed's batches per second of that pass; "
               "neither is what the run would take alone, and wall times of one bench do not add up."]
    for r in runs:  # a run continued from its checkpoint says so, with what the resume changed
        resumes = r["meta"].get("resumes") or []
        if resumes:
            md += [f"- `{r['summary']['name']}` was resumed from its checkpoint {resumes_text(resumes, r['meta'])}."]
    unfinished = [r for r in runs if not r["complete"]]
    if unfinished:
        md += ["- Runs *in progress* are reported up to their last finished epoch: their last-epoch accuracy is "
               "not a final result."]
    md += [""]
    for name, caption in plots:
        md += [f"## {caption}", "", f"![{caption}]({name})", ""]
    if not plots:
        md += [no_plots_note(), ""]
    md += ["Run folders: " + ", ".join(f"`{r['dir']}`" for r in runs), ""]
    path = out_dir / "report.md"
    write_text_atomic(path, "\n".join(md))
    return path


#: Every plot `write_report` may write (it removes the temp files a kill left of them).
PLOT_FILES = ("accuracy.png", "beta.png", "teacher_wrong.png", "rectified.png")


# Distinct styles: colours cycle every 10 runs, line styles every 4, markers every 7, so two runs
# share all three only 140 runs apart. Markers are hollow and lines get thinner run by run, so a
# curve drawn exactly over an earlier one leaves the earlier one's wider line and marks visible.
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def save_figure(fig, path: Path, **kwargs) -> None:
    """``fig.savefig`` as a PNG written atomically: a kill mid-plot leaves the previous file, not a torn one."""
    write_atomic(path, lambda f: fig.savefig(f, format="png", **kwargs))


def style(k: int, n_points: int) -> Dict[str, Any]:
    """The line style of the k-th run: colour, dash pattern, hollow marker, width, markers staggered
    between runs on long curves."""
    every = max(1, n_points // 8)
    return {"color": f"C{k % 10}", "linestyle": LINESTYLES[k % len(LINESTYLES)], "marker": MARKERS[k % len(MARKERS)],
            "markevery": (k % every, every), "markersize": max(4.0, 9.0 - 1.0 * k), "markerfacecolor": "none",
            "markeredgewidth": 1.4, "linewidth": max(1.0, 3.2 - 0.5 * k)}


def y_limits(values: Sequence[float], min_span: float, lo: Optional[float] = None,
             hi: Optional[float] = None) -> tuple:
    """The y-range to show: the data's range with a margin, widened to at least ``min_span`` around its
    middle and kept inside [lo, hi]."""
    vmin, vmax = min(values), max(values)
    margin = 0.05 * (vmax - vmin)
    a, b = vmin - margin, vmax + margin
    if b - a < min_span:
        mid = (vmin + vmax) / 2
        a, b = mid - min_span / 2, mid + min_span / 2
    if lo is not None and a < lo:
        a, b = lo, max(b, lo + min_span)
    if hi is not None and b > hi:
        a, b = min(a, hi - min_span), hi
    if lo is not None:
        a = max(a, lo)
    return a, b


def _plots(runs: Sequence[Dict], out_dir: Path, title: str) -> List[tuple]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return []
    made = []

    def plot(key: str, ylabel: str, fname: str, caption: str, only=lambda r: True, scale: float = 1.0,
             limits=None, teachers: bool = False):
        selected = [(k, r) for k, r in enumerate(runs) if only(r) and any(key in e for e in r["log"])]
        if not selected:
            return
        fig, ax = plt.subplots(figsize=(7, 4.5))
        values = []
        for k, r in selected:
            xs = [e["epoch"] for e in r["log"] if key in e]
            ys = [e[key] * scale for e in r["log"] if key in e]
            values += ys
            ax.plot(xs, ys, label=run_label(r), **style(k, len(xs)))
        if teachers:  # the accuracy the students are measured against, one line per teacher
            found = {(r["summary"].get("teacher"), r["summary"].get("teacher_test_acc")) for _, r in selected}
            for i, (name, acc) in enumerate(sorted(t for t in found if t[1] is not None)):
                ax.axhline(acc, color="k", linestyle=[(0, (6, 3)), (0, (2, 2)), (0, (8, 2, 2, 2))][i % 3],
                           linewidth=1.2, label=f"teacher {name} ({acc:.2f} %)")
                values.append(acc)
        if limits is not None:
            ax.set_ylim(*limits(values))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n{caption}", fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        # beside the axes, not over the curves; the saved figure widens to hold it
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        save_figure(fig, out_dir / fname, dpi=100, bbox_inches="tight")
        plt.close(fig)
        made.append((fname, caption))

    plot("test_acc", "test accuracy (%)", "accuracy.png", "Test accuracy per epoch",
         limits=lambda v: y_limits(v, MIN_SPAN["test_acc"], 0.0, 100.0), teachers=True)
    plot("beta", "beta (weight of the right part)", "beta.png", "BTKD dynamic weight beta per epoch",
         only=lambda r: r["summary"].get("btkd"), limits=lambda v: (-0.02, 1.02))
    plot("frac_wrong", "training samples the teacher got wrong (%)", "teacher_wrong.png",
         "Share of augmented training samples the teacher got wrong, per epoch", scale=100.0,
         limits=lambda v: y_limits(v, MIN_SPAN["frac_wrong"], 0.0, 100.0))
    plot("n_rectified", "samples rectified per epoch", "rectified.png", "Samples BTKD rectified per epoch",
         only=lambda r: r["summary"].get("btkd"), limits=lambda v: (0.0, max(max(v) * 1.1, 1.0)))
    return made
