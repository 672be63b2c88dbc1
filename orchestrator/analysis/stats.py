"""Uncertainty across seeds: bootstrap confidence intervals and the paired Wilcoxon test.

A sweep has a handful of training seeds per (dataset, model, method, class), so every
mean the report gives comes with a percentile bootstrap interval (``scipy.stats.bootstrap``,
seeded, so a report is reproducible) and every paired comparison with the Wilcoxon
signed-rank test (``scipy.stats.wilcoxon``); with two or three seeds neither can say much,
which is why ``n`` is always printed next to them.

Groups of the same size are resampled in one vectorized call: the resample indices depend
only on the seed, the group size and the number of resamples, so a group's interval does
not depend on which other groups are computed with it. The number of resamples is 9999
(scipy's default) unless a call holds so many values that this would take seconds - a
sweep of 100,000 records has 30,000 (seed, class, alpha) units - then fewer, never under
999 (``resamples``); the headline table says how many were used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_RESAMPLES = 9999
# Below this many seeds a percentile bootstrap over seeds is little more than their range:
# neither tables nor figures show an interval over seeds, and no sentence claims an effect
# "across seeds".
MIN_SEEDS_FOR_CI = 5
MIN_RESAMPLES = 999
CONFIDENCE = 0.95
# Resampled values per call (resamples x values) before fewer resamples are drawn.
RESAMPLE_BUDGET = 30_000_000
# Resamples held in memory at once, in values (groups x batch x n): 2 MB. Larger batches
# save nothing: each is a fresh allocation whose page faults cost more than the per-batch
# overhead (40 MB batches took 2-10x as long here), and the intervals do not depend on the
# batch (the resample indices are drawn in the same order either way).
_MAX_VALUES = 250_000


def resamples(groups: Sequence[Sequence[float]]) -> int:
    """Bootstrap resamples ``mean_cis`` draws for these groups (see above)."""
    n_values = sum(n for g in groups if (n := int(np.count_nonzero(~np.isnan(g)))) > 1)
    if n_values <= 0:
        return N_RESAMPLES
    return int(min(N_RESAMPLES, max(MIN_RESAMPLES, RESAMPLE_BUDGET // n_values)))


def mean_cis(groups: Sequence[Sequence[float]], seed: int = 0) -> np.ndarray:
    """(mean, low, high) per group; NaN values are dropped first, the interval is NaN for
    fewer than two values. ``seed`` fixes the bootstrap resampling."""
    from scipy import stats

    values = [np.asarray(g, dtype=float) for g in groups]
    values = [v[~np.isnan(v)] for v in values]
    n_resamples = resamples(values)
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
        batch = max(1, min(n_resamples, _MAX_VALUES // (len(idx) * n)))
        res = stats.bootstrap(
            (data,),
            np.mean,
            n_resamples=n_resamples,
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
    ``n`` is the number of non-zero ones; p is NaN when fewer than two remain. scipy's
    ``auto`` method: exact without ties up to 50, a permutation test with ties up to 13,
    the normal approximation otherwise.
    """
    return wilcoxons([differences])[0]


def wilcoxons(groups: Sequence[Sequence[float]]) -> list[tuple[float, int]]:
    """``wilcoxon`` of many groups; groups that scipy's ``auto`` would treat alike (same
    size, same method) are tested in one vectorized call, each as if alone."""
    from scipy import stats

    diffs = [np.asarray(g, dtype=float) for g in groups]
    diffs = [d[~np.isnan(d) & (d != 0)] for d in diffs]
    out: list[tuple[float, int]] = [(float("nan"), len(d)) for d in diffs]
    batches: dict[tuple[str, int], list[int]] = {}
    for i, d in enumerate(diffs):
        n = len(d)
        if n < 2:
            continue
        ties = np.unique(np.abs(d)).size < n
        if n > 50 or (ties and n > 13):
            method = "asymptotic"
        elif ties:
            method = "auto"  # a permutation test: one call per group
        else:
            method = "exact"
        batches.setdefault((method, n if method != "auto" else -i - 1), []).append(i)
    for (method, _), idx in batches.items():
        data = np.stack([diffs[i] for i in idx])
        p = np.atleast_1d(stats.wilcoxon(data, zero_method="wilcox", method=method, axis=-1).pvalue)
        for i, value in zip(idx, p, strict=True):
            out[i] = (float(value), len(diffs[i]))
    return out
