"""Aggregation semantics on synthetic trees with known answers: Qual, switch points, ties,
patterns, Table 1, and how missing, unfinished and damaged results are counted."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from early_repair_testing.aggregate_tree import (
    PRE_BY_ALPHA,
    RunTree,
    paper_table1_runs,
    pattern_run,
    typed_run,
    write_tree,
)

from orchestrator.analysis import aggregate as ag
from orchestrator.analysis import output, unit_status
from orchestrator.analysis import problems as pb
from orchestrator.analysis import tables as tb
from orchestrator.errors import BadInput, StoreError
from orchestrator.results import layout as results
from orchestrator.store.file import FileStore

SWEEP = "sw"


def build(tmp_path: Path, runs: Iterable[RunTree], sweep: str = SWEEP) -> FileStore:
    store = FileStore(tmp_path / "results")
    write_tree(store, sweep, runs)
    return store


def sp_row(agg: ag.Aggregation, run: str, cls: int, alpha: float) -> pd.Series:
    sp = agg.switch_points
    rows = sp[(sp["run"] == run) & (sp["repair_class"] == cls) & (sp["alpha"] == alpha)]
    assert len(rows) == 1
    return rows.iloc[0]


def two_class_run(**kw: object) -> RunTree:
    """Class 3: pattern depends on alpha (post/pre/pre); class 8: always pre at epoch 1."""
    base = {e: (0.6, {3: 0.4, 8: 0.2}) for e in (1, 5, 10, 15)}
    repaired = {
        (1, 3): (0.1, 0.1),
        (5, 3): (0.9, 0.7),
        (10, 3): (0.6, 0.9),
        (15, 3): (0.95, 0.95),  # after convergence: only counts with `include`
        (1, 8): (0.8, 0.8),
        (5, 8): (0.3, 0.3),
        (10, 8): (0.5, 0.5),
        (15, 8): (0.2, 0.2),
    }
    args = dict(
        run="digits-small-cnn-s1",
        convergence=10,
        epochs=[1, 5, 10, 15],
        classes=[3, 8],
        repaired=repaired,
        base=base,
        seed=1,
    )
    args.update(kw)
    return RunTree(**args)  # type: ignore[arg-type]


# --- Qual ---------------------------------------------------------------------------------


def test_quality_is_alpha_weighted_class_and_total_accuracy(tmp_path: Path) -> None:
    agg = ag.aggregate(build(tmp_path, [two_class_run()]))
    q = agg.quality
    # 4 base checkpoints x 2 classes + 8 repaired models, each for 3 alphas.
    assert len(q) == (4 * 2 + 8) * 3
    assert sorted(q["alpha"].unique()) == [0.2, 0.5, 0.8]

    def qual(kind: str, epoch: int, cls: int, alpha: float) -> float:
        r = q[(q.kind == kind) & (q.epoch == epoch) & (q.repair_class == cls) & (q.alpha == alpha)]
        assert len(r) == 1
        return float(r["qual"].iloc[0])

    assert qual("repaired", 5, 3, 0.2) == pytest.approx(0.2 * 0.9 + 0.8 * 0.7)  # 0.74
    assert qual("repaired", 10, 3, 0.2) == pytest.approx(0.84)
    assert qual("repaired", 5, 3, 0.8) == pytest.approx(0.86)
    assert qual("repaired", 10, 3, 0.5) == pytest.approx(0.75)
    # Base models use the base record's own per-class accuracy of the target class.
    assert qual("base", 5, 3, 0.5) == pytest.approx(0.5 * 0.4 + 0.5 * 0.6)
    assert qual("base", 5, 8, 0.8) == pytest.approx(0.8 * 0.2 + 0.2 * 0.6)
    assert set(q["convergence_epoch"]) == {10}


def test_records_have_one_row_per_model_and_expanded_class_accuracies(tmp_path: Path) -> None:
    agg = ag.aggregate(build(tmp_path, [two_class_run()]))
    rec = agg.loaded.records
    assert len(rec) == 4 + 8
    assert [c for c in rec.columns if c.startswith("acc_class_")] == [
        f"acc_class_{c}" for c in range(10)
    ]
    r = rec[(rec.kind == "repaired") & (rec.epoch == 5) & (rec.repair_class == 3)].iloc[0]
    assert (r["acc_class_3"], r["accuracy"], r["acc_class_0"]) == (0.9, 0.7, 0.7)
    assert r["key"] == results.repair_metrics(SWEEP, "digits-small-cnn-s1", 5, 3, None)
    assert bool(r["run_complete"]) and r["n_classes"] == 10
    base = rec[rec.kind == "base"]
    assert base["repair_class"].isna().all() and base["rr"].isna().all()


def reference_quality(
    records: pd.DataFrame, runs: pd.DataFrame, alphas: tuple[float, ...]
) -> pd.DataFrame:
    """Qual as the definition reads, frame by frame: every base record once per class its
    run lists, every repaired record once, each for every alpha, sorted."""
    width = len([c for c in records.columns if c.startswith("acc_class_")])
    listed = runs[["run", "repair_classes"]].explode("repair_classes").dropna()
    listed = listed.rename(columns={"repair_classes": "repair_class"})
    cols = ["sweep", "dataset", "model", "run", "seed", "epoch", "kind", "method", "accuracy"]
    accs = [f"acc_class_{c}" for c in range(width)]
    base = records.loc[records["kind"] == "base", [*cols, *accs]].merge(listed, on="run")
    repaired = records.loc[records["kind"] == "repaired", [*cols, *accs, "repair_class"]]
    models = pd.concat([base, repaired], ignore_index=True)
    models["repair_class"] = models["repair_class"].astype("int64")
    models["acc_class"] = [
        float(m[f"acc_class_{c}"]) if c < width else np.nan
        for (_, m), c in zip(models.iterrows(), models["repair_class"], strict=True)
    ]
    conv = runs.set_index("run")["convergence_epoch"]
    models["convergence_epoch"] = models["run"].map(conv).astype("Int64")
    out = models.merge(pd.DataFrame({"alpha": list(alphas)}), how="cross")
    out["qual"] = out["alpha"] * out["acc_class"] + (1 - out["alpha"]) * out["accuracy"]
    order = ["dataset", "model", "run", "repair_class", "alpha", "kind", "method", "epoch"]
    out = out.sort_values(order, na_position="first", kind="stable").reset_index(drop=True)
    # quality()'s columns, in its order
    shown = "sweep dataset model run seed epoch convergence_epoch kind method repair_class"
    return out[[*shown.split(), "alpha", "acc_class", "accuracy", "qual"]]


def test_quality_is_the_definitions_frame_for_odd_runs_and_any_record_order(
    tmp_path: Path,
) -> None:
    """Runs that list no class, a class past the records' per-class vectors, or are not in
    the runs frame at all; records in any order: the same frame as the definition gives."""
    trees = [
        two_class_run(run=name, seed=seed, convergence=conv)
        for name, seed, conv in [("a-s1", 1, 10), ("b-s2", 2, 5), ("c-s3", 3, 10), ("d-s4", 4, 1)]
    ]
    agg = ag.aggregate(build(tmp_path, trees))
    records, runs = agg.loaded.records, agg.loaded.runs.copy()
    runs["repair_classes"] = [[], [3, 12], [8, 3, 8], [8]]
    runs = runs[runs["run"] != "d-s4"].reset_index(drop=True)
    shuffled = records.sample(frac=1.0, random_state=7).reset_index(drop=True)
    for recs in (records, shuffled):
        got = tb.quality(recs, runs, (0.2, 0.8))
        pd.testing.assert_frame_equal(got, reference_quality(recs, runs, (0.2, 0.8)))
    got = tb.quality(records, runs, (0.5,))
    assert set(got.loc[got["kind"] == "base", "run"]) == {"b-s2", "c-s3"}
    assert got.loc[got["repair_class"] == 12, "acc_class"].isna().all()
    assert got.loc[got["run"] == "d-s4", "convergence_epoch"].isna().all()
    empty = tb.quality(records.iloc[:0], runs, (0.5,))
    pd.testing.assert_frame_equal(empty, reference_quality(records.iloc[:0], runs, (0.5,)))


# --- switch points, patterns ------------------------------------------------------------------


def test_switch_points_per_alpha_exclude_after_convergence(tmp_path: Path) -> None:
    agg = ag.aggregate(build(tmp_path, [two_class_run()]))
    run = "digits-small-cnn-s1"
    expected = {  # alpha -> (best epoch, pattern, gain) for class 3
        0.2: (10, ag.POST, 0.0),
        0.5: (5, ag.PRE, 0.80 - 0.75),
        0.8: (5, ag.PRE, 0.86 - 0.66),
    }
    for alpha, (epoch, pattern, gain) in expected.items():
        r = sp_row(agg, run, 3, alpha)
        assert (r["best_epoch"], r["pattern"], r["status"]) == (epoch, pattern, "ok")
        assert r["gain"] == pytest.approx(gain)
        assert r["offset"] == epoch - 10
        assert r["n_compared"] == 3  # epochs 1, 5, 10; 15 is after convergence
        assert r["base_convergence_qual"] == pytest.approx(alpha * 0.4 + (1 - alpha) * 0.6)
    for alpha in (0.2, 0.5, 0.8):
        r = sp_row(agg, run, 8, alpha)
        assert (r["best_epoch"], r["pattern"]) == (1, ag.PRE)
        assert r["best_qual"] == pytest.approx(0.8) and r["convergence_qual"] == pytest.approx(0.5)


def test_include_mode_adds_after_convergence_pattern(tmp_path: Path) -> None:
    agg = ag.aggregate(build(tmp_path, [two_class_run()]), after_convergence="include")
    run = "digits-small-cnn-s1"
    for alpha in (0.2, 0.5, 0.8):
        r = sp_row(agg, run, 3, alpha)
        assert (r["best_epoch"], r["pattern"], r["offset"]) == (15, ag.AFTER, 5)
        assert r["gain"] == pytest.approx(0.95 - r["convergence_qual"])
        assert r["n_compared"] == 4
        assert sp_row(agg, run, 8, alpha)["pattern"] == ag.PRE
    top = agg.patterns[agg.patterns.scope == "dataset"]
    assert list(top.columns[6:]) == [
        ag.PRE,
        ag.POST,
        ag.AFTER,
        "compared",
        "incomplete",
        "pre_beyond_noise",
        "tested",
        "n_compared_min",
        "n_compared_max",
    ]
    assert top[ag.AFTER].tolist() == [1, 1, 1] and top[ag.PRE].tolist() == [1, 1, 1]
    # exclude mode has no after-convergence column at all
    plain = ag.aggregate(FileStore(tmp_path / "results"))
    assert ag.AFTER not in plain.patterns.columns


def test_patterns_reproduce_the_papers_table_1(tmp_path: Path) -> None:
    agg = ag.aggregate(build(tmp_path, paper_table1_runs()))
    top = agg.patterns[agg.patterns.scope == "dataset"].set_index(["dataset", "alpha"])
    assert top.loc["rsna", ag.PRE].tolist() == [3, 2, 4]
    assert top.loc["rsna", ag.POST].tolist() == [2, 3, 1]
    assert top.loc["gtsrb", ag.PRE].tolist() == [9, 9, 9]
    assert top.loc["gtsrb", ag.POST].tolist() == [6, 6, 6]
    assert (top["incomplete"] == 0).all()
    assert top.loc["gtsrb", "compared"].tolist() == [15, 15, 15]
    fine = agg.patterns[agg.patterns.scope == "model-class"]
    g = fine[(fine.dataset == "gtsrb") & (fine.alpha == 0.5)].set_index("repair_class")
    assert g[ag.PRE].to_dict() == {"20": 4, "27": 3, "30": 2}
    assert g[ag.POST].to_dict() == {"20": 1, "27": 2, "30": 3}
    assert set(fine["model"]) == {"vgg16", "densenet121"}
    # Every pre pattern in switch_points agrees with how the run was built.
    sp = agg.switch_points
    rsna = sp[sp.dataset == "rsna"].sort_values(["seed", "alpha"])
    kinds = ["always-pre", "always-pre", "pre-at-0.2", "pre-at-0.8", "pre-at-0.8"]
    got = (rsna["pattern"] == ag.PRE).to_numpy().reshape(5, 3)
    assert [tuple(row) for row in got] == [PRE_BY_ALPHA[k] for k in kinds]
    assert set(sp.loc[sp.pattern == ag.PRE, "best_epoch"]) == {5}


# --- ties ----------------------------------------------------------------------------------------


def test_tie_with_the_convergence_checkpoint_goes_to_convergence(tmp_path: Path) -> None:
    t = pattern_run("tie", "post")
    t.repaired[(5, 3)] = (0.9, 0.9)  # same as the convergence checkpoint (epoch 10)
    agg = ag.aggregate(build(tmp_path, [t]))
    for alpha in (0.2, 0.5, 0.8):
        r = sp_row(agg, "tie", 3, alpha)
        assert (r["best_epoch"], r["pattern"], r["tied_epochs"]) == (10, ag.POST, "5;10")
        assert r["gain"] == 0


def test_tie_between_earlier_checkpoints_goes_to_the_earliest(tmp_path: Path) -> None:
    t = pattern_run("tie", "pre")
    t.repaired[(1, 3)] = (0.9, 0.9)  # ties with epoch 5, both beat convergence
    agg = ag.aggregate(build(tmp_path, [t]))
    r = sp_row(agg, "tie", 3, 0.5)
    assert (r["best_epoch"], r["pattern"], r["tied_epochs"]) == (1, ag.PRE, "1;5")


@pytest.mark.parametrize(
    ("rules", "after"), [("text", "exclude"), ("text", "include"), ("notebook", "exclude")]
)
def test_switch_points_equal_a_unit_by_unit_reference_on_random_ties(
    tmp_path: Path, rules: ag.Rules, after: str
) -> None:
    """Accuracies drawn from a few values, so that many checkpoints tie: the vectorised
    switch points must equal a plain loop over each unit's checkpoints."""
    rng = np.random.default_rng(5)
    values = [0.2, 0.4, 0.6, 0.8]
    runs = []
    for i in range(12):
        epochs = [1, 5, 10, 15, 20]
        conv = int(rng.choice(epochs[:-1]))
        runs.append(
            RunTree(
                run=f"r{i}",
                convergence=conv,
                epochs=epochs,
                classes=[3, 8],
                repaired={
                    (e, c): (float(rng.choice(values)), float(rng.choice(values)))
                    for e in epochs
                    for c in (3, 8)
                },
                base={e: (0.5, {3: 0.5, 8: 0.5}) for e in epochs},
                seed=i,
            )
        )
    agg = ag.aggregate(build(tmp_path, runs), rules=rules, after_convergence=after)
    q = agg.quality
    rep = q[(q["kind"] == "repaired") & q["qual"].notna()]
    seen = 0
    for (run, method, cls, alpha), g in rep.groupby(ag.KEYS):
        conv = int(g["convergence_epoch"].iloc[0])
        ref = conv if rules == "text" else 20
        if rules == "text" and after == "exclude":
            g = g[g["epoch"] <= conv]
        rounded = np.round(g["qual"].to_numpy(), ag.TIE_DECIMALS)
        by_epoch = dict(zip(g["epoch"].tolist(), rounded.tolist(), strict=True))
        top = max(by_epoch.values())
        tied = sorted(e for e, v in by_epoch.items() if v == top)
        best = ref if rules == "text" and ref in tied else tied[0]
        earlier = [v for e, v in by_epoch.items() if e < ref]
        r = agg.switch_points.set_index(ag.KEYS).loc[(run, method, cls, alpha)]
        assert r["best_epoch"] == best and r["best_qual"] == pytest.approx(top, abs=1e-12)
        assert r["tied_epochs"] == (";".join(map(str, tied)) if len(tied) > 1 else "")
        assert r["reference_qual"] == pytest.approx(by_epoch[ref], abs=1e-12)
        assert r["n_compared"] == len(by_epoch)
        if earlier:
            assert r["best_earlier_qual"] == pytest.approx(max(earlier), abs=1e-12)
        else:
            assert pd.isna(r["best_earlier_qual"])
        seen += 1
    assert seen == 12 * 2 * 3
    assert (agg.switch_points["tied_epochs"] != "").sum() >= 5  # ties did occur


def test_float_noise_is_a_tie_after_rounding_to_12_decimals(tmp_path: Path) -> None:
    # 0.2*0.05 + 0.8*0.2 = 0.17000000000000004 and 0.2*0.25 + 0.8*0.15 = 0.16999999999999998:
    # equal in exact arithmetic, so the convergence checkpoint must win the tie.
    assert 0.2 * 0.05 + 0.8 * 0.2 > 0.2 * 0.25 + 0.8 * 0.15
    t = pattern_run("noise", "post")
    t.repaired[(5, 3)] = (0.05, 0.2)
    t.repaired[(10, 3)] = (0.25, 0.15)
    t.repaired[(1, 3)] = (0.0, 0.0)
    t.repaired[(15, 3)] = (0.0, 0.0)
    agg = ag.aggregate(build(tmp_path, [t]), alphas=(0.2,))
    r = sp_row(agg, "noise", 3, 0.2)
    assert (r["best_epoch"], r["pattern"], r["tied_epochs"]) == (10, ag.POST, "5;10")


# --- missing, unfinished, damaged ---------------------------------------------------------------


def test_missing_earlier_checkpoint_is_partial_and_still_counted(tmp_path: Path) -> None:
    t = two_class_run()
    del t.repaired[(5, 3)]  # the checkpoint that wins for alpha 0.5 and 0.8
    agg = ag.aggregate(build(tmp_path, [t]))
    run = "digits-small-cnn-s1"
    for alpha in (0.2, 0.5, 0.8):
        r = sp_row(agg, run, 3, alpha)
        assert (r["best_epoch"], r["pattern"], r["status"]) == (10, ag.POST, "partial")
        assert r["missing_epochs"] == "5" and r["n_compared"] == 2
    top = agg.patterns[agg.patterns.scope == "dataset"]
    assert top["compared"].tolist() == [2, 2, 2] and top["incomplete"].tolist() == [0, 0, 0]
    p = agg.problems
    assert p[p.kind == pb.PARTIAL]["detail"].tolist() == ["no repaired record at epoch 5"]


def test_missing_convergence_repair_is_incomplete_and_left_out(tmp_path: Path) -> None:
    t = two_class_run()
    del t.repaired[(10, 8)]
    agg = ag.aggregate(build(tmp_path, [t]))
    run = "digits-small-cnn-s1"
    for alpha in (0.2, 0.5, 0.8):
        r = sp_row(agg, run, 8, alpha)
        assert r["status"] == pb.INCOMPLETE and r["pattern"] == ""
        assert pd.isna(r["best_epoch"]) and r["n_compared"] == 0 and r["missing_epochs"] == "10"
        assert sp_row(agg, run, 3, alpha)["status"] == "ok"
    fine = agg.patterns[agg.patterns.scope == "model-class"].set_index(["repair_class", "alpha"])
    assert fine.loc[("8", 0.5), "incomplete"] == 1 and fine.loc[("8", 0.5), "compared"] == 0
    top = agg.patterns[agg.patterns.scope == "dataset"]
    assert top["compared"].tolist() == [1, 1, 1] and top["incomplete"].tolist() == [1, 1, 1]
    inc = agg.problems[agg.problems.kind == pb.INCOMPLETE]
    assert inc["key"].tolist() == [f"{SWEEP}/{run}/ class 8"]
    assert "convergence checkpoint (epoch 10)" in inc["detail"].iloc[0]


def test_unfinished_run_is_listed_and_its_pairs_are_partial(tmp_path: Path) -> None:
    agg = ag.aggregate(build(tmp_path, [two_class_run(success=False)]))
    p = agg.problems
    assert p[p.kind == pb.UNFINISHED]["key"].tolist() == [f"{SWEEP}/digits-small-cnn-s1/"]
    assert set(agg.switch_points["status"]) == {"partial"}
    assert not agg.switch_points["run_complete"].any()
    assert not agg.loaded.records["run_complete"].any()
    # Patterns are still computed from what is there.
    assert sp_row(agg, "digits-small-cnn-s1", 3, 0.8)["pattern"] == ag.PRE


def test_run_that_has_only_started_is_incomplete(tmp_path: Path) -> None:
    started = RunTree(
        run="late",
        convergence=10,
        epochs=[],
        classes=[3],
        repaired={},
        success=False,
        summary=False,
        seed=7,
    )
    agg = ag.aggregate(build(tmp_path, [two_class_run(), started]))
    r = sp_row(agg, "late", 3, 0.5)
    assert r["status"] == pb.INCOMPLETE and "convergence epoch unknown" in r["note"]
    kinds = set(agg.problems[agg.problems.run == "late"]["kind"])
    assert kinds == {pb.UNFINISHED, pb.INCOMPLETE}  # no summary is normal while training
    # A sweep where nothing has been evaluated yet still says so, per class and alpha.
    alone = ag.aggregate(build(tmp_path / "alone", [started]))
    assert alone.loaded.records.empty
    assert alone.switch_points["status"].tolist() == [pb.INCOMPLETE] * 3
    top = alone.patterns[alone.patterns.scope == "dataset"]
    assert top["incomplete"].tolist() == [1, 1, 1] and top["compared"].tolist() == [0, 0, 0]


def test_truncated_and_unparsable_json_are_damaged_not_fatal(tmp_path: Path) -> None:
    store = build(tmp_path, [two_class_run()])
    run = "digits-small-cnn-s1"
    pre = results.repair_metrics(SWEEP, run, 5, 3, None)
    conv = results.repair_metrics(SWEEP, run, 10, 8, None)
    store.write_bytes(pre, store.read_bytes(pre)[:40])  # a torn write
    store.write_bytes(conv, b"[1, 2]")
    agg = ag.aggregate(store)
    damaged = agg.problems[agg.problems.kind == pb.DAMAGED].set_index("key")["detail"]
    assert damaged.to_dict() == {
        conv: "not a JSON object",
        pre: "not valid JSON (truncated or partly written)",
    }
    assert len(agg.loaded.records) == 4 + 8 - 2
    assert sp_row(agg, run, 3, 0.8)["status"] == "partial"
    assert sp_row(agg, run, 8, 0.8)["status"] == pb.INCOMPLETE


def test_invalid_record_is_damaged_with_the_field_named(tmp_path: Path) -> None:
    store = build(tmp_path, [two_class_run()])
    key = results.base_metrics(SWEEP, "digits-small-cnn-s1", 5)
    data = json.loads(store.read_bytes(key))
    data["accuracy"] = "high"
    store.write_bytes(key, json.dumps(data).encode())
    agg = ag.aggregate(store)
    row = agg.problems[agg.problems.kind == pb.DAMAGED].iloc[0]
    assert row["key"] == key and "accuracy" in row["detail"]


@pytest.mark.parametrize("version", [0, 3])
def test_other_schema_versions_are_reported_not_read(tmp_path: Path, version: int) -> None:
    store = build(tmp_path, [two_class_run()])
    key = results.repair_metrics(SWEEP, "digits-small-cnn-s1", 10, 3, None)
    data = json.loads(store.read_bytes(key))
    data["schema_version"] = version
    if version > 1:
        data["a_field_from_the_future"] = 1  # a newer schema is never a "damaged" record
    store.write_bytes(key, json.dumps(data).encode())
    agg = ag.aggregate(store)
    p = agg.problems[agg.problems.kind == pb.SCHEMA]
    assert p["key"].tolist() == [key]
    assert f"schema_version {version}" in p["detail"].iloc[0]
    assert sp_row(agg, "digits-small-cnn-s1", 3, 0.5)["status"] == pb.INCOMPLETE


def test_record_in_the_wrong_place_is_misplaced(tmp_path: Path) -> None:
    store = build(tmp_path, [two_class_run()])
    run = "digits-small-cnn-s1"
    src = store.read_bytes(results.repair_metrics(SWEEP, run, 5, 3, None))
    store.write_bytes(results.repair_metrics(SWEEP, run, 1, 3, None), src)  # says epoch 5
    agg = ag.aggregate(store)
    p = agg.problems[agg.problems.kind == pb.MISPLACED]
    assert p["key"].tolist() == [results.repair_metrics(SWEEP, run, 1, 3, None)]
    assert p["detail"].iloc[0] == "the record says epoch 5"


class FlakyStore(FileStore):
    """A store whose bulk read fails for some keys, as a flaky S3 endpoint would."""

    def __init__(self, root: Path, failing: set[str]) -> None:
        super().__init__(root)
        self.failing = failing
        self.bulk_reads = 0
        self.single_reads = 0  # reads outside read_many
        self._in_bulk = False

    def read_many(
        self, keys: Iterable[str], max_bytes: Callable[[str], int | None] | None = None
    ) -> dict[str, bytes | Exception]:
        self.bulk_reads += 1
        self._in_bulk = True
        try:
            out = super().read_many(keys, max_bytes)
        finally:
            self._in_bulk = False
        for k in self.failing & set(out):
            out[k] = StoreError(f"{k}: 503 Slow Down\n(after 5 attempts)")
        return out

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        self.single_reads += not self._in_bulk
        return super().read_bytes(key, max_bytes)


def test_unreadable_objects_are_listed_and_reads_are_one_bulk_call(tmp_path: Path) -> None:
    build(tmp_path, [two_class_run()])
    run = "digits-small-cnn-s1"
    bad = results.summary_json(SWEEP, run)
    store = FlakyStore(tmp_path / "results", {bad})
    agg = ag.aggregate(store)
    assert store.bulk_reads == 1 and store.single_reads == 0
    p = agg.problems
    row = p[p.kind == pb.UNREADABLE].iloc[0]
    assert (
        row["key"] == bad
        and row["detail"] == f"StoreError: {bad}: 503 Slow Down (after 5 attempts)"
    )
    # Without the summary the convergence epoch comes from the records, so nothing is lost.
    assert sp_row(agg, run, 3, 0.8)["pattern"] == ag.PRE


def test_store_that_cannot_read_anything_is_bad_input(tmp_path: Path) -> None:
    build(tmp_path, [two_class_run()])
    keys = set(FileStore(tmp_path / "results").list())
    with pytest.raises(BadInput, match=r"cannot read any result \(.*503 Slow Down"):
        ag.aggregate(FlakyStore(tmp_path / "results", keys))


def test_missing_summary_uses_the_records_convergence_epoch(tmp_path: Path) -> None:
    agg = ag.aggregate(build(tmp_path, [two_class_run(summary=False)]))
    assert agg.problems["kind"].tolist() == [pb.NO_SUMMARY]
    assert sp_row(agg, "digits-small-cnn-s1", 3, 0.5)["best_epoch"] == 5
    # checkpoint epochs are then those with a base record
    assert agg.loaded.runs["checkpoint_epochs"].iloc[0] == [1, 5, 10, 15]


def test_summary_wins_when_records_disagree_on_convergence(tmp_path: Path) -> None:
    store = build(tmp_path, [two_class_run()])
    run = "digits-small-cnn-s1"
    key = results.summary_json(SWEEP, run)
    data = json.loads(store.read_bytes(key))
    data["convergence_epoch"] = 5
    store.write_bytes(key, json.dumps(data).encode())
    agg = ag.aggregate(store)
    p = agg.problems[agg.problems.kind == pb.INCONSISTENT]
    assert p["detail"].tolist() == [
        "records say convergence epoch 10 but train/summary.json says 5; using the summary"
    ]
    r = sp_row(agg, run, 3, 0.5)
    assert (r["convergence_epoch"], r["best_epoch"], r["pattern"]) == (5, 5, ag.POST)


def test_class_absent_from_test_set_is_incomplete(tmp_path: Path) -> None:
    store = build(tmp_path, [two_class_run()])
    key = results.repair_metrics(SWEEP, "digits-small-cnn-s1", 10, 3, None)
    data = json.loads(store.read_bytes(key))
    data["per_class_accuracy"][3] = None
    store.write_bytes(key, json.dumps(data).encode())
    agg = ag.aggregate(store)
    r = sp_row(agg, "digits-small-cnn-s1", 3, 0.5)
    assert r["status"] == pb.INCOMPLETE and "Acc_3 undefined" in r["note"]


@pytest.mark.parametrize(
    ("rules", "after"), [("text", "exclude"), ("text", "include"), ("notebook", "exclude")]
)
def test_units_found_whole_by_counts_get_what_the_epoch_by_epoch_check_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rules: ag.Rules, after: str
) -> None:
    """The grouped counts that pass whole units without a loop must agree with the
    epoch-by-epoch rules on every kind of unit: whole, missing an earlier or the
    convergence or the last checkpoint, Acc_c undefined, after convergence, unfinished."""
    cases = [
        two_class_run(run="whole"),
        two_class_run(run="unfinished", success=False),
        two_class_run(run="no-summary", summary=False),
    ]
    for name, epoch, cls in (("early", 5, 3), ("conv", 10, 8), ("last", 15, 3)):
        t = two_class_run(run=f"missing-{name}")
        del t.repaired[(epoch, cls)]
        cases.append(t)
    store = build(tmp_path, cases)
    for run, epoch in (("whole", 15), ("missing-early", 10)):  # Acc_3 undefined there
        key = results.repair_metrics(SWEEP, run, epoch, 3, None)
        data = json.loads(store.read_bytes(key))
        data["per_class_accuracy"][3] = None
        store.write_bytes(key, json.dumps(data).encode())

    fast = ag.aggregate(store, rules=rules, after_convergence=after).switch_points
    monkeypatch.setattr(
        unit_status, "_whole_units", lambda one, units, *a: np.zeros(len(units), bool)
    )
    slow = ag.aggregate(store, rules=rules, after_convergence=after).switch_points
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)
    assert {"ok", pb.PARTIAL, pb.INCOMPLETE} <= set(fast["status"])


# --- where the sweep is ---------------------------------------------------------------------------


def test_uri_of_one_sweep_folder_gives_the_same_answer(tmp_path: Path) -> None:
    store = build(tmp_path, paper_table1_runs())
    whole = ag.aggregate(store)
    one = ag.aggregate(FileStore(tmp_path / "results" / SWEEP))
    assert one.sweep == SWEEP and one.loaded.prefix == ""
    pd.testing.assert_frame_equal(whole.switch_points, one.switch_points)
    pd.testing.assert_frame_equal(whole.patterns, one.patterns)
    cols = [c for c in whole.loaded.records.columns if c != "key"]
    pd.testing.assert_frame_equal(whole.loaded.records[cols], one.loaded.records[cols])


def test_several_sweeps_need_a_choice(tmp_path: Path) -> None:
    store = build(tmp_path, [two_class_run()], sweep="one")
    write_tree(store, "two", [pattern_run("r", "pre")])
    with pytest.raises(BadInput, match=r"holds 2 sweeps \(one, two\): pick one with --sweep"):
        ag.aggregate(store)
    assert ag.aggregate(store, sweep="two").switch_points["run"].unique().tolist() == ["r"]
    with pytest.raises(BadInput, match="no sweep 'three' here; found: one, two"):
        ag.aggregate(store, sweep="three")


def test_empty_or_missing_folder_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not results")
    for where in (tmp_path / "empty", tmp_path / "nowhere"):
        with pytest.raises(BadInput, match="no results found"):
            ag.aggregate(FileStore(where))


def test_alphas_are_checked() -> None:
    assert ag.check_alphas([0.8, 0.2, 0.2]) == (0.2, 0.8)
    with pytest.raises(BadInput, match=r"--alpha 1\.5"):
        ag.check_alphas([0.5, 1.5])
    with pytest.raises(BadInput, match="at least one"):
        ag.check_alphas([])


def test_same_tree_gives_identical_tables(tmp_path: Path) -> None:
    store = build(tmp_path, [*paper_table1_runs(), two_class_run()])
    a, b = ag.aggregate(store), ag.aggregate(store)
    for name in ("quality", "switch_points", "patterns", "problems"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))


def test_tables_written_round_trip(tmp_path: Path) -> None:
    agg = ag.aggregate(
        build(
            tmp_path,
            [
                two_class_run(),
                typed_run(
                    "other",
                    {3: "always-pre"},
                    seed=2,
                    dataset="digits",
                    model="small_cnn",
                    n_classes=10,
                ),
            ],
        )
    )
    out = tmp_path / "out"
    written = output.write_tables(agg, out)
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "headline.csv",
            "effects.csv",
            "methods.csv",
            "records.parquet",
            "records.csv",
            "quality.csv",
            "switch_points.csv",
            "patterns.csv",
            "runs.csv",
            "problems.csv",
        ]
    )
    parquet = pd.read_parquet(out / "records.parquet")
    csv = pd.read_csv(out / "records.csv")
    assert len(parquet) == len(csv) == len(agg.loaded.records)
    assert parquet["acc_class_3"].tolist() == pytest.approx(
        csv["acc_class_3"].tolist(), nan_ok=True
    )
    sp = pd.read_csv(out / "switch_points.csv")
    assert sp[(sp.run == "other") & (sp.alpha == 0.5)]["pattern"].tolist() == [ag.PRE]
    q = pd.read_csv(out / "quality.csv")
    assert len(q) == len(agg.quality)
