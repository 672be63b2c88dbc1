"""The aggregator's judgement of a readiness policy: policy, oracle and convergence epochs,
regret, gain and epochs saved per seed, and their means with CIs - on trees whose repaired
Quals are known by construction."""

from __future__ import annotations

import math

import pytest
from early_repair_testing.aggregate_tree import RunTree, write_run

from orchestrator.analysis import readiness
from orchestrator.analysis.aggregate import aggregate
from orchestrator.analysis.load import load
from orchestrator.store.file import FileStore

SWEEP = "ready"
EPOCHS = [1, 2, 3, 4, 5, 6]


def outcome(tracks: list[tuple], action: str = "record", policy: str = "repaired-val-qual"):
    return {
        "policy": policy,
        "action": action,
        "alpha": 0.5,
        "stopped_training": False,
        "tracks": [
            {
                "method": m,
                "repair_class": c,
                "fired_epoch": fired,
                "ready_epoch": ready,
                "best_score": 0.5,
                "evaluations": 6,
            }
            for m, c, fired, ready in tracks
        ],
    }


def tree(run: str, seed: int, quals: dict[int, list[float]], conv: int, ready: dict) -> RunTree:
    # acc_c = acc_total = q: Qual(alpha, c) = q at every alpha.
    repaired = {(e, c): (q, q) for c, qs in quals.items() for e, q in zip(EPOCHS, qs, strict=True)}
    return RunTree(
        run=run,
        convergence=conv,
        epochs=[1, 5, conv],
        classes=sorted(quals),
        repaired=repaired,
        seed=seed,
        online=True,
        readiness=ready,
    )


def write(tmp_path, runs: list[RunTree]) -> FileStore:
    store = FileStore(tmp_path / "results")
    for t in runs:
        t.epochs = EPOCHS  # every epoch repaired while training
        write_run(store, SWEEP, t)
    return store


RUNS = [
    # policy picks 3 (0.80), oracle 5 (0.90), convergence 4 (0.75); fired at 5 of 6 trained
    ("s1", 1, [0.6, 0.7, 0.8, 0.75, 0.9, 0.85], 4, (5, 3)),
    # the policy picks the oracle epoch; fired at 4: two epochs saved
    ("s2", 2, [0.5, 0.9, 0.6, 0.6, 0.6, 0.6], 3, (4, 2)),
    # never fired: ready epoch is the best seen; nothing saved
    ("s3", 3, [0.5, 0.6, 0.7, 0.8, 0.85, 0.86], 6, (None, 6)),
]


def test_regret_gain_and_epochs_saved_per_seed(tmp_path) -> None:
    store = write(
        tmp_path,
        [
            tree(r, s, {3: q}, conv, outcome([("arachne", 3, fired, ready)]))
            for r, s, q, conv, (fired, ready) in RUNS
        ],
    )
    got = readiness.per_run(load(store)).set_index("run")
    assert got.loc["s1", ["policy_epoch", "oracle_epoch", "convergence_epoch"]].tolist() == [
        3,
        5,
        4,
    ]
    assert got.loc["s1", "regret"] == pytest.approx(0.10)
    assert got.loc["s1", "gain"] == pytest.approx(0.05)
    assert got.loc["s1", "epochs_saved"] == 1
    assert (got.loc["s2", "regret"], got.loc["s2", "epochs_saved"]) == (0.0, 2)
    assert got.loc["s2", "gain"] == pytest.approx(0.3)
    assert (got.loc["s3", "oracle_epoch"], got.loc["s3", "epochs_saved"]) == (6, 0)
    assert pd_isna(got.loc["s3", "fired_epoch"])

    summ = readiness.summary(got.reset_index(), seed=0)
    (row,) = summ.itertuples(index=False)
    assert (row.n, row.method, row.repair_class, row.alpha) == (3, "arachne", 3, 0.5)
    assert row.regret_mean == pytest.approx((0.10 + 0 + 0) / 3)
    assert row.epochs_saved_mean == pytest.approx(1.0)
    assert row.regret_ci_low <= row.regret_mean <= row.regret_ci_high
    # Seeded: the same tree and seed give the same interval.
    again = readiness.summary(got.reset_index(), seed=0)
    assert again.equals(summ)


def pd_isna(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v) == "<NA>"


def test_a_policy_of_the_unrepaired_model_is_judged_for_every_repaired_unit(tmp_path) -> None:
    quals = {3: [0.6, 0.7, 0.8, 0.75, 0.9, 0.85], 8: [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]}
    ready = outcome([(None, None, 4, 2)], policy="val-loss")
    store = write(tmp_path, [tree("s1", 1, quals, 2, ready)])
    got = readiness.per_run(load(store)).set_index("repair_class")
    assert sorted(got.index) == [3, 8]
    assert got.loc[3, "regret"] == pytest.approx(0.2) and got.loc[3, "oracle_epoch"] == 5
    assert got.loc[8, "regret"] == pytest.approx(0.1) and got.loc[8, "oracle_epoch"] == 1
    assert (got["policy"] == "val-loss").all() and (got["policy_epoch"] == 2).all()


def test_with_action_stop_no_epochs_saved_are_claimed(tmp_path) -> None:
    ready = outcome([("arachne", 3, 5, 3)], action="stop")
    store = write(tmp_path, [tree("s1", 1, {3: RUNS[0][2]}, 4, ready)])
    (saved,) = readiness.per_run(load(store))["epochs_saved"]
    assert math.isnan(saved)


def test_records_written_while_training_take_the_summarys_convergence_epoch(tmp_path) -> None:
    store = write(tmp_path, [tree("s1", 1, {3: RUNS[0][2]}, 4, outcome([("arachne", 3, 5, 3)]))])
    loaded = load(store)
    assert set(loaded.records["convergence_epoch"]) == {4}
    assert not [p for p in loaded.problems if p.run == "s1" and "convergence" in p.detail]
    # The runs table's epochs are every epoch repaired while training.
    assert loaded.runs.loc[0, "checkpoint_epochs"] == EPOCHS


def test_the_report_has_a_readiness_section_and_figure(tmp_path) -> None:
    from orchestrator.analysis.output import publish

    store = write(
        tmp_path,
        [
            tree(r, s, {3: q}, conv, outcome([("arachne", 3, fired, ready)]))
            for r, s, q, conv, (fired, ready) in RUNS
        ],
    )
    out = tmp_path / "report"
    publish(aggregate(store), out)
    md = (out / "report.md").read_text()
    assert "Readiness policy: when to stop training and repair" in md
    assert "3.33 [" in md  # mean regret 3.33 pp with its CI
    assert (out / "figures" / "readiness_digits_small_cnn.png").stat().st_size > 0
    assert (out / "readiness.csv").read_text().count("\n") == 2


def test_a_sweep_without_readiness_has_no_readiness_outputs(tmp_path) -> None:
    from orchestrator.analysis.output import publish

    t = tree("s1", 1, {3: RUNS[0][2]}, 4, None)
    t.online = False
    store = write(tmp_path, [t])
    out = tmp_path / "report"
    publish(aggregate(store), out)
    assert not (out / "readiness.csv").exists()
    assert "Readiness policy" not in (out / "report.md").read_text()
