"""``damaged_tables``: Arrow's full check of many records.arrow tables at once finds exactly
the damaged ones, with what ``load_run_records`` would have said, whatever their columns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from early_repair_testing.packed_records import RECORD, offsets_past_values

from orchestrator.results.records import damaged_tables, dump_run_records, load_run_records

BASE = {**RECORD, "per_class_accuracy": [0.5, 0.5]}
PREDICTED = [np.array([0, 1, 1, 0], dtype=np.uint16), np.array([1, 1, 0, 0], dtype=np.uint16)]


def packed(method: str) -> bytes:
    """Two records of ``method``; provable's add method columns arachne's file lacks."""
    extra = {"certified": True, "solver_status": "optimal"} if method == "provable" else {}
    records = [{**BASE, "method": method, **extra}, {**BASE, "epoch": 6, "method": method, **extra}]
    return dump_run_records(records, ["a", "b"], predictions=PREDICTED, test_labels=[0, 1, 0, 1])


def unchecked(data: bytes) -> Any:
    return load_run_records(data, complete=False, checked=False).table


@pytest.mark.parametrize("bad_at", [0, 2, 3])
def test_the_damaged_tables_are_found_among_sound_ones_of_two_column_sets(bad_at: int) -> None:
    files = [packed("arachne"), packed("provable"), packed("arachne"), packed("provable")]
    assert unchecked(files[0]).column_names != unchecked(files[1]).column_names
    files[bad_at] = offsets_past_values(files[bad_at])
    with pytest.raises(ValueError) as checked:
        load_run_records(files[bad_at], complete=False)
    found = damaged_tables([unchecked(f) for f in files])
    assert found == {bad_at: str(checked.value)}
    assert "list offsets" in found[bad_at]


def test_sound_tables_pass_and_none_is_nothing() -> None:
    files = [packed("arachne"), packed("provable"), packed("arachne")]
    assert damaged_tables([unchecked(f) for f in files]) == {}
    assert damaged_tables([]) == {}
