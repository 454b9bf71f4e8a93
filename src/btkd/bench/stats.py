"""The statistics of a bench, as plain functions on lists of numbers.

- A cell (one method over several seeds): mean and sample standard deviation (n - 1).
- A comparison of two methods: they are paired by seed (same data order, augmentation, teacher
  logits and initial weights), so the quantity is the per-seed difference d_i = a_i - b_i. Its mean
  and a 95 % interval from Student's t with n - 1 degrees of freedom:
  mean(d) +/- t(0.975, n - 1) * sd(d) / sqrt(n). Pairing removes the seed-to-seed variation both
  methods share, so the interval is narrower than one built from two independent means.
  With one seed there is no spread to estimate: no interval, and the record says so.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

__all__ = ["describe", "paired_difference", "t_quantile"]

ONE_SEED = "one seed: no spread and no interval can be estimated; run more seeds"


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return float(t.ppf(p, df))


def describe(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """{"n", "mean", "std"} of the finite values; std is the sample (n - 1) standard deviation,
    None with fewer than two values; mean is None with none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    mean = sum(xs) / n if n else None
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n >= 2 else None
    return {"n": n, "mean": mean, "std": std}


def paired_difference(a: Sequence[Optional[float]], b: Sequence[Optional[float]],
                      level: float = 0.95) -> Dict[str, object]:
    """Mean and t interval of the per-pair differences ``a[i] - b[i]``; pairs with a missing value
    on either side (None or not finite: a diverged or unfinished run) are left out and counted in
    ``"dropped"``.

    Returns ``{"n", "mean", "std", "diffs", "dropped", "level", "ci", "t_crit", "note"}``: ``ci`` is
    ``[low, high]``, the ``level`` (0.95) interval mean +/- t * std / sqrt(n) from Student's t with
    n - 1 degrees of freedom, or None with fewer than two pairs (``note`` then says why). Lists of
    different lengths are a ValueError."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)
             if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    d = describe(diffs)
    out: Dict[str, object] = {**d, "diffs": diffs, "dropped": len(a) - len(diffs), "level": level,
                              "ci": None, "t_crit": None, "note": None}
    n = d["n"]
    if n == 0:
        out["note"] = "no complete pair"
    elif n == 1:
        out["note"] = ONE_SEED
    else:
        t = t_quantile(0.5 + level / 2, n - 1)
        half = t * d["std"] / math.sqrt(n)
        out.update(t_crit=t, ci=[d["mean"] - half, d["mean"] + half])
    return out
