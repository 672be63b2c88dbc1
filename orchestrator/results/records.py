"""The records the trainer writes and the aggregator reads (a contract: see the README's
"Results layout").

``MetricsRecord`` is one evaluated model; ``TrainSummary`` marks the training step done;
``RunInfo`` says what ran where. Each carries ``schema_version`` so that a reader can tell
a record of another early-repair version from a damaged one.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from functools import cache
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import from_json

# 2: repair records live under repair/<method>/ (the method became a sweep dimension).
# Version 1 records (repair/class_C/, read as arachne) have the same fields and still read.
SCHEMA_VERSION = 2
READABLE_VERSIONS = frozenset({1, 2})

# What a run computes; a different value in an existing run.json means the stored results
# belong to another experiment. Repair classes are left out: adding a class to a finished
# run only adds outputs, and the trainer computes exactly the missing ones.
EXPERIMENT_FIELDS = ("dataset", "model", "seed", "training", "repair")
CLASS_FIELDS = {"dataset": {"repair_classes"}, "repair": {"classes"}}


# Integers as Arrow and pandas hold them: a record is untrusted data, and 10**30 in one
# would otherwise pass validation and overflow every column it reaches.
Int = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


def experiment(run: dict[str, Any]) -> dict[str, Any]:
    """The part of a ``RunSpec.model_dump(mode="json")`` that names the experiment."""
    return {
        f: {k: v for k, v in run[f].items() if k not in CLASS_FIELDS.get(f, ())}
        if isinstance(run[f], dict)
        else run[f]
        for f in EXPERIMENT_FIELDS
    }


# MetricsRecord fields only some methods write (left out of records and records.arrow
# while None).
METHOD_FIELDS = ("certified", "solver_status", "reference_epoch", "method_note")


def _is_none(value: Any) -> bool:
    return value is None


class MetricsRecord(BaseModel):
    """One evaluated model (a base checkpoint or a repaired one) on the test set.

    Repair-only fields are None for base records. ``rr`` and ``br`` are percentages on
    the repair set (docs/science.md, step 5); ``n_neg``/``n_pos`` are the target negatives and the
    positives the search used.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Int = SCHEMA_VERSION
    sweep: str
    run: str
    dataset: str
    model: str
    seed: Int
    epoch: Int
    # None in records written while the model trained (training.repair_every), before the
    # convergence epoch was known: train/summary.json says it.
    convergence_epoch: Int | None
    kind: Literal["base", "repaired"]
    repair_class: Int | None = None
    method: str | None = None
    accuracy: float
    per_class_accuracy: list[float | None]
    f1_macro: float
    recall_macro: float
    auc_macro: float | None
    rr: float | None = None
    br: float | None = None
    n_neg: Int | None = None
    n_pos: Int | None = None
    fitness: float | None = None
    n_patched: Int | None = None
    n_intact: Int | None = None
    iterations: Int | None = None
    seconds: float | None = None
    # Method-specific, left out of a record while None (so other methods' records keep
    # their bytes): provable's guarantee and its solver's status; the epoch whose weights
    # neurecover compared with (0: the initial weights; None: none was available); what a
    # method did instead of its usual course, in words.
    certified: bool | None = Field(None, exclude_if=_is_none)
    solver_status: str | None = Field(None, exclude_if=_is_none)
    reference_epoch: int | None = Field(None, exclude_if=_is_none)
    method_note: str | None = Field(None, exclude_if=_is_none)
    # Added with repair.accept (records format 3); left out of a record's JSON while None,
    # so base records and older readers see what they saw before. accepted: whether the
    # patch was kept (false: the model is the unrepaired one, the figures above rr..seconds
    # describe the candidate patch); repair_changed: how many repair-set predictions the
    # candidate patch changed (0: a no-op patch).
    accepted: bool | None = Field(None, exclude_if=_is_none)
    repair_changed: int | None = Field(None, exclude_if=_is_none)


# Columns records.arrow holds only when some record of the run has them (so files of runs
# without them keep their bytes), and that older files lack: both read as nulls.
OPTIONAL_FIELDS = (*METHOD_FIELDS, "accepted", "repair_changed")


class ReadinessTrack(BaseModel):
    """What a readiness policy decided for one watched (method, class); both None for a
    policy of the unrepaired model (val-loss)."""

    model_config = ConfigDict(extra="forbid")

    method: str | None
    repair_class: Int | None
    fired_epoch: Int | None  # the epoch at which it fired; None: not within the epochs trained
    ready_epoch: Int | None  # the epoch it picks: best score up to firing (or to the end)
    best_score: float | None  # that epoch's score (higher is better; val-loss: -loss)
    evaluations: Int
    # (epoch, score) of every epoch the track had a score, after firing too (None: not
    # finite); empty in summaries written before it was kept.
    scores: list[tuple[Int, float | None]] = []


class ReadinessOutcome(BaseModel):
    """``training.readiness`` as it played out in one run."""

    model_config = ConfigDict(extra="forbid")

    policy: str
    action: Literal["stop", "record"]
    alpha: float
    tracks: list[ReadinessTrack]
    stopped_training: bool  # action stop, and the policy ended training


class TrainSummary(BaseModel):
    """``train/summary.json``: the training step's completion marker."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Int = SCHEMA_VERSION
    convergence_epoch: Int  # epoch with the lowest validation loss
    checkpoint_epochs: list[Int]  # sorted; every one has checkpoints/epoch_NNN.pt
    # Sorted epochs repaired while training (training.repair_every): records, no checkpoint.
    online_epochs: list[Int] = []
    epochs_trained: Int
    stopped_early: bool
    best_val_loss: float
    seconds: float
    readiness: ReadinessOutcome | None = None  # only with training.readiness


class CostRow(BaseModel):
    """Seconds one stage of a run cost, summed over its occurrences and attempts
    (``trainer_image.costs`` names the stages)."""

    model_config = ConfigDict(extra="forbid")

    stage: str  # data, train, online_features, online_repair, online, evaluate, repair
    method: str | None = None  # the repair method's key, for the repair stages
    count: int  # how many times the stage ran
    wall_s: float
    cpu_s: float  # process CPU time, every thread
    gpu_s: float  # wall time x GPUs held, on CUDA; 0 on CPU


class RunInfo(BaseModel):
    """``run.json``: what ran, with which software and where; rewritten as steps finish."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Int = SCHEMA_VERSION
    run: dict  # RunSpec.model_dump(mode="json")
    versions: dict[str, str]  # python, torch, early-repair, ...
    device: str  # "cpu", "cuda:0 (NVIDIA H200)", ...
    hostname: str
    started: str  # ISO-8601 UTC
    finished: str | None = None
    timings: dict[str, float] = {}  # step name -> seconds
    costs: list[CostRow] = []  # per stage: wall, CPU and GPU seconds


# --- one finished run's records in one object (``layout.records``) -----------------------
# The aggregator reads one object per finished run instead of one per record (a sweep of
# 100,000 records is 2,500 reads instead of 100,000 - on S3, requests are what costs).
# Arrow's IPC file format (Feather v2; ``pandas.read_feather`` opens it): columns typed as
# ``MetricsRecord``'s fields plus the ``key`` of each record's metrics.json relative to the
# run folder, and the run's own small files (run.json, train/summary.json) verbatim in the
# schema metadata, so that a finished run costs one read and gives the same values, bit for
# bit, as reading its files one by one. pyarrow is imported only when these are called.
# Format 2 adds each record's test predictions (column ``predictions``, its predictions.npy;
# null where a record has none) and the run's test labels (metadata ``test_labels``).

# Format 3 adds the columns of ``ADDED_FIELDS`` (null in older files).
RUN_RECORDS_FORMAT = 3
READABLE_FORMATS = frozenset({1, 2, 3})
PREDICTIONS_COLUMN = "predictions"
_META_KEY = b"early-repair.run-records"


class RunRecords(BaseModel):
    """What ``load_run_records`` returns: the records as an Arrow table (column order of
    ``MetricsRecord``, then ``key`` and ``predictions``), the run files that were packed
    with them and the run's test labels (None when it has none)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    table: Any  # pyarrow.Table
    files: dict[str, bytes]  # key relative to the run folder -> bytes
    test_labels: Any = None  # numpy vector, or None

    @property
    def keys(self) -> list[str]:
        return self.table.column("key").to_pylist()

    def records(self) -> list[dict[str, Any]]:
        """The records as ``MetricsRecord.model_dump(mode="json")`` dicts, in file order."""
        rows = self.table.drop_columns(["key", PREDICTIONS_COLUMN]).to_pylist()
        return [MetricsRecord.model_validate(r).model_dump(mode="json") for r in rows]


def _arrow_type(annotation: Any) -> Any:
    import pyarrow as pa

    if get_origin(annotation) is Annotated:  # Int: the bound is pydantic's, not Arrow's
        return _arrow_type(get_args(annotation)[0])
    args = [a for a in get_args(annotation) if a is not type(None)]
    base = (
        args[0] if get_origin(annotation) in (Union, UnionType) and len(args) == 1 else annotation
    )
    if get_origin(base) is Annotated:
        return _arrow_type(get_args(base)[0])
    if get_origin(base) is Literal or base is str:
        return pa.string()
    if get_origin(base) is list:
        return pa.list_(_arrow_type(get_args(base)[0]))
    return {int: pa.int64(), float: pa.float64(), bool: pa.bool_()}[base]


@cache
def run_records_schema() -> Any:
    """The Arrow schema of ``records.arrow``: every ``MetricsRecord`` field, ``key``, then
    (format 2) ``predictions``. (Built once: a reader compares it with thousands of files'
    schemas, and Arrow schemas are immutable.)"""
    import pyarrow as pa

    fields = [
        pa.field(name, _arrow_type(f.annotation), nullable=True)
        for name, f in MetricsRecord.model_fields.items()
    ]
    fields.append(pa.field("key", pa.string()))
    fields.append(pa.field(PREDICTIONS_COLUMN, pa.list_(pa.uint16()), nullable=True))
    return pa.schema(fields)


def predictions_array(vectors: Sequence[Any]) -> Any:
    """The ``predictions`` column of a records table: one label vector (or None) a row."""
    import numpy as np
    import pyarrow as pa

    lengths = np.array([0 if v is None else len(v) for v in vectors], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
    present = [np.asarray(v, dtype=np.uint16) for v in vectors if v is not None]
    values = np.concatenate(present) if present else np.zeros(0, dtype=np.uint16)
    mask = pa.array([v is None for v in vectors], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), mask=mask)


def dump_run_records(
    records: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    files: Mapping[str, bytes] | None = None,
    predictions: Sequence[Any] | None = None,
    test_labels: Any = None,
) -> bytes:
    """The bytes of ``records.arrow`` for one run.

    ``records``: the run's ``MetricsRecord`` dicts (``model_dump(mode="json")``, as written
    to each metrics.json); ``keys``: where each lies, relative to the run folder
    (``epoch_001/base/metrics.json``); ``files``: other run files to pack verbatim, by key
    relative to the run folder (``run.json``, ``train/summary.json``); ``predictions``: each
    record's predicted test labels (None where it has none); ``test_labels``: the run's true
    test labels. Every record is validated first (ValueError when one is not a valid
    MetricsRecord).
    """
    import pyarrow as pa

    if len(records) != len(keys):
        raise ValueError(f"{len(records)} records but {len(keys)} keys")
    predictions = [None] * len(records) if predictions is None else list(predictions)
    if len(predictions) != len(records):
        raise ValueError(f"{len(records)} records but {len(predictions)} prediction vectors")
    rows = [MetricsRecord.model_validate(r).model_dump() for r in records]
    # A method-specific column is written only when some record has it, so the files of
    # runs without such a method keep their bytes (load_run_records adds it back as nulls).
    absent = [f for f in OPTIONAL_FIELDS if all(r.get(f) is None for r in rows)]
    schema = run_records_schema()
    for name in absent:
        schema = schema.remove(schema.get_field_index(name))
    columns: dict[str, Any] = {
        name: [r.get(name) for r in rows]
        for name in MetricsRecord.model_fields
        if name not in absent
    }
    columns["key"] = list(keys)
    columns[PREDICTIONS_COLUMN] = predictions_array(predictions)
    packed = {k: v.decode("utf-8") for k, v in (files or {}).items()}
    meta = {
        "format": RUN_RECORDS_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "files": packed,
        "test_labels": None if test_labels is None else [int(v) for v in test_labels],
    }
    table = pa.table(columns, schema=schema.with_metadata({_META_KEY: json.dumps(meta)}))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


# --- reading Arrow IPC metadata without decoding a batch --------------------------------
# A compressed Arrow file is a bomb: kilobytes that decode to gigabytes before anything
# could look at them. This version never compresses records.arrow, so a compressed (or
# dictionary-carrying) one is refused from its metadata alone - the FlatBuffers tables
# of the footer and of each batch's message (format.fbs: Footer, Block, Message,
# RecordBatch.compression) - and every other byte read is a view of the object's bytes.
_MAGIC = b"ARROW1"
_RECORD_BATCH = 3  # MessageHeader union tag


def _fb_field(buf: bytes, table: int, index: int) -> int | None:
    """Where field ``index`` of the FlatBuffers table at ``table`` lies; None if absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vt_size = struct.unpack_from("<H", buf, vtable)[0]
    if 4 + 2 * index >= vt_size:
        return None
    off = struct.unpack_from("<H", buf, vtable + 4 + 2 * index)[0]
    return table + off if off else None


def _fb_ref(buf: bytes, at: int) -> int:
    """The table or vector an offset field at ``at`` points to."""
    return at + struct.unpack_from("<I", buf, at)[0]


def _check_arrow_layout(data: bytes) -> None:
    """ValueError unless ``data`` is an Arrow IPC file of uncompressed record batches only."""
    try:
        if data[:6] != _MAGIC or data[-6:] != _MAGIC or len(data) < 18:
            raise ValueError("not an Arrow IPC file")
        footer_len = struct.unpack_from("<i", data, len(data) - 10)[0]
        start = len(data) - 10 - footer_len
        if footer_len <= 0 or start < 8:
            raise ValueError("not an Arrow IPC file (its footer is damaged)")
        footer = data[start : len(data) - 10]
        root = _fb_ref(footer, 0)
        dictionaries = _fb_field(footer, root, 2)
        if (
            dictionaries is not None
            and struct.unpack_from("<I", footer, _fb_ref(footer, dictionaries))[0]
        ):
            raise ValueError("it carries dictionary batches, which this version never writes")
        batches = _fb_field(footer, root, 3)
        if batches is None:
            return
        vec = _fb_ref(footer, batches)
        for i in range(struct.unpack_from("<I", footer, vec)[0]):
            offset = struct.unpack_from("<q", footer, vec + 4 + 24 * i)[0]
            if not 8 <= offset < len(data) - 8:
                raise ValueError("not an Arrow IPC file (a batch lies outside it)")
            at = offset + (8 if data[offset : offset + 4] == b"\xff\xff\xff\xff" else 4)
            length = struct.unpack_from("<i", data, at - 4)[0]
            message = data[at : at + length]
            msg = _fb_ref(message, 0)
            kind = _fb_field(message, msg, 1)
            header = _fb_field(message, msg, 2)
            if kind is None or message[kind] != _RECORD_BATCH or header is None:
                raise ValueError("not an Arrow IPC file (a block is not a record batch)")
            if _fb_field(message, _fb_ref(message, header), 3) is not None:
                raise ValueError(
                    "its record batches are compressed, which this version never writes"
                    " (a compressed file can decode to any size)"
                )
    except (struct.error, IndexError) as e:
        raise ValueError("not an Arrow IPC file (its metadata is damaged)") from e


def _check_columns(schema: Any) -> None:
    """ValueError unless every column is one of this version's, of its type, and only
    columns that may be absent (``OPTIONAL_FIELDS``, format 1's predictions) are."""
    expected = run_records_schema()
    if not _ACCEPTED:
        _ACCEPTED.append(expected)
    for i, ok in enumerate(_ACCEPTED):  # the usual cases, most recently seen first
        if schema.equals(ok, check_metadata=False):
            _ACCEPTED.insert(0, _ACCEPTED.pop(i))
            return
    may_lack = {*OPTIONAL_FIELDS, PREDICTIONS_COLUMN}
    for field in schema:
        i = expected.get_field_index(field.name)
        if i < 0 or not expected.field(i).type.equals(field.type):
            raise ValueError("its columns are not those of this version's MetricsRecord")
    if set(expected.names) - set(schema.names) - may_lack or len(set(schema.names)) != len(
        schema.names
    ):
        raise ValueError("its columns are not those of this version's MetricsRecord")
    if len(_ACCEPTED) < 64:  # a sweep's files share a handful of schemas
        _ACCEPTED.insert(0, schema.remove_metadata())


# Schemas ``_check_columns`` accepted, most recently seen first: the full one, and those of
# files that lack some optional columns (thousands of a sweep's runs lack the same ones).
_ACCEPTED: list[Any] = []


def load_run_records(data: bytes, *, complete: bool = True, checked: bool = True) -> RunRecords:
    """Parse ``records.arrow``; ValueError (one line) when it is not one this version wrote.

    ``complete=False`` leaves out the columns a file may lack instead of adding them as
    nulls (a reader of many files adds them once, when it concatenates the tables).
    ``checked=False`` leaves Arrow's check that every offset and length lies inside its
    buffer to the caller, who must run ``damaged_tables`` on the table before reading a
    single value of it (a reader of thousands of files checks them all in one pass)."""
    import pyarrow as pa

    _check_arrow_layout(data)
    try:
        reader = pa.ipc.open_file(pa.py_buffer(data))
        _check_columns(reader.schema)  # before a single batch is decoded
        table = reader.read_all()
        if checked:
            table.validate(full=True)  # offsets and lengths inside their buffers
    except (pa.ArrowException, OSError) as e:
        raise ValueError(_not_arrow(e)) from e
    raw = (table.schema.metadata or {}).get(_META_KEY)
    try:
        # pydantic's JSON parser: a third of json.loads' time on thousands of files, and a
        # document nested too deeply is a ValueError like any other damage
        meta = from_json(raw) if raw is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        raise ValueError(f"not a records file of format {sorted(READABLE_FORMATS)}")
    if meta.get("schema_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"records of schema_version {meta.get('schema_version')!r}; this early-repair"
            f" reads versions {sorted(READABLE_VERSIONS)}"
        )
    expected = run_records_schema()
    # Columns a file may lack: method-specific ones no record of the run had, and (format
    # 1) the predictions; they read as nulls.
    optional = [*OPTIONAL_FIELDS] + ([PREDICTIONS_COLUMN] if meta["format"] < 2 else [])
    names = set(table.schema.names)
    missing = [f for f in optional if f not in names]
    if set(expected.names) - names - set(missing):
        raise ValueError("its columns are not those of this version's MetricsRecord")
    if complete:
        for name in missing:
            table = table.append_column(
                expected.field(name), pa.nulls(table.num_rows, expected.field(name).type)
            )
        table = table.select(expected.names)
        if not table.schema.remove_metadata().equals(expected):
            raise ValueError("its columns are not those of this version's MetricsRecord")
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ValueError("its packed run files are not readable")
    labels = meta.get("test_labels")
    if labels is not None:
        import numpy as np

        values = np.asarray(labels) if isinstance(labels, list) else np.zeros((0, 0))
        if values.ndim != 1 or (
            values.size and (values.dtype.kind != "i" or values.min() < 0 or values.max() >= 2**16)
        ):
            raise ValueError("its test labels are not a list of labels")
        labels = values.astype(np.uint16)
    return RunRecords(
        table=table, files={k: v.encode("utf-8") for k, v in files.items()}, test_labels=labels
    )


def _not_arrow(e: Exception) -> str:
    return f"not an Arrow IPC file ({' '.join(str(e).split())[:120]})"


def damaged_tables(tables: list[Any]) -> dict[int, str]:
    """The tables (from ``load_run_records(checked=False)``) whose offsets or lengths lie
    outside their buffers: index -> why, as ``load_run_records`` would have said it.

    Tables with the same columns are checked as one: Arrow's full validation of one small
    table costs four times its share of a large one. Only a group that fails is checked
    table by table, to find which."""
    import pyarrow as pa

    groups: dict[tuple[str, ...], list[int]] = {}
    for i, table in enumerate(tables):
        groups.setdefault(tuple(table.column_names), []).append(i)
    bad: dict[int, str] = {}
    for idx in groups.values():
        try:
            pa.concat_tables([tables[i] for i in idx]).validate(full=True)
        except pa.ArrowException:
            bad.update(_each_damaged(tables, idx))
    return bad


def _each_damaged(tables: list[Any], idx: list[int]) -> dict[int, str]:
    import pyarrow as pa

    bad: dict[int, str] = {}
    for i in idx:
        try:
            tables[i].validate(full=True)
        except pa.ArrowException as e:
            bad[i] = _not_arrow(e)
    return bad
