"""The paired, selection-aware test of early wins, against known answers and synthetic trees
whose truth is known: the exact sign-flip p against brute enumeration, Holm on hand-worked
cases, the stratified bootstrap against a plain resampling loop, the seeds a paired test
needs against a direct power computation; a null tree (no win beyond noise) and an effect
tree (every win beyond noise)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from early_repair_testing.prediction_tree import (
    PredictedRun,
    coin_flips,
    fixed,
    write_predicted_tree,
)
from scipy import stats

from orchestrator.analysis import aggregate as ag
from orchestrator.analysis import headline, noise
from orchestrator.analysis.problems import INCONSISTENT
from orchestrator.results import layout
from orchestrator.store.file import FileStore


def brute_p(mc: int, mo: int, xc: int, xo: int, a: float, b: float) -> float:
    """P(a X + b Y >= observed) over all 2**(mc + mo) equally likely sign vectors."""
    t = a * xc + b * xo
    hits = 0
    for signs in itertools.product((-1, 1), repeat=mc + mo):
        s = np.array(signs, dtype=float)
        hits += a * s[:mc].sum() + b * s[mc:].sum() >= t - 1e-12
    return hits / 2 ** (mc + mo)


def test_signflip_p_equals_brute_enumeration() -> None:
    rng = np.random.default_rng(7)
    cases = []
    for _ in range(150):
        mc, mo = int(rng.integers(0, 7)), int(rng.integers(0, 8))
        alpha = float(rng.choice([0.0, 0.2, 0.5, 0.8, 1.0]))
        n, n_c = int(rng.integers(30, 90)), int(rng.integers(3, 20))
        b = (1 - alpha) / n
        a = b + alpha / n_c
        xc = int(rng.choice([-1, 1], mc).sum()) if mc else 0
        xo = int(rng.choice([-1, 1], mo).sum()) if mo else 0
        cases.append((mc, mo, xc, xo, a, b))
    got = noise.signflip_p(*(np.array(col) for col in zip(*cases, strict=True)))
    want = [brute_p(*c) for c in cases]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_signflip_p_by_hand() -> None:
    # No discordant example: the two models are the same on the test set.
    assert noise.signflip_p([0], [0], [0], [0], [0.1], [0.01])[0] == 1.0
    # Five class-c examples, all for the earlier model: 1 / 2**5.
    assert noise.signflip_p([5], [0], [5], [0], [0.1], [0.01])[0] == pytest.approx(1 / 32)
    # One class-c example for it (weight 3) against two others for the reference (weight 1
    # each): the difference is +1; of the 8 sign vectors, those >= +1 are (+,+,+), (+,+,-),
    # (+,-,+), (+,-,-) and (-,+,+) (-3 + 2 = -1 < 1: no) - so 4 of 8.
    assert noise.signflip_p([1], [2], [1], [-2], [3.0], [1.0])[0] == pytest.approx(4 / 8)
    # alpha = 1: only class c counts (b = 0), 3 of 3 for the earlier model.
    assert noise.signflip_p([3], [40], [3], [-40], [0.2], [0.0])[0] == pytest.approx(1 / 8)


def test_holm_on_hand_worked_cases() -> None:
    # Sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(1 x 0.04, 0.06); another group apart.
    p = np.array([0.01, 0.04, 0.03, 0.5, 0.001, 0.2])
    group = np.array([0, 0, 0, 1, 1, 2])
    np.testing.assert_allclose(noise.holm(p, group), [0.03, 0.06, 0.06, 0.5, 0.002, 0.2])
    # Capped at 1 and monotone: 0.4 x 3 = 1.2 -> 1; 0.45 x 2 = 0.9 -> 1 (step-down max).
    np.testing.assert_allclose(noise.holm(np.array([0.4, 0.45, 0.9]), np.zeros(3, int)), [1, 1, 1])


def test_holm_is_the_step_down_procedure_for_groups_of_any_size() -> None:
    """Against Holm written out group by group: many small groups, and one group so much
    larger than the others that the adjustment takes its other path."""

    def plain(p: np.ndarray) -> np.ndarray:
        order = np.argsort(p, kind="stable")
        out, top = np.empty(len(p)), 0.0
        for k, i in enumerate(order):
            top = max(top, min(1.0, (len(p) - k) * p[i]))
            out[i] = top
        return out

    rng = np.random.default_rng(8)
    for sizes in ([3, 1, 5, 2, 7] * 20, [400, *([1] * 60)]):
        group = np.repeat(np.arange(len(sizes)), sizes)
        rng.shuffle(group)
        p = np.round(rng.random(len(group)) ** 3, 3)  # ties too
        want = np.empty(len(p))
        for g in np.unique(group):
            want[group == g] = plain(p[group == g])
        np.testing.assert_array_equal(noise.holm(p, group), want)


def plain_bootstrap(d: np.ndarray, labels: np.ndarray, w: np.ndarray, n_boot: int, seed: int):
    """The stratified paired bootstrap written out: resample each class's examples with
    replacement and sum their weighted differences."""
    rng = np.random.default_rng(seed)
    out = np.zeros(n_boot)
    groups = [np.flatnonzero(labels == k) for k in range(len(w))]
    for b in range(n_boot):
        for k, idx in enumerate(groups):
            out[b] += w[k] * d[rng.choice(idx, size=len(idx))].sum()
    return out


def test_stratified_bootstrap_matches_a_plain_resampling_loop() -> None:
    labels = np.repeat([0, 1, 2], [6, 9, 5])
    # per example: +1 earlier right / reference wrong, -1 the other way, 0 agree
    d = np.array([*(1, 1, -1, 0, 0, 0), *(1, -1, -1, 0, 0, 0, 0, 0, 0), *(1, 0, 0, 0, 0)])
    plus = np.array([(d[labels == k] == 1).sum() for k in range(3)])
    minus = np.array([(d[labels == k] == -1).sum() for k in range(3)])
    sizes = np.bincount(labels)
    alpha, c = 0.5, 1
    w = np.full(3, (1 - alpha) / len(labels))
    w[c] += alpha / sizes[c]
    n_boot = 20_000
    ours = noise.bootstrap_draws(plus, minus, sizes, np.random.default_rng(1), n_boot) @ w
    plain = plain_bootstrap(d, labels, w, n_boot, seed=2)
    # Same distribution: the gains take few values; their frequencies agree within Monte
    # Carlo error, and so do the percentile interval and the mean (exact: the observed gain).
    values = np.union1d(np.round(ours, 12), np.round(plain, 12))
    f_ours = np.array([(np.round(ours, 12) == v).mean() for v in values])
    f_plain = np.array([(np.round(plain, 12) == v).mean() for v in values])
    assert np.abs(f_ours - f_plain).max() < 0.015
    assert ours.mean() == pytest.approx(w @ (plus - minus), abs=2e-3)
    step = w.min()  # gains move in steps of at least the smallest weight
    lo, hi = noise.percentile_ci(ours)
    plo, phi = noise.percentile_ci(plain)
    assert abs(lo - plo) <= step + 1e-12 and abs(hi - phi) <= step + 1e-12


def test_normal_interval_uses_the_exact_bootstrap_variance() -> None:
    """For sweeps too large to resample, the interval is gain +- 1.96 SD of the bootstrap
    distribution, computed exactly: it equals the plain loop's SD, and with many discordant
    examples the percentile interval too."""
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(4), [40, 60, 50, 30])
    d = rng.choice([-1, 0, 0, 1, 1], size=len(labels))  # many discordant examples
    sizes = np.bincount(labels)
    plus = np.array([(d[labels == k] == 1).sum() for k in range(4)])
    minus = np.array([(d[labels == k] == -1).sum() for k in range(4)])
    w = np.full(4, 0.5 / len(labels))
    w[2] += 0.5 / sizes[2]
    plain = plain_bootstrap(d, labels, w, 20_000, seed=3)
    low, high = noise.normal_ci(plus[None], minus[None], sizes[None], w[None])
    sd = (high[0] - low[0]) / (2 * stats.norm.ppf(0.975))
    assert sd == pytest.approx(plain.std(), rel=0.02)
    plo, phi = noise.percentile_ci(plain)
    assert low[0] == pytest.approx(plo, abs=0.1 * sd) and high[0] == pytest.approx(
        phi, abs=0.1 * sd
    )
    # the method follows the sweep's size: resampling while it fits the budget
    assert noise.resamples(100) == noise.N_BOOT
    assert noise.resamples(noise.BOOT_BUDGET // 2000) == 2000
    assert noise.resamples(noise.BOOT_BUDGET) == 0  # over budget even at 999: normal


def direct_power(d: float, n: int, sims: int = 40_000, seed: int = 0) -> float:
    """Power of a two-sided one-sample t-test at 0.05 by simulation."""
    rng = np.random.default_rng(seed)
    x = rng.normal(d, 1.0, size=(sims, n))
    return float((stats.ttest_1samp(x, 0.0, axis=1).pvalue < 0.05).mean())


@pytest.mark.parametrize(("d", "textbook"), [(0.5, 34), (0.8, 15), (1.0, 10)])
def test_seeds_needed_against_a_direct_power_computation(d: float, textbook: int) -> None:
    z = np.array([-1.2, -0.4, 0.1, 0.5, 1.0])
    z = (z - z.mean()) / z.std(ddof=1)  # mean 0, SD 1 exactly
    gains = 0.01 * (d + z)  # observed mean / SD = d
    n = int(headline.seeds_needed(gains))
    assert n == textbook  # G*Power's paired t-test table, 80% power, two-sided 0.05
    assert direct_power(d, n) >= 0.79 and direct_power(d, n - 1) < 0.81
    assert np.isnan(headline.seeds_needed(np.array([-0.01, -0.02, 0.0])))  # mean <= 0
    assert np.isnan(headline.seeds_needed(np.array([0.01, 0.01, 0.01])))  # SD 0


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7])
def test_the_wilcoxon_floor_is_what_the_exact_test_gives(n: int) -> None:
    exact = stats.wilcoxon(np.arange(1, n + 1) / 100, method="exact").pvalue
    assert headline.wilcoxon_floor(n) == pytest.approx(exact)
    assert (headline.wilcoxon_floor(n) < 0.05) == (n >= 6)


# --- trees ---------------------------------------------------------------------------------

PER_CLASS = 50
LABELS = np.repeat(np.arange(10), PER_CLASS)


def reference_model(rng: np.random.Generator, cls: int, wrong_c: int) -> np.ndarray:
    """Right on 85% of the test set, wrong on ``wrong_c`` of class ``cls``'s examples."""
    pred = LABELS.copy()
    wrong = rng.random(len(pred)) < 0.15
    wrong[cls == LABELS] = False
    wrong[np.flatnonzero(cls == LABELS)[:wrong_c]] = True
    pred[wrong] = (LABELS[wrong] + 1) % 10
    return pred


def tree(tmp_path: Path, effect: bool, seeds: int = 6, packed: bool = True) -> FileStore:
    rng = np.random.default_rng(11 if effect else 5)
    runs = []
    for s in range(seeds):
        repaired, base = {}, {}
        for cls in (3, 8):
            ref = reference_model(rng, cls, wrong_c=30)
            repaired[(10, cls)] = ref
            # A few random changes (at most 4 examples: even 4 of 4 in its favour, p = 1/16,
            # is no evidence) against a real effect (25 more class-c images right).
            repaired[(1, cls)] = coin_flips(ref, LABELS, rng, 4)
            repaired[(5, cls)] = (
                fixed(ref, LABELS, cls, 25) if effect else coin_flips(ref, LABELS, rng, 4)
            )
            base = {e: ref for e in (1, 5, 10)}
        runs.append(PredictedRun(f"r{s}", 100 + s, LABELS, 10, base, repaired, packed=packed))
    store = FileStore(tmp_path / "results")
    write_predicted_tree(store, "noise", runs)
    return store


@pytest.mark.parametrize("rules", ["text", "notebook"])
def test_a_null_tree_has_naive_wins_but_none_beyond_noise(tmp_path: Path, rules: str) -> None:
    agg = ag.aggregate(tree(tmp_path, effect=False), rules=rules)  # type: ignore[arg-type]
    sp = agg.switch_points
    assert (sp["pattern"] == ag.PRE).sum() > 0  # the paper's rule finds "early wins"
    assert sp["beyond_noise"].notna().all() and not sp["beyond_noise"].any()
    assert (sp["p_value"] >= 0.05).all() and (sp["n_discordant"] <= 8).all()
    assert (sp["gain_ci_low"] <= sp["earlier_gain"] + 1e-12).all()
    assert (sp["gain_ci_method"] == "percentile (9999 resamples)").all()
    assert (agg.patterns["pre_beyond_noise"] == 0).all()
    assert agg.problems.empty


def test_an_effect_tree_has_every_unit_beyond_noise(tmp_path: Path) -> None:
    agg = ag.aggregate(tree(tmp_path, effect=True))
    sp = agg.switch_points
    assert (sp["pattern"] == ag.PRE).all() and (sp["best_epoch"] == 5).all()
    assert sp["beyond_noise"].all() and (sp["p_value"] < 1e-6).all()
    # the gain's interval lies above zero and holds the observed gain
    assert (sp["gain_ci_low"] > 0).all()
    assert ((sp["gain_ci_low"] <= sp["gain"]) & (sp["gain"] <= sp["gain_ci_high"])).all()
    top = agg.patterns[agg.patterns["scope"] == "dataset"]
    assert (top["pre_beyond_noise"] == top["pre-convergence"]).all()
    assert (top["n_compared_min"] == 3).all() and (top["n_compared_max"] == 3).all()
    head = agg.headline
    assert (head["k_beyond_noise"] == 6).all() and (head["n"] == 6).all()
    assert head["seed_ci_low"].notna().all()  # six seeds: an interval is given
    assert "6 seeds" in agg.sentences[0] and "beyond test-set noise" in agg.sentences[0]
    assert "across seeds, the mean gain's 95% CI excludes zero" in agg.sentences[0]


def test_packed_and_single_files_give_the_same_tests(tmp_path: Path) -> None:
    a = ag.aggregate(tree(tmp_path / "a", effect=True, seeds=2, packed=True))
    b = ag.aggregate(tree(tmp_path / "b", effect=True, seeds=2, packed=False))
    assert a.loaded.packed_runs == 2 and b.loaded.packed_runs == 0
    cols = [*noise.NOISE_COLUMNS, "earlier_gain"]
    assert a.switch_points[cols].equals(b.switch_points[cols])


def test_the_bootstrap_is_seeded(tmp_path: Path) -> None:
    store = tree(tmp_path, effect=True, seeds=2)
    cols = ["gain_ci_low", "gain_ci_high"]
    one, two = ag.aggregate(store), ag.aggregate(store)
    assert one.switch_points[cols].equals(two.switch_points[cols])
    # The resamples come from a generator of the unit's own, seeded by --bootstrap-seed
    # (the interval itself lies on a coarse grid here, so it may not move with the seed).
    plus, minus, sizes = np.array([3, 5]), np.array([2, 1]), np.array([40, 60])

    def draws(seed: int) -> np.ndarray:
        rng = noise.unit_seed(seed, "r0", "arachne", 3, 5)
        return noise.bootstrap_draws(plus, minus, sizes, rng, 500)

    assert np.array_equal(draws(0), draws(0)) and not np.array_equal(draws(0), draws(9))


def test_predictions_that_contradict_their_record_are_a_problem(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ref = reference_model(rng, 3, 20)
    run = PredictedRun(
        "r0",
        1,
        LABELS,
        10,
        {e: ref for e in (1, 5, 10)},
        {(e, 3): coin_flips(ref, LABELS, rng, 4) for e in (1, 5, 10)},
        tamper={(5, 3): 0.002},  # one test image = 0.002 on 500
    )
    store = FileStore(tmp_path / "results")
    write_predicted_tree(store, "bad", [run])
    agg = ag.aggregate(store)
    bad = agg.problems[agg.problems["kind"] == INCONSISTENT]
    assert bad["key"].tolist() == ["bad/r0/" + layout.repair_metrics("", "r0", 5, 3)[4:]]
    assert "predictions.npy gives accuracy" in bad["detail"].iloc[0]
    rec = agg.loaded.records
    assert not ((rec["kind"] == "repaired") & (rec["epoch"] == 5)).any()  # never a result


def test_a_tree_without_predictions_still_aggregates(tmp_path: Path) -> None:
    store = tree(tmp_path, effect=True, seeds=2, packed=False)
    for p in (tmp_path / "results").rglob("*.npy"):
        p.unlink()
    agg = ag.aggregate(store)
    sp = agg.switch_points
    assert (sp["pattern"] == ag.PRE).all()  # the paper's counts as before
    assert sp["beyond_noise"].isna().all() and sp["p_value"].isna().all()
    assert (agg.headline["n_tested"] == 0).all()
    assert "none testable against test-set noise" in agg.sentences[0]
    assert agg.problems.empty


def test_seeds_needed_of_a_tiny_effect_is_more_than_any_sweep_and_groups_are_independent() -> None:
    tiny = np.array([1.0, -1.0, 1.0, -1.0 + 1e-12])  # mean / SD about 2e-13
    assert headline.seeds_needed(tiny) == headline.MAX_SEEDS_NEEDED + 1
    groups = [np.array([0.01, 0.02, 0.015, 0.012]), tiny, np.array([0.01]), np.array([0.3, 0.1])]
    together = headline.seeds_needed_many(groups)
    alone = [headline.seeds_needed(g) for g in groups]
    np.testing.assert_array_equal(together, alone)
    assert together[0] == 3 and np.isnan(together[2])


def reference_noise(agg: ag.Aggregation) -> dict[int, tuple[float, int]]:
    """(Holm-adjusted p, discordant examples) of each tested unit's best earlier model, unit
    by unit from the Qual frame and the prediction vectors: the definitions written out."""
    sp, q, rec, ex = agg.switch_points, agg.quality, agg.loaded.records, agg.loaded.examples
    repaired = rec[rec["kind"] == "repaired"]

    def row(run: str, method: str, cls: int, epoch: int) -> int | None:
        at = repaired[
            (repaired["run"] == run)
            & (repaired["method"] == method)
            & (repaired["repair_class"] == cls)
            & (repaired["epoch"] == epoch)
        ]
        return int(at.index[0]) if len(at) else None

    out = {}
    for i, u in sp.iterrows():
        if u["status"] == "incomplete" or pd.isna(u["reference_epoch"]):
            continue
        cand = q[
            (q["kind"] == "repaired")
            & (q["run"] == u["run"])
            & (q["method"] == u["method"])
            & (q["repair_class"] == u["repair_class"])
            & (q["alpha"] == u["alpha"])
            & q["qual"].notna()
            & (q["epoch"] < u["reference_epoch"])
        ]
        labels = ex.labels.get(u["run"])
        ref = row(u["run"], u["method"], u["repair_class"], u["reference_epoch"])
        late = None if ref is None else ex.vector(ref)
        tests = []
        for _, c in cand.iterrows():
            early = ex.vector(row(u["run"], u["method"], u["repair_class"], c["epoch"]))
            if early is None or late is None or labels is None:
                tests = []
                break
            gain, loss = (early == labels) & (late != labels), (early != labels) & (late == labels)
            in_c = labels == u["repair_class"]
            pc, nc = int((gain & in_c).sum()), int((loss & in_c).sum())
            po, no = int((gain & ~in_c).sum()), int((loss & ~in_c).sum())
            b = (1 - u["alpha"]) / len(labels)
            a = b + u["alpha"] / in_c.sum()
            p = noise.signflip_p([pc + nc], [po + no], [pc - nc], [po - no], [a], [b])[0]
            tests.append((round(c["qual"], 12), -c["epoch"], p, pc + nc + po + no))
        if not tests:
            continue
        ps = sorted(t[2] for t in tests)  # Holm, step down
        adjusted, top = {}, 0.0
        for k, p in enumerate(ps):
            top = max(top, min(1.0, (len(ps) - k) * p))
            adjusted.setdefault(p, top)
        best = max(tests)
        out[i] = (adjusted[best[2]], best[3])
    return out


@pytest.mark.parametrize("rules", ["text", "notebook"])
def test_each_units_test_is_the_definitions(tmp_path: Path, rules: str) -> None:
    rng = np.random.default_rng(21)
    runs = []
    for s in range(3):
        repaired, base = {}, {}
        for cls in (3, 8):
            ref = reference_model(rng, cls, wrong_c=20 + 5 * s)
            for e in (1, 3, 5, 7, 10):
                repaired[(e, cls)] = (
                    fixed(ref, LABELS, cls, 3 * e)
                    if (e + s + cls) % 3 == 0
                    else coin_flips(ref, LABELS, rng, 2 + e)
                )
            base = {e: ref for e in (1, 3, 5, 7, 10)}
        runs.append(PredictedRun(f"r{s}", 100 + s, LABELS, 7, base, repaired, packed=False))
    store = FileStore(tmp_path / "results")
    write_predicted_tree(store, "noise", runs)
    # one earlier model without its predictions: its unit cannot be tested
    (tmp_path / "results" / layout.predictions(layout.repair_metrics("noise", "r1", 3, 8))).unlink()
    agg = ag.aggregate(store, rules=rules, alphas=(0.2, 0.8))  # type: ignore[arg-type]
    want = reference_noise(agg)
    sp = agg.switch_points
    tested = sp["p_value"].notna()
    assert sorted(want) == sorted(np.flatnonzero(tested)) and 0 < len(want) < len(sp)
    got_p = sp["p_value"].to_numpy()[sorted(want)]
    np.testing.assert_allclose(got_p, [want[i][0] for i in sorted(want)], rtol=1e-12, atol=0)
    got_n = sp["n_discordant"].to_numpy()[sorted(want)]
    assert got_n.tolist() == [want[i][1] for i in sorted(want)]
    beyond = (sp["pattern"] == ag.PRE) & (sp["p_value"] < 0.05)
    assert (sp["beyond_noise"][tested] == beyond[tested]).all()
    assert beyond[tested].any() and not beyond[tested].all()
