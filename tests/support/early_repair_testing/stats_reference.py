"""Independent references for the headline's statistics: the exact bootstrap distribution
of the mean (every one of the n^n resamples) and the exact null distribution of the
Wilcoxon signed-rank statistic (every sign pattern). Slow, but nothing is estimated."""

from __future__ import annotations

import itertools

import numpy as np


def exact_bootstrap_quantile(sample: list[float], p: float) -> float:
    """The p-quantile of the mean over all n^n equally likely resamples."""
    means = np.sort([np.mean(c) for c in itertools.product(sample, repeat=len(sample))])
    return float(means[min(int(np.floor(p * len(means))), len(means) - 1)])


def exact_wilcoxon_p(d: list[float]) -> float:
    """Two-sided exact p of the signed-rank test: P(|W+ - n(n+1)/4| >= observed) under H0."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1  # no ties in |d| here
    w = ranks[np.asarray(d) > 0].sum()
    mid = len(d) * (len(d) + 1) / 4
    sums = [
        sum(r for r, s in zip(ranks, signs, strict=True) if s)
        for signs in itertools.product([0, 1], repeat=len(d))
    ]
    return sum(abs(s - mid) >= abs(w - mid) - 1e-9 for s in sums) / len(sums)
