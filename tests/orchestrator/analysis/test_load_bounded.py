"""The loader's bounds, in process: what a damaged or hostile record becomes (one problem
entry, the record left out or counted once) and that the tables never change because of a
copy. The same trees run as subprocesses under a memory cap in cli/test_hostile_trees.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from early_repair_testing.aggregate_tree import pattern_run, write_tree

from orchestrator.analysis.load import load
from orchestrator.results import layout
from orchestrator.results.records import dump_run_records, load_run_records
from orchestrator.store.file import FileStore

SWEEP = "sw"


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    s = FileStore(tmp_path / "tree")
    write_tree(s, SWEEP, [pattern_run("r-1", "pre", seed=1), pattern_run("r-2", "post", seed=2)])
    return s


def rewrite(store: FileStore, key: str, **changes: object) -> None:
    rec = json.loads(store.read_bytes(key))
    rec.update(changes)
    store.write_bytes(key, json.dumps(rec).encode())


BASE5 = layout.base_metrics(SWEEP, "r-1", 5)
REPAIR5 = layout.repair_metrics(SWEEP, "r-1", 5, 3, None)  # repair/class_3 (first layout)


@pytest.mark.parametrize(
    ("change", "kind", "says"),
    [
        ({"dataset": "d" * 300}, "bad-value", "dataset is 300 characters long (at most 256)"),
        ({"per_class_accuracy": [0.5] * 1001}, "bad-value", "1,001 values (at most 1,000)"),
        ({"per_class_accuracy": [0.5] * 11}, "bad-value", "11 values but the run's other"),
        ({"seed": 10**30}, "damaged", "seed"),
        ({"epoch": -(2**64)}, "damaged", "epoch"),
    ],
)
def test_out_of_bounds_records_are_left_out(store, change, kind, says) -> None:
    rewrite(store, BASE5, **change)
    loaded = load(store)
    hit = [p for p in loaded.problems if p.key == BASE5]
    assert [p.kind for p in hit] == [kind] and says in hit[0].detail, hit
    assert BASE5 not in set(loaded.records["key"])


def test_a_json_key_given_twice_is_a_duplicate_and_left_out(store) -> None:
    text = store.read_bytes(REPAIR5).decode().rstrip().rstrip("}")
    store.write_bytes(REPAIR5, (text + ', "accuracy": 1.0}').encode())
    loaded = load(store)
    hit = [p for p in loaded.problems if p.key == REPAIR5]
    assert [p.kind for p in hit] == ["duplicate"] and "'accuracy' appears twice" in hit[0].detail
    assert REPAIR5 not in set(loaded.records["key"])


def test_two_keys_naming_one_record_count_it_once_or_not_at_all(store) -> None:
    clean = load(store).records.drop(columns="key")
    alias = layout.repair_metrics(SWEEP, "r-1", 5, 3, "arachne")  # repair/arachne/class_3
    store.write_bytes(alias, store.read_bytes(REPAIR5))
    loaded = load(store)
    dup = [p for p in loaded.problems if p.kind == "duplicate"]
    assert len(dup) == 1 and "counted once" in dup[0].detail
    assert {dup[0].key, *loaded.records["key"]} >= {alias, REPAIR5}  # one kept, one listed
    assert loaded.records.drop(columns="key").equals(clean)
    rewrite(store, alias, accuracy=1.0)  # now the copies disagree: neither counts
    loaded = load(store)
    assert sorted(p.key for p in loaded.problems if p.kind == "duplicate") == sorted(
        [alias, REPAIR5]
    )
    assert not loaded.records["key"].isin([alias, REPAIR5]).any()


def test_a_records_file_holding_a_record_twice_is_not_used(tmp_path: Path) -> None:
    import pyarrow as pa

    store = FileStore(tmp_path / "tree")
    runs = [pattern_run("r-1", "pre", seed=1), pattern_run("r-2", "post", seed=2)]
    write_tree(store, SWEEP, runs, packed=True)
    clean = load(store).records
    key = layout.records(SWEEP, "r-1")
    packed = load_run_records(store.read_bytes(key))
    fake = packed.table.set_column(
        packed.table.schema.get_field_index("accuracy"),
        "accuracy",
        pa.array([1.0] * len(packed.table)),
    )
    rows = pa.concat_tables([fake, packed.table]).drop_columns(["key", "predictions"]).to_pylist()
    keys = packed.keys * 2
    store.write_bytes(key, dump_run_records(rows, keys, packed.files))
    loaded = load(store)
    assert [(p.kind, p.key) for p in loaded.problems] == [("duplicate", key)]
    assert loaded.records.equals(clean)  # the run's single files were read instead
