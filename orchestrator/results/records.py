"""The records the trainer writes and the aggregator reads (a DESIGN.md contract).

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


# --- one finished run's records in one object (``layout.records``) -----------------------
# The aggregator reads one object per finished run instead of one per record (a sweep of
# 100,000 records is 2,500 reads instead of 100,000 - on S3, requests are what costs).
# Arrow's IPC file format (Feather v2; ``pandas.read_feather`` opens it): columns typed as
# ``MetricsRecord``'s fields plus the ``key`` of each record's metrics.json relative to the
# run folder, and the run's own small files (run.json, train/summary.json) verbatim in the
# schema metadata, so that a finished run costs one read and gives the same values, bit for
# bit, as reading its files one by one. pyarrow is imported only when these are called.

RUN_RECORDS_FORMAT = 1
_META_KEY = b"early-repair.run-records"


class RunRecords(BaseModel):
    """What ``load_run_records`` returns: the records as an Arrow table (column order of
    ``MetricsRecord`` plus ``key``), and the run files that were packed with them."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    table: Any  # pyarrow.Table
    files: dict[str, bytes]  # key relative to the run folder -> bytes

    @property
    def keys(self) -> list[str]:
        return self.table.column("key").to_pylist()

    def records(self) -> list[dict[str, Any]]:
        """The records as ``MetricsRecord.model_dump(mode="json")`` dicts, in file order."""
        rows = self.table.drop_columns(["key"]).to_pylist()
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
    """The Arrow schema of ``records.arrow``: every ``MetricsRecord`` field, then ``key``."""
    import pyarrow as pa

    fields = [
        pa.field(name, _arrow_type(f.annotation), nullable=True)
        for name, f in MetricsRecord.model_fields.items()
    ]
    return pa.schema([*fields, pa.field("key", pa.string())])


def dump_run_records(
    records: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    files: Mapping[str, bytes] | None = None,
) -> bytes:
    """The bytes of ``records.arrow`` for one run.

    ``records``: the run's ``MetricsRecord`` dicts (``model_dump(mode="json")``, as written
    to each metrics.json); ``keys``: where each lies, relative to the run folder
    (``epoch_001/base/metrics.json``); ``files``: other run files to pack verbatim, by key
    relative to the run folder (``run.json``, ``train/summary.json``). Every record is
    validated first (ValueError when one is not a valid MetricsRecord).
    """
    import pyarrow as pa

    if len(records) != len(keys):
        raise ValueError(f"{len(records)} records but {len(keys)} keys")
    rows = [MetricsRecord.model_validate(r).model_dump() for r in records]
    schema = run_records_schema()
    columns = {name: [r[name] for r in rows] for name in MetricsRecord.model_fields}
    columns["key"] = list(keys)
    packed = {k: v.decode("utf-8") for k, v in (files or {}).items()}
    meta = {"format": RUN_RECORDS_FORMAT, "schema_version": SCHEMA_VERSION, "files": packed}
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


def load_run_records(data: bytes) -> RunRecords:
    """Parse ``records.arrow``; ValueError (one line) when it is not one this version wrote."""
    import pyarrow as pa

    _check_arrow_layout(data)
    try:
        reader = pa.ipc.open_file(pa.py_buffer(data))
        if not reader.schema.remove_metadata().equals(run_records_schema()):
            raise ValueError("its columns are not those of this version's MetricsRecord")
        table = reader.read_all()
        table.validate(full=True)  # offsets and lengths inside their buffers
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"not an Arrow IPC file ({' '.join(str(e).split())[:120]})") from e
    raw = (table.schema.metadata or {}).get(_META_KEY)
    try:
        meta = json.loads(raw) if raw is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != RUN_RECORDS_FORMAT:
        raise ValueError(f"not a records file of format {RUN_RECORDS_FORMAT}")
    if meta.get("schema_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"records of schema_version {meta.get('schema_version')!r}; this early-repair"
            f" reads versions {sorted(READABLE_VERSIONS)}"
        )
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ValueError("its packed run files are not readable")
    return RunRecords(table=table, files={k: v.encode("utf-8") for k, v in files.items()})
