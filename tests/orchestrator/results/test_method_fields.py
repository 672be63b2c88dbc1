"""Method-specific record fields (provable's certified and solver status, neurecover's
reference epoch, a method's note): left out of records and packed files of methods that do
not write them, kept through the packed records.arrow of those that do."""

from __future__ import annotations

import pyarrow as pa
from early_repair_testing.packed_records import RECORD

from orchestrator.results.records import (
    METHOD_FIELDS,
    MetricsRecord,
    dump_run_records,
    load_run_records,
)


def test_a_record_without_method_fields_does_not_mention_them() -> None:
    """A record of arachne, say, dumps exactly the fields it had before."""
    dumped = MetricsRecord.model_validate({**RECORD, "method": "arachne"}).model_dump(mode="json")
    assert not set(METHOD_FIELDS) & set(dumped)


def test_packed_records_leave_out_unused_method_columns_and_read_back_as_none() -> None:
    """A run without such methods packs no such columns (its bytes are those of before);
    reading it back gives the fields as absent/None."""
    data = dump_run_records([{**RECORD, "method": "arachne"}], ["a"])
    table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
    assert not set(METHOD_FIELDS) & set(table.schema.names)
    (rec,) = load_run_records(data).records()
    assert rec["method"] == "arachne" and not set(METHOD_FIELDS) & set(rec)


def test_packed_records_keep_method_fields() -> None:
    """provable's and neurecover's fields survive packing, next to a record without them."""
    records = [
        {
            **RECORD,
            "method": "provable",
            "certified": False,
            "solver_status": "infeasible",
            "method_note": "program infeasible: the patch minimises the total violation",
        },
        {**RECORD, "method": "neurecover", "reference_epoch": 0},
        {**RECORD, "method": "arachne"},
    ]
    back = load_run_records(dump_run_records(records, ["a", "b", "c"])).records()
    assert back[0]["certified"] is False and back[0]["solver_status"] == "infeasible"
    assert back[0]["method_note"].startswith("program infeasible")
    assert back[1]["reference_epoch"] == 0 and "certified" not in back[1]
    assert not set(METHOD_FIELDS) & set(back[2])
