"""Arachne's search: vectorised fitness vs the full network, PSO rules, reproducibility,
positives, bad input. Small real networks (small_cnn on the digits data) and synthetic
heads; no stubs except scripted fitness functions that pin down the early-stop rule.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from early_repair_testing.arachne_reference import reference_scores

from orchestrator.errors import BadInput
from orchestrator.spec import ArachneSpec, DatasetSpec
from trainer_image.data.digits import load as load_digits
from trainer_image.models import small_cnn
from trainer_image.repair.arachne import clamp_velocity, constriction, pso, repair
from trainer_image.repair.base import RepairTask, TargetSplit
from trainer_image.repair.last_layer import SwarmFitness, SwarmScores
from trainer_image.repair.selection import localise, sample_positives

torch.set_num_threads(1)
CPU = torch.device("cpu")


def synthetic(seed: int = 0, n: int = 400, d: int = 32, c: int = 6, noise: int = 90):
    """A random head, ReLU features, labels = predictions with ``noise`` of them changed."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = torch.nn.Linear(d, c)
    feats = torch.relu(torch.randn(n, d, generator=g))
    with torch.no_grad():
        pred = head(feats).argmax(1).numpy()
    y = pred.copy()
    rng = np.random.default_rng(seed)
    flip = rng.choice(n, noise, replace=False)
    y[flip] = (pred[flip] + rng.integers(1, c, noise)) % c
    return head, feats, torch.as_tensor(y), TargetSplit(y=y, pred=pred)


def weakest(split: TargetSplit, classes: int) -> int:
    return int(np.argmax([split.negatives(k).size for k in range(classes)]))


# --- differential test: vectorised fitness == full network per particle -------------------


@pytest.fixture(scope="module")
def digits_cnn():
    splits = load_digits(DatasetSpec(name="digits"), 0.2)
    torch.manual_seed(7)
    model = small_cnn(in_channels=1, num_classes=10, image_size=8).eval()
    x = torch.as_tensor(splits.repair.x)
    y = torch.as_tensor(splits.repair.y)
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
        feats = model.penultimate(x)
    return model, x, y, feats, TargetSplit(y=y.numpy(), pred=pred)


def _differential(digits_cnn, rows, cols, positions, ref_dtype, fit_tol, loss_tol):
    """Vectorised scores vs the reference run at ``ref_dtype``, from features of that dtype.

    In float64 both sides see the same body activations, so any difference is the
    vectorisation's; in float32 the features are what the trainer caches.
    """
    model, x, y, feats, split = digits_cnn
    with torch.no_grad():
        feats = model.to(ref_dtype).penultimate(x.to(ref_dtype))
        model.float()
    cls = weakest(split, 10)
    neg, pos = split.negatives(cls), split.positives()[:120]
    ev = SwarmFitness(
        model.head.weight,
        model.head.bias,
        feats[neg],
        feats[pos],
        y[pos],
        cls,
        rows,
        cols,
        CPU,
        2**30,
    )
    got = ev(positions)
    want = reference_scores(model, x[neg], cls, x[pos], y[pos], rows, cols, positions, ref_dtype)
    preds = ev.predict(positions)
    for p, ref in enumerate(want):
        assert int(got.n_patched[p]) == ref.n_patched
        assert int(got.n_intact[p]) == ref.n_intact
        assert float(got.loss_neg[p]) == pytest.approx(ref.loss_neg, rel=loss_tol, abs=loss_tol)
        assert float(got.loss_pos[p]) == pytest.approx(ref.loss_pos, rel=loss_tol, abs=loss_tol)
        assert abs(float(got.fitness[p]) - ref.fitness) <= fit_tol
        np.testing.assert_array_equal(
            preds[p].numpy(), np.concatenate([ref.pred_neg, ref.pred_pos])
        )
    return got


def _random_particles(model, rows, cols, p: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = model.head.weight.detach().double()
    init = w[torch.as_tensor(rows), torch.as_tensor(cols)]
    # Spreads from the PSO's own (std) up to 20x, so predictions really change.
    scale = float(w.std()) * torch.logspace(0, np.log10(20), p, dtype=torch.float64)[:, None]
    return init + scale * torch.randn(p, len(rows), generator=g, dtype=torch.float64)


def test_vectorised_fitness_equals_full_network_on_localised_weights(digits_cnn) -> None:
    model, _, _, feats, split = digits_cnn
    cls = weakest(split, 10)
    loc = localise(model.head.weight, model.head.bias, feats[split.negatives(cls)], cls, 20)
    positions = _random_particles(model, loc.rows, loc.cols, 24, seed=1)
    got = _differential(digits_cnn, loc.rows, loc.cols, positions, torch.float64, 1e-5, 1e-9)
    # The particles must actually move predictions, or the test proves little.
    assert len(set(got.n_patched.tolist())) > 2
    assert len(set(got.n_intact.tolist())) > 2


def test_vectorised_fitness_equals_full_network_on_many_rows(digits_cnn) -> None:
    # 60 weights spread over every row, several per row: exercises the per-row products.
    model = digits_cnn[0]
    rng = np.random.default_rng(5)
    flat = np.sort(rng.choice(10 * 64, 60, replace=False))
    rows, cols = flat // 64, flat % 64
    assert len(set(rows.tolist())) == 10
    positions = _random_particles(model, rows, cols, 16, seed=2)
    _differential(digits_cnn, rows, cols, positions, torch.float64, 1e-5, 1e-9)


def test_vectorised_fitness_agrees_with_float32_network(digits_cnn) -> None:
    # The model as trained (float32, like the paper's code): same counts, fitness to 1e-5.
    model, _, _, feats, split = digits_cnn
    cls = weakest(split, 10)
    loc = localise(model.head.weight, model.head.bias, feats[split.negatives(cls)], cls, 20)
    positions = _random_particles(model, loc.rows, loc.cols, 12, seed=3).float().double()
    _differential(digits_cnn, loc.rows, loc.cols, positions, torch.float32, 1e-5, 1e-6)


def test_chunked_evaluation_equals_unchunked() -> None:
    head, feats, y, split = synthetic(1)
    cls = weakest(split, 6)
    neg, pos = split.negatives(cls), split.positives()[:150]
    loc = localise(head.weight, head.bias, feats[neg], cls, 20)
    args = (head.weight, head.bias, feats[neg], feats[pos], y[pos], cls, loc.rows, loc.cols, CPU)
    whole = SwarmFitness(*args, 2**30)
    tiny = SwarmFitness(*args, 3 * whole.particle_bytes + 1)
    assert whole.chunk >= 37 and tiny.chunk == 3
    positions = whole.initial + 0.5 * torch.randn(37, len(loc.rows), dtype=torch.float64)
    a, b = whole(positions), tiny(positions)
    for x, z in zip(a.parts(), b.parts(), strict=True):
        torch.testing.assert_close(x, z, rtol=1e-12, atol=1e-12)
    assert torch.equal(whole.predict(positions), tiny.predict(positions))


# --- PSO rules --------------------------------------------------------------------------


def test_constriction_coefficient() -> None:
    assert constriction(4.1) == pytest.approx(0.729843788, rel=1e-8)


def test_clamp_velocity_v1_and_textbook() -> None:
    wb = 2.0
    v = torch.tensor([0.0, 0.1, -0.1, 0.5, -3.0, 50.0, -50.0], dtype=torch.float64)
    v1 = clamp_velocity(v, wb, "v1")
    # |v| into [0.4, 10], sign kept; exactly 0 goes negative like the released code.
    assert v1.tolist() == pytest.approx([-0.4, 0.4, -0.4, 0.5, -3.0, 10.0, -10.0])
    tb = clamp_velocity(v, wb, "textbook")
    assert tb.tolist() == pytest.approx([0.0, 0.1, -0.1, 0.5, -3.0, 10.0, -10.0])


@pytest.mark.parametrize("variant", ["v1", "textbook"])
def test_velocity_bounds_respected_during_search(variant: str) -> None:
    head, feats, y, split = synthetic(2)
    cfg = ArachneSpec(variant=variant, particles=40, iterations=30, patience=30)
    res = repair(RepairTask(head, feats, y, split, weakest(split, 6), 11), cfg)
    w = head.weight.detach().double()
    wb = float(w.max() - w.min())
    steps = res.history[1:]
    assert len(steps) == res.iterations == 30
    assert all(h["max_speed"] <= 5 * wb * (1 + 1e-12) for h in steps)
    if variant == "v1":
        assert all(h["min_speed"] >= wb / 5 * (1 - 1e-12) for h in steps)
    else:
        # No minimum speed: particles converging on the best slow below wb/5.
        assert any(h["min_speed"] < wb / 5 for h in steps)


class Scripted:
    """A fitness whose global best rises at chosen iterations (call 0 = initial swarm)."""

    def __init__(self, gains: set[int]) -> None:
        self.gains, self.calls, self.level = gains, 0, 0.0

    def __call__(self, x: torch.Tensor) -> SwarmScores:
        if self.calls in self.gains:
            self.level += 1.0
        self.calls += 1
        fit = torch.full((len(x),), self.level, dtype=torch.float64)
        z = torch.zeros(len(x), dtype=torch.float64)
        return SwarmScores(fit, z, z, z, z)


def _run_pso(fitness, **cfg) -> tuple[int, list[dict[str, float]]]:
    spec = ArachneSpec(particles=5, **cfg)
    gen = torch.Generator().manual_seed(0)
    s = pso(fitness, torch.zeros(3, dtype=torch.float64), 1.0, 1.0, spec, gen, CPU)
    return s.iterations, s.history


@pytest.mark.parametrize(
    ("gains", "patience", "iterations", "expected"),
    [
        (set(), 10, 50, 10),  # never beats the initial swarm: exactly `patience` iterations
        (set(), 3, 50, 3),
        ({1, 2, 3, 4, 5}, 10, 50, 15),  # last gain at iteration 5, then 10 stagnant
        ({3, 6}, 4, 50, 10),  # stall counter resets at each gain
        ({4, 9}, 4, 50, 8),  # 4 stagnant after the gain at 4: the gain at 9 comes too late
        ({1, 2, 3, 4, 5}, 10, 8, 8),  # the iteration cap comes first
        (set(range(1, 60)), 10, 50, 50),  # always improving: runs to the cap
    ],
)
def test_early_stop_rule(gains: set[int], patience: int, iterations: int, expected: int) -> None:
    its, hist = _run_pso(Scripted(gains), patience=patience, iterations=iterations)
    assert its == expected
    assert [h["iteration"] for h in hist] == list(range(expected + 1))
    assert [h["improved"] for h in hist[1:]] == [int(i in gains) for i in range(1, expected + 1)]
    if expected < iterations:
        assert hist[-1]["stall"] == patience


@pytest.mark.parametrize("variant", ["v1", "textbook"])
def test_pso_moves_the_swarm_towards_the_optimum(variant: str) -> None:
    # A real optimisation check of the update rule: maximise -|x - 3|^2 in 4 dimensions
    # from a swarm around 0. Both r1 and r2 ~ U(0, phi) (paper and released code) is twice
    # Clerc's total acceleration, so the swarm keeps oscillating: expect the best to get
    # close to the optimum, not to converge exactly.
    target = torch.full((4,), 3.0, dtype=torch.float64)

    def f(x: torch.Tensor) -> SwarmScores:
        fit = -((x - target) ** 2).sum(1)
        z = torch.zeros(len(x), dtype=torch.float64)
        return SwarmScores(fit, z, z, z, z)

    spec = ArachneSpec(particles=30, iterations=200, patience=50, variant=variant)
    gen = torch.Generator().manual_seed(1)
    s = pso(f, torch.zeros(4, dtype=torch.float64), 1.0, 1.0, spec, gen, CPU)
    hist = [h["best_fitness"] for h in s.history]
    assert hist == sorted(hist)  # the global best never gets worse
    assert hist[0] < -5 and hist[-1] > -1.0
    assert float(s.scores.fitness[0]) == hist[-1] == float(f(s.best[None]).fitness[0])


def test_same_seed_same_patch_and_different_seeds_differ() -> None:
    head, feats, y, split = synthetic(3)
    cls = weakest(split, 6)
    cfg = ArachneSpec(particles=30, iterations=20)
    a = repair(RepairTask(head, feats, y, split, cls, 123), cfg)
    b = repair(RepairTask(head, feats, y, split, cls, 123), cfg)
    c = repair(RepairTask(head, feats, y, split, cls, 124), cfg)
    assert a.patch == b.patch and a.history == b.history and a.fitness == b.fitness
    # Localisation is deterministic (same weights); the searched values are not the same.
    assert [(p.row, p.col) for p in a.patch] == [(p.row, p.col) for p in c.patch]
    assert [p.new for p in a.patch] != [p.new for p in c.patch]
    assert a.history != c.history


def test_chunked_repair_gives_the_same_patch() -> None:
    head, feats, y, split = synthetic(4)
    cls = weakest(split, 6)
    big = repair(
        RepairTask(head, feats, y, split, cls, 5), ArachneSpec(particles=30, iterations=15)
    )
    small = ArachneSpec(particles=30, iterations=15, max_batch_bytes=50_000)
    res = repair(RepairTask(head, feats, y, split, cls, 5), small)
    assert [p.new for p in res.patch] == pytest.approx([p.new for p in big.patch], abs=1e-6)
    assert res.n_patched == big.n_patched and res.n_intact == big.n_intact


def test_result_figures_are_consistent() -> None:
    head, feats, y, split = synthetic(5)
    cls = weakest(split, 6)
    res = repair(
        RepairTask(head, feats, y, split, cls, 2), ArachneSpec(particles=30, iterations=20)
    )
    assert res.status == "repaired"
    assert res.n_neg == split.negatives(cls).size
    assert res.n_pos == 200
    assert res.rr == pytest.approx(100 * res.n_patched / res.n_neg)
    assert 0 <= res.n_intact <= res.n_pos
    assert len(res.history) == res.iterations + 1
    assert res.fitness == pytest.approx(res.history[-1]["best_fitness"], rel=1e-4)
    old = head.weight.detach()
    assert all(p.old == float(old[p.row, p.col]) for p in res.patch)
    assert res.seconds > 0


# --- positives, nothing to repair, bad input --------------------------------------------


def test_positive_sampling_without_replacement_and_all_when_fewer() -> None:
    feats = torch.arange(40.0).reshape(20, 2)
    positives = np.arange(3, 20)
    gen = torch.Generator().manual_seed(0)
    some = sample_positives(positives, feats, 10, "uniform", gen)
    assert len(some) == len(set(some.tolist())) == 10 and set(some) <= set(positives)
    assert sample_positives(positives, feats, 50, "uniform", gen).tolist() == positives.tolist()
    again = sample_positives(positives, feats, 10, "uniform", torch.Generator().manual_seed(0))
    assert again.tolist() == some.tolist()


def test_with_replacement_dedup_removes_identical_feature_rows() -> None:
    # 30 positives but only 5 distinct feature rows: dedup leaves at most 5.
    feats = torch.tensor([[float(i % 5), 1.0] for i in range(30)])
    positives = np.arange(30)
    gen = torch.Generator().manual_seed(1)
    kept = sample_positives(positives, feats, 20, "with-replacement-dedup", gen)
    assert 1 <= len(kept) <= 5
    rows = {tuple(r) for r in feats[torch.as_tensor(kept)].tolist()}
    assert len(rows) == len(kept)
    # Plain sampling keeps duplicates of content: 20 distinct indices.
    assert len(sample_positives(positives, feats, 20, "uniform", gen)) == 20


def test_with_replacement_dedup_in_a_repair_uses_fewer_positives() -> None:
    head, feats, y, split = synthetic(6, n=300)
    cls = weakest(split, 6)
    n_positives = len(split.positives())
    cfg = ArachneSpec(
        particles=10, iterations=3, positives="with-replacement-dedup", n_positives=n_positives
    )
    res = repair(RepairTask(head, feats, y, split, cls, 0), cfg)
    # n draws with replacement from n items: about 63% distinct.
    assert res.n_pos < n_positives


def test_nothing_to_repair() -> None:
    head, feats, y, _ = synthetic(7, noise=0)
    split = TargetSplit(y=y.numpy(), pred=y.numpy())
    res = repair(RepairTask(head, feats, y, split, 0, 0), ArachneSpec())
    assert res.status == "nothing_to_repair"
    assert res.patch == [] and res.n_neg == 0 and res.rr is None and res.br == 0.0
    assert res.iterations == 0 and res.history == []


def test_bad_inputs_raise_one_line_bad_input() -> None:
    head, feats, y, split = synthetic(8)
    cfg = ArachneSpec()
    cases = [
        (torch.nn.Conv2d(3, 6, 1), feats, y, split, 0, "not an nn.Linear"),
        (torch.nn.Sequential(head), feats, y, split, 0, "not an nn.Linear"),
        (torch.nn.Linear(32, 4), feats, y, split, 0, "4 outputs"),
        (torch.nn.Linear(31, 6), feats, y, split, 0, "expects 31"),
        (head, feats[:, :, None], y, split, 0, "2-D tensor"),
        (head, feats, y[:-1], split, 0, "labels of shape"),
        (head, feats, y, split, 6, "target class 6"),
        (head, feats, y, TargetSplit(y=split.y[::-1].copy(), pred=split.pred), 0, "split"),
    ]
    for h, f, labels, s, cls, words in cases:
        with pytest.raises(BadInput, match=words) as e:
            repair(RepairTask(h, f, labels, s, cls, 0), cfg)
        assert "\n" not in str(e.value)
    with pytest.raises(BadInput, match="device"):
        repair(RepairTask(head, feats, y, split, 0, 0, "tpu"), cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_search_matches_cpu() -> None:
    head, feats, y, split = synthetic(9)
    cls = weakest(split, 6)
    cfg = ArachneSpec(particles=50, iterations=20)
    cpu = repair(RepairTask(head, feats, y, split, cls, 1, "cpu"), cfg)
    gpu = repair(RepairTask(head.cuda(), feats.cuda(), y, split, cls, 1, "cuda"), cfg)
    assert [(p.row, p.col) for p in cpu.patch] == [(p.row, p.col) for p in gpu.patch]
    assert [p.new for p in gpu.patch] == pytest.approx([p.new for p in cpu.patch], abs=1e-5)
    assert gpu.n_patched == cpu.n_patched and gpu.n_intact == cpu.n_intact
