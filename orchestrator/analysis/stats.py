"""Uncertainty across seeds: bootstrap confidence intervals and the paired Wilcoxon test.

A sweep has a handful of training seeds per (dataset, model, method, class), so every
mean the report gives comes with a percentile bootstrap interval (``scipy.stats.bootstrap``,
seeded, so a report is reproducible) and every paired comparison with the Wilcoxon
signed-rank test (``scipy.stats.wilcoxon``); with two or three seeds neither can say much,
which is why ``n`` is always printed next to them.

Groups of the same size are resampled in one vectorized call: the resample indices depend
only on the seed and the group size, so a group's interval does not depend on which other
groups are computed with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_RESAMPLES = 9999
CONFIDENCE = 0.95
# Resamples held in memory at once, in values (groups x batch x n): about 40 MB.
_MAX_VALUES = 5_000_000


def mean_cis(groups: Sequence[Sequence[float]], seed: int = 0) -> np.ndarray:
    """(mean, low, high) per group; NaN values are dropped first, the interval is NaN for
    fewer than two values. ``seed`` fixes the bootstrap resampling."""
    from scipy import stats

    values = [np.asarray(g, dtype=float) for g in groups]
    values = [v[~np.isnan(v)] for v in values]
    out = np.full((len(values), 3), np.nan)
    by_size: dict[int, list[int]] = {}
    for i, v in enumerate(values):
        if len(v):
            out[i, 0] = v.mean()
        by_size.setdefault(len(v), []).append(i)
    for n, idx in sorted(by_size.items()):
        if n < 2:
            continue
        data = np.stack([values[i] for i in idx])
        same = np.ptp(data, axis=1) == 0  # a constant sample: its interval is the value
        batch = max(1, min(N_RESAMPLES, _MAX_VALUES // (len(idx) * n)))
        res = stats.bootstrap(
            (data,),
            np.mean,
            n_resamples=N_RESAMPLES,
            batch=batch,
            vectorized=True,
            axis=-1,
            confidence_level=CONFIDENCE,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = (
            np.atleast_1d(res.confidence_interval.low),
            np.atleast_1d(res.confidence_interval.high),
        )
        low = np.where(same, data[:, 0], low)
        high = np.where(same, data[:, 0], high)
        out[idx, 1], out[idx, 2] = low, high
    return out


def mean_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of one sample, as ``mean_cis``."""
    mean, low, high = mean_cis([values], seed)[0]
    return float(mean), float(low), float(high)


def wilcoxon(differences: Sequence[float]) -> tuple[float, int]:
    """(two-sided p, n) of the paired Wilcoxon signed-rank test on per-seed differences.

    Zero differences carry no sign and are dropped first (``zero_method="wilcox"``), so
    ``n`` is the number of non-zero ones; p is NaN when fewer than two remain. Exact for
    small samples without ties, the normal approximation otherwise (scipy's ``auto``).
    """
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d) & (d != 0)]
    if len(d) < 2:
        return float("nan"), len(d)
    return float(stats.wilcoxon(d, zero_method="wilcox", method="auto").pvalue), len(d)
