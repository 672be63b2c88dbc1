"""Reading a sweep: one records.arrow per finished run gives exactly the tables of reading
every record's own file; both repair layouts; impossible values and unparsable records are
problems, not results."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import pytest
from early_repair_testing.aggregate_tree import (
    RunTree,
    paper_table1_runs,
    pattern_run,
    typed_run,
    write_tree,
)

from orchestrator.analysis import aggregate as ag
from orchestrator.analysis import problems as pb
from orchestrator.results import layout
from orchestrator.results.records import dump_run_records, load_run_records
from orchestrator.store.file import FileStore

FRAMES = ("quality", "switch_points", "patterns", "effects", "methods", "headline", "problems")


class CountingStore(FileStore):
    """Counts what the aggregator asks of the store."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = 0
        self.lists: list[tuple[str, str | None]] = []

    def list(self, prefix: str = "", delimiter: str | None = None) -> list[str]:
        self.lists.append((prefix, delimiter))
        return super().list(prefix, delimiter)

    def read_many(
        self, keys: Iterable[str], max_bytes: Callable[[str], int | None] | None = None
    ) -> dict[str, bytes | Exception]:
        keys = list(keys)
        self.reads += len(keys)
        return super().read_many(keys, max_bytes)


def mixed_runs() -> list[RunTree]:
    """Finished runs of both layouts and two methods, an unfinished run, a legacy one."""
    runs = paper_table1_runs()
    two = typed_run(
        "two-methods", {3: "always-pre"}, seed=7, dataset="digits", model="small_cnn", n_classes=10
    )
    for (e, c), v in list(two.repaired.items()):
        two.repaired[(e, c, "other")] = v
    two.method_level = True
    runs.append(two)
    runs.append(pattern_run("unfinished", "pre", seed=8))
    runs[-1].success = False
    return runs


def assert_same(a: ag.Aggregation, b: ag.Aggregation) -> None:
    pd.testing.assert_frame_equal(a.loaded.records, b.loaded.records, check_exact=True)
    pd.testing.assert_frame_equal(a.loaded.runs, b.loaded.runs, check_exact=True)
    for name in FRAMES:
        pd.testing.assert_frame_equal(
            getattr(a, name), getattr(b, name), check_exact=True, obj=name
        )
    assert a.sentences == b.sentences


def test_packed_runs_give_exactly_the_per_file_tables(tmp_path: Path) -> None:
    packed = CountingStore(tmp_path / "packed")
    write_tree(packed, "sw", mixed_runs(), packed=True)
    plain = CountingStore(tmp_path / "plain")
    write_tree(plain, "sw", mixed_runs(), packed=False)
    fast = ag.aggregate(packed)
    assert fast.loaded.packed_runs == 11  # every finished run; "unfinished" has no _SUCCESS
    assert_same(fast, ag.aggregate(plain))
    assert_same(fast, ag.aggregate(packed, packed=False))  # the files are still there
    # one object per finished run (+ sweep.json), the unfinished run's files one by one
    unfinished = [k for k in packed.list("sw/unfinished") if k.endswith(".json")]
    packed.reads = 0
    ag.aggregate(packed)
    assert packed.reads == 1 + 11 + len(unfinished)
    keys = set(fast.loaded.records["key"])
    assert "sw/two-methods/epoch_005/repair/other/class_3/metrics.json" in keys
    assert "sw/two-methods/epoch_005/repair/arachne/class_3/metrics.json" in keys
    assert "sw/rsna-densenet121-s1024/epoch_005/repair/class_1/metrics.json" in keys


def test_listing_rolls_up_epoch_folders_and_lists_only_unfinished_runs(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "results")
    write_tree(store, "sw", mixed_runs(), packed=True)
    store.lists = []
    ag.aggregate(store)
    assert store.lists == [("", layout.RUN_FILES_DELIMITER), ("sw/unfinished/", None)]


def test_damaged_records_file_is_a_problem_and_the_single_files_are_read(tmp_path: Path):
    store = FileStore(tmp_path / "results")
    write_tree(store, "sw", mixed_runs(), packed=True)
    plain = ag.aggregate(store, packed=False)
    key = layout.records("sw", "gtsrb-vgg16-s2048")
    store.write_bytes(key, store.read_bytes(key)[:300])  # torn
    agg = ag.aggregate(store)
    assert agg.loaded.packed_runs == 10
    p = agg.problems[agg.problems["kind"] == pb.DAMAGED]
    assert p["key"].tolist() == [key]
    assert "reading the run's single files instead" in p["detail"].iloc[0]
    pd.testing.assert_frame_equal(agg.loaded.records, plain.loaded.records)
    pd.testing.assert_frame_equal(agg.switch_points, plain.switch_points)


def test_records_file_of_a_run_without_success_is_ignored(tmp_path: Path) -> None:
    """A finished run reopened for a new class loses _SUCCESS; its old records.arrow does
    not hold the new class, so the single files are read."""
    store = FileStore(tmp_path / "results")
    t = pattern_run("reopened", "pre")
    write_tree(store, "sw", [t], packed=True)
    store.delete_prefix(layout.success("sw", "reopened"))
    t.classes, t.success, t.packed = [3, 4], False, False
    t.repaired.update({(e, 4): (0.5, 0.5) for e in t.epochs})
    write_tree(store, "sw", [t])
    agg = ag.aggregate(store)
    assert agg.loaded.packed_runs == 0
    assert set(agg.switch_points["repair_class"]) == {3, 4}
    assert (agg.switch_points["status"] == pb.PARTIAL).all()  # not finished


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize(
    ("field", "value", "detail"),
    [
        ("accuracy", float("nan"), "accuracy is nan"),
        ("f1_macro", float("inf"), "f1_macro is inf"),
        ("accuracy", 1.5, "accuracy 1.5 is not a fraction (0..1)"),
        ("auc_macro", -0.1, "auc_macro -0.1 is not a fraction (0..1)"),
        ("rr", 150.0, "rr 150.0 is not a percentage (0..100)"),
        ("seconds", -1.0, "seconds -1.0 is not a duration (at least 0)"),
        ("per_class_accuracy", [0.5, 1.2], "per_class_accuracy[1] 1.2 is not a fraction"),
        ("per_class_accuracy", [0.5, float("nan")], "per_class_accuracy holds NaN"),
    ],
)
def test_impossible_values_are_problems(tmp_path: Path, packed, field, value, detail) -> None:
    store = FileStore(tmp_path / "results")
    run = typed_run("r", {1: "always-pre"}, seed=1, dataset="d", model="m", n_classes=2)
    write_tree(store, "sw", [run])
    key = layout.repair_metrics("sw", "r", 5, 1, None)
    data = json.loads(store.read_bytes(key))
    data[field] = value
    store.write_bytes(key, json.dumps(data).encode())  # Python writes NaN and Infinity
    if packed:  # the same record reaching the aggregator inside records.arrow
        store.write_bytes(layout.records("sw", "r"), _repack(store, "sw", "r"))
    agg = ag.aggregate(store)
    assert agg.loaded.packed_runs == int(packed)
    bad = agg.problems[agg.problems["kind"] == pb.BAD_VALUE]
    assert bad["key"].tolist() == [key]
    assert bad["detail"].iloc[0].startswith(detail)
    assert key not in set(agg.loaded.records["key"])
    sp = agg.switch_points
    assert set(sp["status"]) == {pb.PARTIAL}  # compared without epoch 5


def _repack(store: FileStore, sweep: str, run: str) -> bytes:
    """records.arrow from the run's files as they are now (bad values included)."""
    prefix = f"{sweep}/{run}/"
    keys = [
        k for k in store.list(prefix) if (p := layout.parse(k)) and p.kind in ("base", "repair")
    ]
    records = [json.loads(store.read_bytes(k)) for k in keys]
    files = {r: store.read_bytes(prefix + r) for r in ("run.json", "train/summary.json")}
    return dump_run_records(records, [k[len(prefix) :] for k in keys], files)


@pytest.mark.parametrize(
    ("blob", "detail"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply to parse"),
        (
            b'{"schema_version": 1, "sweep": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
            "nested too deeply to parse",
        ),
        (b"\xff\xfe not text", "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
def test_unparsable_records_are_damaged(tmp_path: Path, blob: bytes, detail: str) -> None:
    store = FileStore(tmp_path / "results")
    write_tree(store, "sw", [pattern_run("r", "pre")])
    key = layout.repair_metrics("sw", "r", 5, 3, None)
    store.write_bytes(key, blob)
    agg = ag.aggregate(store)
    row = agg.problems[agg.problems["key"] == key].iloc[0]
    assert (row["kind"], row["detail"][: len(detail)]) == (pb.DAMAGED, detail)


def test_record_of_another_method_in_a_method_folder_is_misplaced(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "results")
    t = pattern_run("r", "pre")
    t.method_level = True
    write_tree(store, "sw", [t])
    src = store.read_bytes(layout.repair_metrics("sw", "r", 5, 3, "arachne"))
    wrong = layout.repair_metrics("sw", "r", 5, 3, "other")
    store.write_bytes(wrong, src)
    agg = ag.aggregate(store)
    p = agg.problems[agg.problems["kind"] == pb.MISPLACED]
    assert p["key"].tolist() == [wrong]
    assert p["detail"].iloc[0] == "the record says method 'arachne'"


def test_records_file_round_trip_and_refusals() -> None:
    records = [
        {
            "schema_version": 1,
            "sweep": "s",
            "run": "r",
            "dataset": "d",
            "model": "m",
            "seed": 1,
            "epoch": 5,
            "convergence_epoch": 5,
            "kind": "base",
            "accuracy": 0.5,
            "per_class_accuracy": [0.5, None],
            "f1_macro": 0.5,
            "recall_macro": 0.5,
            "auc_macro": None,
        },
    ]
    data = dump_run_records(records, ["epoch_005/base/metrics.json"], {"run.json": b"{}"})
    back = load_run_records(data)
    assert back.keys == ["epoch_005/base/metrics.json"] and back.files == {"run.json": b"{}"}
    (rec,) = back.records()
    assert rec["per_class_accuracy"] == [0.5, None] and rec["method"] is None
    assert rec == {**{k: None for k in rec}, **records[0]}
    for bad in (b"", data[:100], b"ARROW1" + b"\0" * 50):
        with pytest.raises(ValueError, match="not an Arrow IPC file"):
            load_run_records(bad)
    with pytest.raises(ValueError):
        dump_run_records([{**records[0], "kind": "other"}], ["x"])
    with pytest.raises(ValueError, match="1 records but 0 keys"):
        dump_run_records(records, [])


def test_layout_parses_both_repair_layouts() -> None:
    old = layout.parse("sw/r/epoch_005/repair/class_3/metrics.json")
    new = layout.parse("sw/r/epoch_005/repair/fast-v2/class_3/metrics.json")
    assert (old.kind, old.epoch, old.repair_class, old.method) == ("repair", 5, 3, "arachne")
    assert (new.kind, new.repair_class, new.method) == ("repair", 3, "fast-v2")
    assert layout.parse("sw/r/epoch_005/repair/class_3/class_4/metrics.json") is None
    assert layout.parse("sw/r/records.arrow").kind == "records"
    assert (
        layout.repair_metrics("sw", "r", 5, 3, None) == "sw/r/epoch_005/repair/class_3/metrics.json"
    )
    assert (
        layout.repair_metrics("sw", "r", 5, 3)
        == "sw/r/epoch_005/repair/arachne/class_3/metrics.json"
    )
    assert layout.repair_metrics("sw", "r", 5, 3, "m") == (
        "sw/r/epoch_005/repair/m/class_3/metrics.json"
    )
    assert layout.run_folder("sw/r/epoch_") == ("sw", "r")
    assert layout.run_folder("r/epoch_", root=False) == (None, "r")
    assert layout.run_folder("sw/sweep.json") is None


def test_write_run_records_packs_what_the_run_left_and_refuses_damage(tmp_path: Path) -> None:
    """The trainer's last step: every record of the run in one object - or none at all when
    one of them is damaged, so the aggregator reads the files and reports it."""
    from orchestrator.results.consolidate import write_run_records

    store = FileStore(tmp_path / "results")
    t = pattern_run("r", "pre")
    write_tree(store, "sw", [t])
    key = write_run_records(store, "sw", "r")
    assert key == layout.records("sw", "r")
    packed = load_run_records(store.read_bytes(key))
    singles = sorted(k for k in store.list("sw/r") if k.endswith("metrics.json"))
    assert sorted(f"sw/r/{k}" for k in packed.keys) == singles
    by_key = dict(zip(packed.keys, packed.records(), strict=True))
    for k in singles:
        assert by_key[k.removeprefix("sw/r/")] == json.loads(store.read_bytes(k))
    assert packed.files["run.json"] == store.read_bytes("sw/r/run.json")
    assert packed.files["train/summary.json"] == store.read_bytes("sw/r/train/summary.json")
    store.write_bytes(layout.base_metrics("sw", "r", 5), b'{"schema_version": 1, "sw')
    assert write_run_records(store, "sw", "r") is None
    assert not store.exists(key)  # the old records.arrow is gone too
