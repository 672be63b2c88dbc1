"""Arachne as the released code ran it: the label-balanced positives, the position-first
PSO step and the late stagnation check, each against an answer computed here from the rule
as docs/science.md states it (not from the implementation)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from orchestrator.spec import RepairSpec
from trainer_image.repair.arachne import clamp_velocity, constriction, pso, repair
from trainer_image.repair.base import RepairTask, TargetSplit
from trainer_image.repair.last_layer import SwarmScores
from trainer_image.repair.selection import balanced_amounts, sample_positives

torch.set_num_threads(1)
CPU = torch.device("cpu")
N = 200


# --- label-balanced positives ------------------------------------------------------------


def expected_counts(counts: dict[int, int], n: int) -> tuple[dict[int, int], set[int], int]:
    """Per label: min(count, requested) before the shortfall; uncapped labels; shortfall.

    Exact arithmetic: requested = floor(n / L x 2/3) + floor(n x count / total x 1/3),
    capped at 2 x count (a label over the cap is saturated and takes no shortfall).
    """
    total, labels = sum(counts.values()), len(counts)
    requested, uncapped = {}, set()
    for label, count in counts.items():
        want = math.floor(Fraction(n, labels) * Fraction(2, 3))
        want += math.floor(Fraction(n * count, total) * Fraction(1, 3))
        if want > 2 * count:
            want = 2 * count
        else:
            uncapped.add(label)
        requested[label] = want
    shortfall = n - sum(requested.values())
    return {k: min(v, counts[k]) for k, v in requested.items()}, uncapped, shortfall


def labelled(counts: dict[int, int], seed: int = 0) -> np.ndarray:
    labels = np.repeat(list(counts), list(counts.values())).astype(np.int64)
    return np.random.default_rng(seed).permutation(labels)


DISTRIBUTIONS = {
    "imbalanced-4": {0: 500, 1: 30, 2: 5, 3: 100},
    "rsna-like": {0: 900, 1: 300},
    "gtsrb-like": {c: 20 + (37 * c) % 180 for c in range(43)},
    "all-saturated": {0: 3, 1: 4, 2: 9},
    "one-label": {0: 50},
}


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_balanced_positives_per_label_counts_follow_the_formula(name: str) -> None:
    counts = DISTRIBUTIONS[name]
    labels = labelled(counts)
    positives = np.arange(len(labels))
    feats = torch.zeros(len(labels), 2)
    base, uncapped, shortfall = expected_counts(counts, N)
    lucky_seen = set()
    for seed in range(12):
        gen = torch.Generator().manual_seed(seed)
        got = sample_positives(positives, feats, N, "balanced", gen, labels=labels)
        assert len(np.unique(got)) == len(got) and np.all(np.diff(got) > 0)  # deduplicated
        per_label = {c: int((labels[got] == c).sum()) for c in counts}
        differ = [c for c in counts if per_label[c] != base[c]]
        # Every label gets its formula's count, except the one uncapped label that takes
        # the shortfall (uncapped: it may then exceed twice its count, as released).
        assert len(differ) <= 1, (per_label, base)
        for c in differ:
            assert c in uncapped and per_label[c] == min(counts[c], base[c] + shortfall)
            lucky_seen.add(c)
        again = sample_positives(
            positives, feats, N, "balanced", torch.Generator().manual_seed(seed), labels=labels
        )
        assert again.tolist() == got.tolist()
    if name == "imbalanced-4":
        # 33 + (52, 3, 0, 10); label 2 is capped at 10 (> 2 x 5); shortfall 26.
        assert base == {0: 85, 1: 30, 2: 5, 3: 43} and uncapped == {0, 1, 3} and shortfall == 26
        assert lucky_seen <= {0, 3} and lucky_seen  # label 1 is used whole either way
    if name == "all-saturated":
        assert not uncapped and sum(base.values()) == len(labels)  # every positive, once


def test_balanced_amounts_before_deduplication() -> None:
    # Requested (not yet capped by the label's size): 33 + 52, 33 + 3, 33 + 0 -> 2 x 5, 33 + 10.
    amounts, uncapped = balanced_amounts({0: 500, 1: 30, 2: 5, 3: 100}, N)
    assert amounts == {0: 85, 1: 36, 2: 10, 3: 43} and uncapped == [0, 1, 3]


def test_balanced_positives_only_draw_from_positives_of_the_repair_set() -> None:
    labels = labelled({0: 120, 1: 80, 2: 40}, seed=3)
    positives = np.flatnonzero(np.arange(len(labels)) % 3 != 0)  # a third are negatives
    feats = torch.zeros(len(labels), 2)
    got = sample_positives(
        positives, feats, 60, "balanced", torch.Generator().manual_seed(0), labels=labels
    )
    assert set(got) <= set(positives)
    base, _, shortfall = expected_counts(
        {c: int((labels[positives] == c).sum()) for c in (0, 1, 2)}, 60
    )
    assert len(got) in {sum(base.values()) + d for d in range(shortfall + 1)}


def test_balanced_positives_in_a_repair() -> None:
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 3)
    feats = torch.relu(torch.randn(600, 8, generator=g))
    with torch.no_grad():
        pred = head(feats).argmax(1).numpy()
    y = pred.copy()
    y[:60] = (pred[:60] + 1) % 3
    split = TargetSplit(y=y, pred=pred)
    cls = int(np.argmax([split.negatives(c).size for c in range(3)]))
    cfg = RepairSpec(particles=8, iterations=3, positives="balanced")
    res = repair(RepairTask(head, feats, torch.as_tensor(y), split, cls, 4), cfg)
    counts = np.bincount(y[split.positives()], minlength=3)
    base, _, shortfall = expected_counts({c: int(k) for c, k in enumerate(counts)}, N)
    assert sum(base.values()) <= res.n_pos <= sum(base.values()) + shortfall


# --- PSO update order ----------------------------------------------------------------------

TARGET = torch.tensor([0.7, -0.4], dtype=torch.float64)


class Recording:
    """A real fitness (closeness to TARGET) that keeps every swarm it was asked to score."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> SwarmScores:
        self.calls.append(x.clone())
        fit = -((x - TARGET) ** 2).sum(1)
        z = torch.zeros(len(x), dtype=torch.float64)
        return SwarmScores(fit, z, z, z, z)


def hand_trajectory(order: str, particles: int, steps: int, std: float, wb: float):
    """The swarms scored, step by step, from the update equations of docs/science.md and
    the same draws (initial positions, then r1 and r2 per particle and step)."""
    gen = torch.Generator().manual_seed(0)
    phi, chi = 4.1, constriction(4.1)
    x = std * torch.randn(particles, 2, generator=gen, dtype=torch.float64)
    v = torch.zeros_like(x)
    score = -((x - TARGET) ** 2).sum(1)
    p, p_score = x.clone(), score.clone()
    g = p[int(torch.argmax(p_score))].clone()
    scored = [x.clone()]
    for _ in range(steps):
        r1 = phi * torch.rand((particles, 1), generator=gen, dtype=torch.float64)
        r2 = phi * torch.rand((particles, 1), generator=gen, dtype=torch.float64)
        if order == "position-first":
            x = x + v  # move with the old velocity ...
            v = clamp_velocity(chi * (v + r1 * (p - x) + r2 * (g - x)), wb, "v1")  # ... then steer
        else:
            v = clamp_velocity(chi * (v + r1 * (p - x) + r2 * (g - x)), wb, "v1")
            x = x + v
        scored.append(x.clone())
        score = -((x - TARGET) ** 2).sum(1)
        better = score > p_score
        p = torch.where(better[:, None], x, p)
        p_score = torch.where(better, score, p_score)
        g = p[int(torch.argmax(p_score))].clone()
    return scored


@pytest.mark.parametrize("order", ["velocity-first", "position-first"])
def test_pso_update_order_on_a_small_swarm(order: str) -> None:
    steps = 4
    cfg = RepairSpec(particles=3, iterations=steps, patience=50, update_order=order)
    rec = Recording()
    pso(
        rec,
        torch.zeros(2, dtype=torch.float64),
        0.5,
        0.2,
        cfg,
        torch.Generator().manual_seed(0),
        CPU,
    )
    want = hand_trajectory(order, 3, steps, 0.5, 0.2)
    other = hand_trajectory(
        "velocity-first" if order == "position-first" else "position-first", 3, steps, 0.5, 0.2
    )
    assert len(rec.calls) == steps + 1
    for got, expected, swapped in zip(rec.calls[1:], want[1:], other[1:], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        assert not torch.allclose(got, swapped)  # the two orders really differ
    # position-first re-scores the initial swarm first (its velocity is still 0).
    assert torch.equal(rec.calls[1], rec.calls[0]) == (order == "position-first")


# --- stagnation start ----------------------------------------------------------------------


class Scripted:
    """The global best rises by 1 at the chosen iterations (call 0 = the initial swarm)."""

    def __init__(self, gains: set[int]) -> None:
        self.gains, self.calls, self.level = gains, 0, 0.0

    def __call__(self, x: torch.Tensor) -> SwarmScores:
        self.level += float(self.calls in self.gains)
        self.calls += 1
        z = torch.zeros(len(x), dtype=torch.float64)
        return SwarmScores(torch.full((len(x),), self.level, dtype=torch.float64), z, z, z, z)


def released_stop(gains: set[int], window: int, iterations: int) -> int:
    """The released rule: a history of the best per iteration; from its 12th entry (0-based
    t > window) stop when the best of the last ``window`` is not above the one before."""
    history = []
    level = 0
    for t in range(iterations):
        level += (t + 1) in gains
        history.append(level)
        if t > window and max(history[-window:]) <= history[-window - 1]:
            return t + 1
    return iterations


@pytest.mark.parametrize("seed", range(8))
def test_stagnation_start_12_stops_like_the_released_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gains = {int(i) for i in rng.choice(np.arange(1, 40), size=int(rng.integers(0, 6)))}
    for extra in ([], [3], [11], [13]):
        g = gains | set(extra)
        cfg = RepairSpec(particles=2, iterations=50, patience=10, stagnation_start=12)
        gen = torch.Generator().manual_seed(0)
        s = pso(Scripted(g), torch.zeros(1, dtype=torch.float64), 1.0, 1.0, cfg, gen, CPU)
        assert s.iterations == released_stop(g, 10, 50), sorted(g)


def test_stagnation_is_checked_from_the_first_iteration_by_default() -> None:
    for start, expected in ((1, 10), (12, 12), (25, 25)):
        cfg = RepairSpec(particles=2, iterations=50, patience=10, stagnation_start=start)
        gen = torch.Generator().manual_seed(0)
        s = pso(Scripted(set()), torch.zeros(1, dtype=torch.float64), 1.0, 1.0, cfg, gen, CPU)
        assert s.iterations == expected
