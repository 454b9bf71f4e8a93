"""Reports: a Markdown summary table and PNG plots from one or more run folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .engine.run_folder import read_log

__all__ = ["load_run", "results_table", "write_report"]


def load_run(run_dir: Path) -> Dict:
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no summary.json: the run has not finished (resume it with --resume)")
    return {"dir": run_dir, "summary": json.loads(summary_path.read_text()), "log": read_log(run_dir / "log.jsonl")}


def _method(summary: Dict) -> str:
    if summary["method"] == "ce":
        return "CE"
    return summary["method"].upper() + ("+BTKD" if summary["btkd"] else "")


def _label(run: Dict) -> str:
    s = run["summary"]
    return f"{s['student']} (CE)" if s["method"] == "ce" else f"{s['student']} {_method(s)}"


def results_table(runs: Sequence[Dict]) -> str:
    """Markdown: one row per run; last-epoch and best-epoch test accuracy (best names its epoch)."""
    lines = ["| run | model | method | last-epoch acc (%) | best-epoch acc (%) | teacher acc (%) | epochs | wall time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        s = r["summary"]
        method = _method(s)
        teacher = f"{s['teacher_test_acc']:.2f}" if s.get("teacher_test_acc") is not None else "-"
        lines.append(f"| {s['name']} | {s['student']} | {method} | {s['last_acc']:.2f} | "
                     f"{s['best_acc']:.2f} (epoch {s['best_epoch']}) | {teacher} | {s['epochs']} | {s['wall_time']:.1f} |")
    return "\n".join(lines)


def write_report(run_dirs: Sequence[Path], out_dir: Path, title: str = "btkd report",
                 notes: Optional[List[str]] = None) -> Path:
    """Write ``report.md`` and the plots into ``out_dir``; returns the Markdown file's path."""
    runs = [load_run(d) for d in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(runs, out_dir)
    md = [f"# {title}", "", results_table(runs), ""]
    md += [f"- {n}" for n in notes or []]
    md += ["- *last-epoch* is the accuracy after the final epoch; *best-epoch* is the highest test accuracy of "
           "any epoch (an optimistic figure, as the field reports it).", ""]
    for name, caption in plots:
        md += [f"## {caption}", "", f"![{caption}]({name})", ""]
    if not plots:
        md += ["(plots skipped: install matplotlib, e.g. `pip install 'btkd[report]'`)", ""]
    md += ["Run folders: " + ", ".join(f"`{r['dir']}`" for r in runs), ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(md))
    return path


def _plots(runs: Sequence[Dict], out_dir: Path) -> List[tuple]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []

    def plot(key: str, ylabel: str, fname: str, caption: str, only=lambda r: True):
        selected = [r for r in runs if only(r) and any(key in e for e in r["log"])]
        if not selected:
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in selected:
            xs = [e["epoch"] for e in r["log"] if key in e]
            ys = [e[key] for e in r["log"] if key in e]
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=_label(r))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=100)
        plt.close(fig)
        made.append((fname, caption))

    plot("test_acc", "test accuracy (%)", "accuracy.png", "Test accuracy per epoch")
    plot("beta", "beta (weight of the right part)", "beta.png", "BTKD dynamic weight beta per epoch",
         only=lambda r: r["summary"]["btkd"])
    plot("frac_wrong", "fraction of training samples", "teacher_wrong.png",
         "Fraction of training samples the teacher got wrong, per epoch")
    return made
