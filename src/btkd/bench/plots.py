"""PNG plots of a bench's results (matplotlib, the ``[report]`` extra). Each plot shows every cell
with its own line style, so overlapping curves stay visible, and never zooms an axis so far that
noise looks like an effect."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

__all__ = ["bench_plots"]

STYLES = ["-", "--", "-.", ":"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _epoch_plot(plt, results, key: str, ylabel: str, title: str, path: Path, only=lambda c: True,
                band: str = "", min_span: float = 0.0, percent: bool = False) -> bool:
    cells = [c for c in results["cells"] if only(c) and any(v is not None for v in c["curves"][key])]
    if not cells:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lo, hi = float("inf"), float("-inf")
    for i, c in enumerate(cells):
        xs = [e for e, v in zip(c["curves"]["epoch"], c["curves"][key]) if v is not None]
        ys = [100 * v if percent else v for v in c["curves"][key] if v is not None]
        ax.plot(xs, ys, STYLES[i % len(STYLES)], marker="o" if len(xs) <= 30 else None, markersize=3,
                label=c["title"], alpha=0.9)
        lo, hi = min(lo, min(ys)), max(hi, max(ys))
        if band:
            sd = [s for s, v in zip(c["curves"][band], c["curves"][key]) if v is not None]
            if any(s is not None for s in sd):
                ax.fill_between(xs, [y - (s or 0) for y, s in zip(ys, sd)], [y + (s or 0) for y, s in zip(ys, sd)],
                                alpha=0.15)
    if min_span and hi - lo < min_span:  # keep a minimum span so that tenths do not fill the plot
        mid = (hi + lo) / 2
        ax.set_ylim(mid - min_span / 2, mid + min_span / 2)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _difference_plot(plt, results, path: Path) -> bool:
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
    ax.set_title("diamond: mean; bar: 95 % interval; dots: seeds", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def bench_plots(results: Dict[str, Any], out_dir: Path) -> List[Tuple[str, str]]:
    """Write the plots into ``out_dir``; returns (file name, caption) pairs (none without matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    n = len(results["seeds"])
    plots = [
        ("accuracy.png", "Test accuracy per epoch (mean over seeds, band: ± one standard deviation)",
         dict(key="test_acc_mean", ylabel="test accuracy (%)", band="test_acc_std", min_span=5.0)),
        ("beta.png", "BTKD's dynamic weight beta per epoch (weight of the samples the teacher gets right)",
         dict(key="beta", ylabel="beta", only=lambda c: c["btkd"])),
        ("teacher_wrong.png", "Training samples the teacher gets wrong per epoch (augmented batches)",
         dict(key="frac_wrong", ylabel="teacher wrong (% of training samples)", percent=True, min_span=1.0,
              only=lambda c: c["frac_wrong_mean"] is not None)),
        ("rectified.png", "Samples rectified per epoch by BTKD",
         dict(key="n_rectified", ylabel="rectified samples per epoch", only=lambda c: c["btkd"])),
    ]
    for fname, caption, kw in plots:
        if _epoch_plot(plt, results, title=f"{results['name']} ({n} seed{'s' if n > 1 else ''})",
                       path=out_dir / fname, **kw):
            made.append((fname, caption))
    if _difference_plot(plt, results, out_dir / "differences.png"):
        made.append(("differences.png", "Paired differences per seed, with 95 % intervals"))
    return made
