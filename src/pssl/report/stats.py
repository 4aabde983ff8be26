"""Seeds to statistics: mean and standard deviation of a cell, and the paired PSSL - ImageNet difference with
its 95% confidence interval (Student's t over the seeds' differences: each seed fine-tunes both inits, so the
differences are paired and the seed-to-seed spread they share cancels)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30 (standard tables)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    """t_{0.975, df}: the table up to 30, then the Cornish-Fisher expansion z + (z^3 + z) / (4 df) (error < 1e-3)."""
    if df < 1:
        return math.nan
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df)


def mean_sd(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN for one value) and count of the finite values."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not len(v):
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def paired_difference(runs: pd.DataFrame, treated: str, control: str, keys: list[str]) -> pd.DataFrame:
    """Per group of `keys`: the mean of (treated - control) over the seeds both have, the half-width of its 95%
    t interval (NaN for one pair), the number of pairs, and whether the interval excludes zero.

    `runs`: one row per run with the columns keys + ["init", "seed", "miou"]."""
    wide = runs.pivot_table(index=[*keys, "seed"], columns="init", values="miou")
    if treated not in wide.columns or control not in wide.columns:
        return pd.DataFrame(columns=[*keys, "diff", "ci95", "pairs", "excludes_zero"])
    d = (wide[treated] - wide[control]).dropna().rename("d").reset_index()
    rows = []
    for group, part in d.groupby(keys, sort=False):
        mean, sd, n = mean_sd(part["d"])
        half = t975(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
        rows.append({**dict(zip(keys, group if isinstance(group, tuple) else (group,))), "diff": mean,
                     "ci95": half, "pairs": n, "excludes_zero": bool(n > 1 and abs(mean) > half)})
    return pd.DataFrame(rows, columns=[*keys, "diff", "ci95", "pairs", "excludes_zero"])
