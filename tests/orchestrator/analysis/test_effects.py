"""Repair's effect against the unrepaired model, the harm flags and the headline, on a tree
whose every number is worked out by hand; and repair methods side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from early_repair_testing.aggregate_tree import RunTree, write_tree
from early_repair_testing.stats_reference import exact_bootstrap_quantile, exact_wilcoxon_p

from orchestrator.analysis import aggregate as ag
from orchestrator.analysis import headline, stats
from orchestrator.store.file import FileStore

# Per seed: repaired Qual at epoch 5 (before convergence) and 10 (convergence), and the
# unrepaired Qual at 10. Acc_c = Acc_total everywhere, so Qual is the value at any alpha.
SEEDS = {
    1: (0.90, 0.85, 0.88),  # pre wins by +0.05; the convergence repair hurt (0.85 < 0.88)
    2: (0.80, 0.82, 0.80),  # post; d = -0.02; the repair helped
    3: (0.86, 0.83, 0.84),  # pre, +0.03; convergence repair hurt; 0.86 beats unrepaired
    4: (0.87, 0.86, 0.90),  # pre, +0.01; convergence repair hurt; 0.87 < unrepaired 0.90
}
D = [0.05, -0.02, 0.03, 0.01]  # best earlier - convergence repair, per seed


def seed_run(seed: int, dataset: str = "toy") -> RunTree:
    pre, conv, base = SEEDS[seed]
    return RunTree(
        run=f"{dataset}-s{seed}",
        convergence=10,
        epochs=[1, 5, 10],
        classes=[3],
        repaired={(1, 3): (0.1, 0.1), (5, 3): (pre, pre), (10, 3): (conv, conv)},
        base={1: (0.05, {3: 0.05}), 5: (0.5, {3: 0.5}), 10: (base, {3: base})},
        seed=seed,
        dataset=dataset,
        costs={(10, 3): (25.0, 4.0, 2.0)},
    )


@pytest.fixture(scope="module")
def agg(tmp_path_factory: pytest.TempPathFactory) -> ag.Aggregation:
    store = FileStore(tmp_path_factory.mktemp("effects") / "results")
    write_tree(store, "eff", [seed_run(s) for s in SEEDS])
    return ag.aggregate(store, alphas=(0.5,), bootstrap_seed=7)


def test_effects_against_the_unrepaired_checkpoint(agg: ag.Aggregation) -> None:
    eff = agg.effects.set_index(["seed", "epoch"])
    assert len(eff) == 4 * 3
    for seed, (pre, conv, base) in SEEDS.items():
        assert eff.loc[(seed, 10), "delta_qual"] == pytest.approx(conv - base)
        assert eff.loc[(seed, 5), "delta_qual"] == pytest.approx(pre - 0.5)
        assert eff.loc[(seed, 1), "delta_acc"] == pytest.approx(0.1 - 0.05)
        assert eff.loc[(seed, 10), "at_convergence"] and not eff.loc[(seed, 5), "at_convergence"]
        assert (eff.loc[(seed, 10), "rr"], eff.loc[(seed, 10), "br"]) == (25.0, 4.0)
        assert eff.loc[(seed, 10), "seconds"] == 2.0 and eff.loc[(seed, 5), "seconds"] == 0.5
    harmed = sorted(eff.index[eff["harmed"].astype(bool)])
    assert harmed == [(1, 10), (3, 10), (4, 10)]


def test_switch_point_harm_flags(agg: ag.Aggregation) -> None:
    sp = agg.switch_points.set_index("seed")
    assert sp["pattern"].to_dict() == {1: ag.PRE, 2: ag.POST, 3: ag.PRE, 4: ag.PRE}
    assert sp["reference_harmed"].tolist() == [True, False, True, True]
    assert sp["harm_win"].tolist() == [True, False, True, True]
    assert sp["beats_unrepaired"].tolist() == [True, True, True, False]
    assert sp["earlier_gain"].to_numpy() == pytest.approx(D)
    assert sp["base_reference_qual"].tolist() == pytest.approx([0.88, 0.80, 0.84, 0.90])


def test_headline_counts_range_and_wilcoxon_without_an_interval_below_five_seeds(
    agg: ag.Aggregation,
) -> None:
    assert len(agg.headline) == 1
    h = agg.headline.iloc[0]
    assert (h["n"], h["k"], h["harm_wins"], h["beat_unrepaired"]) == (4, 3, 3, 2)
    assert h["best_beats_unrepaired"] == 3  # 0.90 > 0.88, 0.82 > 0.80, 0.86 > 0.84
    assert h["mean_gain"] == pytest.approx(np.mean(D))
    assert (h["seed_min"], h["seed_max"]) == pytest.approx((-0.02, 0.05))
    assert np.isnan(h["seed_ci_low"]) and np.isnan(h["seed_ci_high"])  # 4 seeds: no interval
    assert h["wilcoxon_p"] == pytest.approx(exact_wilcoxon_p(D)) == pytest.approx(0.375)
    assert h["wilcoxon_n"] == 4 and "cannot go below 0.12" in h["wilcoxon_note"]
    assert h["seeds_needed"] == headline.seeds_needed(np.array(D))
    assert h["mean_offset"] == pytest.approx(-3.75)  # -5, 0, -5, -5
    assert np.isnan(h["offset_low"])
    assert h["n_tested"] == 0 and h["k_beyond_noise"] == 0  # no predictions in this tree
    assert "in 3 of 4 seeds (3 where the repair at convergence had hurt" in h["text"]
    assert "mean gain +1.75 pp (per seed -2.00 pp to +5.00 pp, n = 4)" in h["text"]
    assert "p = 0.38 (n = 4; with 4 non-zero differences p cannot go below" in h["text"]


def test_headline_interval_from_five_seeds(tmp_path: Path) -> None:
    SEEDS[5] = (0.84, 0.80, 0.80)  # pre, +0.04
    try:
        store = FileStore(tmp_path / "results")
        write_tree(store, "eff", [seed_run(s) for s in SEEDS])
        agg = ag.aggregate(store, alphas=(0.5,), bootstrap_seed=7)
    finally:
        del SEEDS[5]
    d5 = [*D, 0.04]
    h = agg.headline.iloc[0]
    assert (h["seed_ci_low"], h["seed_ci_high"]) == stats.mean_ci(d5, seed=7)[1:]
    low = h["seed_ci_low"]
    assert exact_bootstrap_quantile(d5, 0.015) <= low <= exact_bootstrap_quantile(d5, 0.035)
    assert "95% CI [" in h["text"] and "n = 5" in h["text"]
    assert h["wilcoxon_note"] == "with 5 non-zero differences p cannot go below 0.062"


def test_dataset_sentence_says_the_wins_are_mostly_harm(agg: ag.Aggregation) -> None:
    (sentence,) = agg.sentences
    assert sentence.startswith("toy, 4 cases (4 seeds x 1 class x 1 α)")
    assert "beat repairing at convergence in 3 (none testable against test-set noise" in sentence
    assert "3 of the 3 wins came where the repair at convergence had made the model worse"
    assert "most of these early-repair wins show the repair damaging the model" in sentence
    assert "beat the unrepaired model at convergence in 3 of 4" in sentence
    assert "with 4 seeds no claim across seeds is made (that needs at least 5)" in sentence


def test_sentence_without_harm_and_without_wins(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "results")
    runs = []
    for s in (1, 2, 3):
        t = seed_run(s, "clean")
        t.base[10] = (0.5, {3: 0.5})  # the convergence repair always helps now
        runs.append(t)
    post = seed_run(4, "late")
    post.repaired[(5, 3)] = (0.1, 0.1)
    runs.append(post)
    write_tree(store, "eff", runs)
    agg = ag.aggregate(store, alphas=(0.5,))
    clean, late = agg.sentences
    assert clean.startswith("clean, 3 cases") and "0 of the 2 wins came where" in clean
    assert "was never beaten - repair the model at convergence" in late
    (row,) = agg.headline[agg.headline["dataset"] == "late"].itertuples()
    assert np.isnan(row.seed_ci_low) and "n = 1)" in row.text  # one seed
    assert "no test" in row.text


def test_methods_side_by_side(tmp_path: Path) -> None:
    """Two methods in the method layout: each its own units, Table 1 rows and means."""
    runs = []
    for s in SEEDS:
        t = seed_run(s)
        for (e, c), v in list(t.repaired.items()):
            t.repaired[(e, c, "other")] = (v[0] - 0.01, v[1] - 0.01)
        t.method_level = True
        t.methods = ("arachne", "other")
        runs.append(t)
    store = FileStore(tmp_path / "results")
    write_tree(store, "eff", runs)
    agg = ag.aggregate(store, alphas=(0.5,))
    assert set(agg.switch_points["method"]) == {"arachne", "other"}
    top = agg.patterns[agg.patterns["scope"] == "dataset"].set_index("method")
    assert top.loc["arachne", ag.PRE] == top.loc["other", ag.PRE] == 3
    m = agg.methods[agg.methods["checkpoint"] == "convergence"].set_index("method")
    base = np.mean([b for *_, b in SEEDS.values()])
    conv = np.mean([c for _, c, _ in SEEDS.values()])
    assert m.loc["arachne", "qual_gain"] == pytest.approx(conv - base)
    assert m.loc["other", "qual_gain"] == pytest.approx(conv - 0.01 - base)
    assert m.loc["arachne", "n"] == 4 and m.loc["arachne", "harmed"] == 3
    assert m.loc["other", "rr"] == 25.0
    assert list(m.columns) == [
        "dataset",
        "model",
        "repair_class",
        "checkpoint",
        "alpha",
        "n",
        "rr",
        "br",
        "delta_acc",
        "delta_acc_class",
        "qual_gain",
        "harmed",
        "seconds",
    ]
    assert len(agg.sentences) == 2  # one per (dataset, method) when there are several
    assert agg.sentences[1].startswith("toy (other), 4 cases")
    per_epoch = agg.methods[agg.methods["checkpoint"] != "convergence"]
    assert sorted(per_epoch["checkpoint"].unique(), key=int) == ["1", "5", "10"]
    assert isinstance(agg.effects, pd.DataFrame) and len(agg.effects) == 2 * 4 * 3
