"""PNG plots of a bench's results (matplotlib, the ``[report]`` extra). Each plot shows every cell
with its own line style, the same in every plot, so overlapping curves stay visible; the legend sits
beside the axes, the accuracy plot draws the teacher's accuracy as a labelled line, and no axis is
zoomed so far that noise looks like an effect."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..report import MIN_SPAN, save_figure, style, y_limits
from ..report import PLOT_FILES as RUN_PLOT_FILES

__all__ = ["bench_plots"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend_outside(ax) -> None:
    """The legend to the right of the axes: inside, a bench's dozen entries cover the curves."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _epoch_plot(plt, results, key: str, ylabel: str, title: str, path: Path, only=lambda c: True,
                band: str = "", limits=None, percent: bool = False, teacher: bool = False) -> bool:
    # k is the cell's place among all cells, so a method keeps its colour, dashes and marker in every
    # plot (beta and rectified show only the BTKD cells); styles shared with `btkd report`, whose
    # hollow markers and narrowing lines keep identical curves (beta, rectified) visible.
    cells = [(k, c) for k, c in enumerate(results["cells"])
             if only(c) and any(v is not None for v in c["curves"][key])]
    if not cells:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    values: List[float] = []
    for k, c in cells:
        xs = [e for e, v in zip(c["curves"]["epoch"], c["curves"][key]) if v is not None]
        ys = [100 * v if percent else v for v in c["curves"][key] if v is not None]
        line, = ax.plot(xs, ys, label=c["title"], **style(k, len(xs)))
        values += ys
        if band:
            sd = [s for s, v in zip(c["curves"][band], c["curves"][key]) if v is not None]
            if any(s is not None for s in sd):
                lo = [y - (s or 0) for y, s in zip(ys, sd)]
                hi = [y + (s or 0) for y, s in zip(ys, sd)]
                # the line's own colour: the patch colour cycle would drift off it after a cell
                # without a band (one seed)
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
                values += lo + hi
    t = results.get("teacher") or {}
    if teacher and t.get("test_acc") is not None:
        ax.axhline(t["test_acc"], color="k", linestyle=(0, (6, 3)), linewidth=1.2,
                   label=f"teacher {t['model']} ({t['test_acc']:.2f} %)")
        values.append(t["test_acc"])
    if limits is not None:
        ax.set_ylim(*limits(values))
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()  # before the legend, so the axes keep their size and the saved figure widens
    _legend_outside(ax)
    save_figure(fig, path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def _difference_plot(plt, results, path: Path, heading: str) -> bool:
    rows: List[Tuple[str, Dict[str, Any]]] = []
    titles = {c["label"]: c["title"] for c in results["cells"]}
    for c in results["comparisons"]:
        rows.append((f"{titles[c['a']]}\nminus {titles[c['b']]}", c))
    for c in results["vs_teacher"]:
        rows.append((f"{titles[c['a']]}\nminus teacher", c))
    rows = [(name, c) for name, c in rows if c["n"]]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.5))
    for i, (name, c) in enumerate(rows):
        y = len(rows) - 1 - i
        ax.plot(c["diffs"], [y] * len(c["diffs"]), "o", color="0.6", markersize=4, zorder=1)
        if c["ci"]:
            ax.errorbar(c["mean"], y, xerr=[[c["mean"] - c["ci"][0]], [c["ci"][1] - c["mean"]]], fmt="D",
                        color="C0", capsize=4, zorder=2)
        else:
            ax.plot(c["mean"], y, "D", color="C1", zorder=2)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([name for name, _ in reversed(rows)], fontsize=7)
    ax.set_xlabel("last-epoch test accuracy difference (points)")
    ax.set_title(f"{heading}\ndiamond: mean; bar: 95 % interval; dots: seeds", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return True


#: Every plot `bench_plots` may write (a resumed bench removes the temp files a kill left of them).
PLOT_FILES = RUN_PLOT_FILES + ("differences.png",)


def bench_plots(results: Dict[str, Any], out_dir: Path, title: Optional[str] = None) -> List[Tuple[str, str]]:
    """Write the plots into ``out_dir``; returns (file name, caption) pairs (none without matplotlib).
    ``title`` heads every plot (default: the bench's name, or the names of the units pooled)."""
    plt = _pyplot()
    if plt is None:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    n = len(results["seeds"])
    names = list(dict.fromkeys(u.get("name", results["name"]) for u in results.get("units") or [])) \
        or [results["name"]]
    # an unfinished bench's later epochs average only the seeds that reached them
    heading = (f"{title or ' + '.join(names)} ({n} seed{'s' if n > 1 else ''}"
               + ("" if results["complete"] else ", unfinished: later epochs may average fewer seeds") + ")")
    percent = lambda v: y_limits(v, MIN_SPAN["test_acc"], 0.0, 100.0)  # noqa: E731
    plots = [
        ("accuracy.png", "Test accuracy per epoch (mean over seeds, band: ± one standard deviation)",
         dict(key="test_acc_mean", ylabel="test accuracy (%)", band="test_acc_std", limits=percent, teacher=True)),
        ("beta.png", "BTKD's dynamic weight beta per epoch (weight of the samples the teacher gets right)",
         dict(key="beta", ylabel="beta", only=lambda c: c["btkd"], limits=lambda v: (-0.02, 1.02))),
        ("teacher_wrong.png", "Training samples the teacher gets wrong per epoch (augmented batches)",
         dict(key="frac_wrong", ylabel="teacher wrong (% of training samples)", percent=True,
              limits=lambda v: y_limits(v, MIN_SPAN["frac_wrong"], 0.0, 100.0),
              only=lambda c: c["frac_wrong_mean"] is not None)),
        ("rectified.png", "Samples rectified per epoch by BTKD",
         dict(key="n_rectified", ylabel="rectified samples per epoch", only=lambda c: c["btkd"],
              limits=lambda v: (0.0, max(max(v) * 1.1, 1.0)))),
    ]
    for fname, caption, kw in plots:
        if _epoch_plot(plt, results, title=f"{heading}\n{caption}", path=out_dir / fname, **kw):
            made.append((fname, caption))
    if _difference_plot(plt, results, out_dir / "differences.png", heading):
        made.append(("differences.png", "Paired differences per seed, with 95 % intervals"))
    return made
