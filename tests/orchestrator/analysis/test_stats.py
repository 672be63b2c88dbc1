"""Known answers for the headline's statistics, from independent references: the exact
bootstrap distribution of the mean (every one of the n^n resamples enumerated) and the
exact null distribution of the Wilcoxon signed-rank statistic (every sign pattern)."""

from __future__ import annotations

import numpy as np
import pytest
from early_repair_testing.stats_reference import exact_bootstrap_quantile, exact_wilcoxon_p

from orchestrator.analysis import stats


@pytest.mark.parametrize(
    "sample",
    [
        [0.05, -0.02, 0.03, 0.01],
        [0.0, 0.01, 0.02, 0.04, 0.08],
        [-0.3, 0.1, 0.2],
        [1.0, 2.0, 4.0, 8.0, 16.0],
    ],
)
def test_bootstrap_ci_matches_the_exact_bootstrap_distribution(sample: list[float]) -> None:
    mean, low, high = stats.mean_ci(sample, seed=0)
    assert mean == pytest.approx(np.mean(sample), abs=1e-15)
    # Monte Carlo error of a quantile from 9999 resamples is ~0.2 percentiles; allow 1.
    assert exact_bootstrap_quantile(sample, 0.015) <= low <= exact_bootstrap_quantile(sample, 0.035)
    assert (
        exact_bootstrap_quantile(sample, 0.965) <= high <= exact_bootstrap_quantile(sample, 0.985)
    )


def test_bootstrap_is_seeded_and_independent_of_the_other_groups() -> None:
    a = [0.05, -0.02, 0.03, 0.01]
    alone = stats.mean_cis([a], seed=3)[0]
    together = stats.mean_cis([[9.0, 1.0, 2.0, 5.0], a, [1.0, 2.0], [4.0]], seed=3)
    np.testing.assert_array_equal(together[1], alone)  # same n, same resamples, same CI
    np.testing.assert_array_equal(stats.mean_cis([a], seed=3)[0], alone)
    wide = np.random.default_rng(0).normal(size=12).tolist()  # many distinct resample means
    assert not np.array_equal(stats.mean_ci(wide, seed=4), stats.mean_ci(wide, seed=3))


def test_small_and_constant_samples() -> None:
    out = stats.mean_cis([[0.5], [], [0.2, 0.2, 0.2], [np.nan, 0.1, 0.3]], seed=0)
    assert out[0, 0] == 0.5 and np.isnan(out[0, 1:]).all()  # n = 1: no interval
    assert np.isnan(out[1]).all()
    assert out[2, 1] == out[2, 2] == 0.2  # no spread, no uncertainty
    assert out[2, 0] == pytest.approx(0.2)
    assert out[3, 0] == pytest.approx(0.2) and 0.1 <= out[3, 1] <= out[3, 2] <= 0.3


@pytest.mark.parametrize(
    "d",
    [
        [0.05, -0.02, 0.03, 0.01],  # W+ = 8 of 10: p = 2 * 3/16 = 0.375 by hand
        [0.1, 0.2, 0.3],
        [-0.4, 0.1, -0.25, 0.3, 0.05, -0.6],
        [0.11, 0.22, 0.33, 0.44, 0.55, 0.66, 0.77, -0.01],
    ],
)
def test_wilcoxon_matches_the_exact_null_distribution(d: list[float]) -> None:
    p, n = stats.wilcoxon(d)
    assert n == len(d)
    assert p == pytest.approx(exact_wilcoxon_p(d), abs=1e-12)


def test_wilcoxon_by_hand_and_zero_differences() -> None:
    assert stats.wilcoxon([0.05, -0.02, 0.03, 0.01]) == (pytest.approx(0.375), 4)
    # zeros carry no sign: dropped, and n says how many differences were tested
    p, n = stats.wilcoxon([0.0, 0.05, -0.02, 0.0, 0.03, 0.01, np.nan])
    assert (p, n) == (pytest.approx(0.375), 4)
    assert np.isnan(stats.wilcoxon([0.0, 0.0, 0.2])[0]) and stats.wilcoxon([0.2])[1] == 1
