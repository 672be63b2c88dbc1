"""What each repair fixed and broke, on a twelve-image tree worked out by hand: the no_op,
test_fixed and test_broken columns of the effects, the regression ledger (and its parquet
file), the classes broken most, the causes of harm, and a tree without predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from early_repair_testing.prediction_tree import PredictedRun, write_predicted_tree

from orchestrator.analysis import aggregate as ag
from orchestrator.analysis import regressions
from orchestrator.analysis.harm_report import acceptance_table
from orchestrator.analysis.output import write_tables
from orchestrator.analysis.report import build
from orchestrator.store.file import FileStore

LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])


def preds(changes: dict[int, int], start: np.ndarray = LABELS) -> np.ndarray:
    out = start.copy()
    for i, v in changes.items():
        out[i] = v
    return out


# Epoch 5: images 0, 3 and 6 wrong. Its class-1 repair turns 3 right, turns 4 and 9 wrong,
# and moves 0 from one wrong class to another (neither fixed nor broken). Its class-2 repair
# changes nothing, and its patch changed no repair-set prediction (a no-op).
BASE5 = preds({0: 1, 3: 2, 6: 0})
REP5_1 = preds({0: 3, 3: 1, 4: 0, 9: 2}, BASE5)
REP5_2 = BASE5.copy()
# Epoch 10 (convergence): every image right; the class-1 repair breaks image 5. Its record
# was written before repair_changed existed (no_op unknown).
BASE10 = LABELS.copy()
REP10_1 = preds({5: 0})


def run(packed: bool = True) -> PredictedRun:
    return PredictedRun(
        "r0",
        1,
        LABELS,
        10,
        {5: BASE5, 10: BASE10},
        {(5, 1): REP5_1, (5, 2): REP5_2, (10, 1): REP10_1},
        n_classes=4,
        packed=packed,
        fields={
            (5, 1): {"accepted": True, "repair_changed": 3},
            (5, 2): {"accepted": True, "repair_changed": 0},
        },
    )


@pytest.fixture(scope="module", params=[True, False], ids=["packed", "files"])
def agg(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    store = FileStore(tmp_path_factory.mktemp("reg") / "results")
    write_predicted_tree(store, "reg", [run(packed=request.param)])
    return ag.aggregate(store, alphas=(0.5,))


def test_effects_say_what_each_repair_fixed_and_broke(agg: ag.Aggregation) -> None:
    eff = agg.effects.set_index(["epoch", "repair_class"])
    assert len(eff) == 3
    assert (eff.loc[(5, 1), "test_fixed"], eff.loc[(5, 1), "test_broken"]) == (1, 2)
    assert (eff.loc[(5, 2), "test_fixed"], eff.loc[(5, 2), "test_broken"]) == (0, 0)
    assert (eff.loc[(10, 1), "test_fixed"], eff.loc[(10, 1), "test_broken"]) == (0, 1)
    assert not eff.loc[(5, 1), "no_op"] and eff.loc[(5, 2), "no_op"]
    assert pd.isna(eff.loc[(10, 1), "no_op"])  # written before repair_changed existed
    assert eff.loc[(5, 1), "accepted"] and pd.isna(eff.loc[(10, 1), "accepted"])
    # Class-1 Qual(0.5) at epoch 5: Acc_1 2/3 -> 2/3, Acc 9/12 -> 8/12: lower, so harmed.
    assert eff.loc[(5, 1), "delta_qual"] == pytest.approx(0.5 * (8 / 12 - 9 / 12))
    assert eff["harmed"].to_dict() == {(5, 1): True, (10, 1): True, (5, 2): False}


def test_the_ledger_lists_every_image_fixed_and_broken(agg: ag.Aggregation) -> None:
    led = agg.regressions
    got = sorted(
        zip(
            led["epoch"], led["repair_class"], led["example"], led["label"], led["before"],
            led["after"], led["change"], strict=True,
        )
    )  # fmt: skip
    assert got == [
        (5, 1, 3, 1, 2, 1, "fixed"),
        (5, 1, 4, 1, 1, 0, "broken"),
        (5, 1, 9, 3, 3, 2, "broken"),
        (10, 1, 5, 1, 1, 0, "broken"),
    ]
    assert set(led["run"]) == {"r0"} and set(led["method"]) == {"arachne"}


def test_classes_broken_most_and_causes_of_harm(agg: ag.Aggregation) -> None:
    most = regressions.broken_classes(agg.regressions)
    assert most[["fixed", "broken", "most broken classes"]].values.tolist() == [
        [1, 3, "1 (2), 3 (1)"]
    ]
    causes = regressions.harm_causes(agg.effects).iloc[0]
    # Two harmful repairs: epoch 5 fixed one image and broke two; epoch 10 fixed none.
    assert (causes["repairs"], causes["harmed"]) == (3, 2)
    assert (causes["RR = 0"], causes["no-op"]) == (0, 0)  # RR 50 in every record here
    assert (causes["fixed none"], causes["broke more"]) == (1, 1)
    assert acceptance_table(agg).empty  # one rule only: nothing to compare


def test_the_ledger_is_written_as_parquet_and_linked(agg: ag.Aggregation, tmp_path: Path) -> None:
    written = write_tables(agg, tmp_path)
    assert tmp_path / "regressions.parquet" in written
    back = pd.read_parquet(tmp_path / "regressions.parquet")
    assert len(back) == 4 and list(back.columns) == regressions.LEDGER_COLUMNS
    effects = pd.read_csv(tmp_path / "effects.csv")
    assert {"no_op", "test_fixed", "test_broken", "accepted"} <= set(effects.columns)
    md = build(agg, tmp_path, max_figures=0).markdown(tmp_path)
    assert "Why repairs hurt" in md and "(regressions.parquet)" in md
    assert "1 (2), 3 (1)" in md


def test_a_tree_without_predictions_leaves_the_new_columns_empty(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "results")
    write_predicted_tree(store, "old", [run(packed=False)])
    for p in (tmp_path / "results").rglob("*.npy"):
        p.unlink()
    agg = ag.aggregate(store, alphas=(0.5,))
    assert agg.effects["test_fixed"].isna().all() and agg.effects["test_broken"].isna().all()
    assert agg.regressions.empty
    assert not agg.problems["detail"].str.contains("predictions").any()  # not a problem
    md = build(agg, tmp_path, max_figures=0).markdown(tmp_path)
    assert md.count(regressions.NOTE_NO_PREDICTIONS) == 1  # said once


def test_a_records_file_of_the_previous_format_reads_with_the_new_columns_empty() -> None:
    import json

    import pyarrow as pa

    from orchestrator.results import records as rs

    rec = rs.MetricsRecord(
        sweep="s", run="r", dataset="digits", model="m", seed=1, epoch=1,
        convergence_epoch=1, kind="repaired", repair_class=3, method="arachne",
        accuracy=0.5, per_class_accuracy=[0.5], f1_macro=0.5, recall_macro=0.5,
        auc_macro=None, accepted=False, repair_changed=0,
    )  # fmt: skip
    now = rs.load_run_records(rs.dump_run_records([rec.model_dump(mode="json")], ["k"]))
    assert now.table.column("accepted").to_pylist() == [False]
    # The same file as format 2 wrote it: without the two columns.
    old = now.table.drop_columns(["accepted", "repair_changed"])
    meta = {"format": 2, "schema_version": 2, "files": {}, "test_labels": None}
    old = old.replace_schema_metadata({b"early-repair.run-records": json.dumps(meta)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, old.schema) as writer:
        writer.write_table(old)
    back = rs.load_run_records(sink.getvalue().to_pybytes())
    assert back.table.schema.remove_metadata().equals(rs.run_records_schema())
    assert back.table.column("accepted").to_pylist() == [None]
    assert back.records()[0]["accuracy"] == 0.5 and "accepted" not in back.records()[0]


def test_runs_on_two_test_sets_keep_their_own_changes_in_record_order(tmp_path: Path) -> None:
    """Runs whose test sets differ (another split: 7 images of 3 classes) are compared
    against their own labels, and the ledger keeps the records' order even though the runs
    sharing a test set are handled together (r0 and r2 before r1)."""
    other = np.array([2, 1, 0, 0, 1, 2, 2])
    base = preds({0: 0, 3: 1}, other)  # images 0 and 3 wrong
    rep = preds({0: 2, 5: 0}, base)  # fixes image 0, breaks image 5
    second = PredictedRun("r1", 2, other, 5, {5: base}, {(5, 1): rep}, n_classes=3)
    third = PredictedRun("r2", 3, LABELS, 10, {5: BASE5}, {(5, 1): REP5_1}, n_classes=4)
    store = FileStore(tmp_path / "results")
    write_predicted_tree(store, "two", [run(), second, third])
    agg = ag.aggregate(store, alphas=(0.5,))
    eff = agg.effects.set_index(["run", "epoch", "repair_class"])
    assert (eff.loc[("r1", 5, 1), "test_fixed"], eff.loc[("r1", 5, 1), "test_broken"]) == (1, 1)
    assert (eff.loc[("r2", 5, 1), "test_fixed"], eff.loc[("r2", 5, 1), "test_broken"]) == (1, 2)
    led = agg.regressions
    assert led["run"].tolist() == ["r0"] * 4 + ["r1"] * 2 + ["r2"] * 3
    r1 = led[led["run"] == "r1"]
    assert r1[["example", "label", "before", "after", "change"]].values.tolist() == [
        [0, 2, 0, 2, "fixed"],
        [5, 2, 2, 0, "broken"],
    ]
    for _, g in led.groupby(["run", "epoch", "repair_class"]):
        assert g["example"].is_monotonic_increasing
