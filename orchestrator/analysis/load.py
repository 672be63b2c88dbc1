"""Reading one sweep from a store (a folder or S3) into validated frames.

A finished run (``_SUCCESS``) that packed its records into ``records.arrow`` is read as that
one object; every other run - still going, failed, written before that file existed, or
whose file is damaged - is read record by record. Both roads end in the same Arrow table,
the same checks and the same frame, so they give the same tables bit for bit. To find the
finished runs without listing every record, the sweep is listed with
``layout.RUN_FILES_DELIMITER``: each run's own files, its epoch folders rolled up.

Damaged input is a problem, not a crash (``problems.py``): an object the store cannot
return, JSON that does not parse or nests too deep, a record that fails the schema, a
``schema_version`` this version cannot read (``READABLE_VERSIONS``), an impossible value
(an accuracy outside 0..1, a non-finite number), or a record whose fields disagree with its key.

The tree is untrusted (anyone who can write to the bucket wrote it), so reading is bounded:
each object is read only up to its kind's size limit (``store.limits``) and only when it is
a regular file; a records.arrow must be uncompressed; string fields and per-class vectors
are bounded (a per-class vector must have as many values as the run's other records); a
record seen twice (twice in one records.arrow, or at two keys that name the same record)
and JSON with a key given twice are reported, and never change a number.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from orchestrator.analysis import forked
from orchestrator.analysis.costs import costs_frame
from orchestrator.analysis.examples import Examples
from orchestrator.analysis.problems import (
    DAMAGED,
    DUPLICATE,
    SCHEMA,
    Problem,
    one_line,
)
from orchestrator.analysis.record_frame import RECORD_ORDER, records_frame, schema_detail
from orchestrator.analysis.rows import sorted_rows
from orchestrator.analysis.run_frame import (
    readiness_frame,
    run_problems,
    runs_frame,
    with_convergence,
)
from orchestrator.analysis.untrusted import (
    KEY_LIKE,
    DuplicateKey,
    key_count,
    refused_problems,
    repeated_keys,
    unique_pairs,
    unreadable,
    without_duplicates,
)
from orchestrator.errors import BadInput
from orchestrator.results import layout
from orchestrator.results import predictions as predicted
from orchestrator.results.records import (
    PREDICTIONS_COLUMN,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    MetricsRecord,
    RunInfo,
    RunRecords,
    TrainSummary,
    damaged_tables,
    load_run_records,
    run_records_schema,
)
from orchestrator.spec import describe_error
from orchestrator.store import Store
from orchestrator.store.base import BadObject
from orchestrator.store.file import FileStore
from orchestrator.store.limits import MAX_NAME_CHARS, read_many_bounded

M = TypeVar("M", bound=BaseModel)
DEFAULT_METHOD = layout.DEFAULT_METHOD
# Up to this many runs read record by record are listed one by one; more, and the whole
# sweep is listed at once (the store's own listing is concurrent).
PER_RUN_LISTINGS = 16
# A finished run's records, for judging whether parsing half of them is worth a process
# (a run repairs a few classes at a few checkpoints: tens of records).
RECORDS_PER_RUN = 40


@dataclass
class Loaded:
    """Everything read from one sweep, validated; damaged objects are in ``problems``."""

    uri: str
    sweep: str
    prefix: str  # key prefix of the sweep inside the store ("" when the URI is the sweep)
    records: pd.DataFrame  # one row per MetricsRecord, see RECORD_COLUMNS + acc_class_<c>
    runs: pd.DataFrame  # one row per run seen
    sweep_info: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    objects_read: int = 0
    packed_runs: int = 0  # runs read from their records.arrow
    # One row per (run, watched track) of a training.readiness policy (READINESS_COLUMNS).
    readiness: pd.DataFrame = field(default_factory=lambda: readiness_frame({}))
    # What each row of ``records`` predicted per test example (examples.py).
    examples: Examples = field(default_factory=Examples)
    # run.json's costs: one row per (run, stage, method) (analysis.costs.COST_COLUMNS).
    costs: pd.DataFrame = field(default_factory=lambda: costs_frame({}))


# --- finding the sweep ------------------------------------------------------------------


def _locate(uri: str, keys: list[str], sweep: str | None) -> tuple[str | None, str] | None:
    """(sweep name or None when it must come from the records, key prefix of the sweep);
    None when ``keys`` show no results at all."""
    found: set[str] = set()
    for e in keys:
        # a key names its sweep in its first part: once one key there parses, the rest of
        # that folder's (thousands of) keys need not be
        if e.partition("/")[0] not in found and (k := layout.parse(e)) and k.sweep:
            found.add(k.sweep)
    sweeps = sorted(found)
    if sweeps:
        if sweep is None:
            if len(sweeps) > 1:
                shown = ", ".join(sweeps[:10]) + (" ..." if len(sweeps) > 10 else "")
                raise BadInput(f"{uri} holds {len(sweeps)} sweeps ({shown}): pick one with --sweep")
            sweep = sweeps[0]
        elif sweep not in sweeps:
            raise BadInput(f"{uri}: no sweep {sweep!r} here; found: {', '.join(sweeps[:10])}")
        return sweep, f"{sweep}/"
    if "sweep.json" in keys or any(layout.parse(k, root=False) for k in keys):
        return sweep, ""  # the URI names one sweep's folder
    return None


def _list(store: Store, sweep: str | None) -> tuple[list[str], tuple[str | None, str]]:
    """The sweep's run files (epoch folders rolled up), and where the sweep is."""
    attempts: list[tuple[str, str | None]] = [("", layout.RUN_FILES_DELIMITER)]
    if sweep:
        attempts.insert(0, (f"{sweep}/", layout.RUN_FILES_DELIMITER))
    # Last resort, a full listing: a tree of bare metrics files (no run.json, summary or
    # _SUCCESS anywhere) only shows its layout in the records' own keys.
    attempts.append(("", None))
    for prefix, delimiter in attempts:
        keys = store.list(prefix, delimiter=delimiter) if delimiter else store.list(prefix)
        if keys and (where := _locate(store.uri, keys, sweep)) is not None:
            return keys, where
    raise BadInput(
        f"{store.uri}: no results found (expected <sweep>/<run>/epoch_NNN/.../metrics.json);"
        " check the URI"
    )


# --- parsing ----------------------------------------------------------------------------


def _decode(
    key: str, run: str, blob: bytes | Exception, problems: list[Problem]
) -> dict[str, Any] | None:
    if isinstance(blob, Exception):
        problems.append(unreadable(key, run, blob))
        return None
    try:
        data = json.loads(blob, object_pairs_hook=unique_pairs)
    except DuplicateKey as e:
        problems.append(
            Problem(
                DUPLICATE,
                key,
                run,
                f"the JSON key {one_line(repr(str(e)), 80)} appears twice; which value is"
                " meant is unknown, so the object is left out",
            )
        )
        return None
    except RecursionError:
        problems.append(Problem(DAMAGED, key, run, "nested too deeply to parse"))
        return None
    except (ValueError, UnicodeDecodeError):
        problems.append(Problem(DAMAGED, key, run, "not valid JSON (truncated or partly written)"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem(DAMAGED, key, run, "not a JSON object"))
        return None
    return data


def _validate(
    model: type[M], key: str, run: str, blob: bytes | Exception, problems: list[Problem]
) -> M | None:
    if isinstance(blob, bytes):
        # pydantic's own JSON parser, twice as fast as json.loads + model_validate; a blob
        # it refuses takes the path below, which says what is wrong with it.
        try:
            valid = model.model_validate_json(blob)
        except (ValidationError, ValueError, RecursionError):
            valid = None
        if (
            valid is not None
            and getattr(valid, "schema_version", None) in READABLE_VERSIONS
            and len(KEY_LIKE.findall(blob)) == key_count(valid)
        ):
            return valid  # (else: perhaps a key given twice - the path below says)
    data = _decode(key, run, blob, problems)
    if data is None:
        return None
    version = data.get("schema_version", SCHEMA_VERSION)
    if version not in READABLE_VERSIONS:
        problems.append(Problem(SCHEMA, key, run, schema_detail(version)))
        return None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems.append(Problem(DAMAGED, key, run, describe_error(e, model.__name__)))
        return None
    except RecursionError:
        problems.append(Problem(DAMAGED, key, run, "nested too deeply to parse"))
        return None


@dataclass
class _Run:
    """What the listing says about one run folder."""

    name: str
    files: dict[str, str] = field(default_factory=dict)  # kind -> key (run_json, summary, ...)
    metrics: list[str] = field(default_factory=list)  # keys read one by one
    predictions: set[str] = field(default_factory=set)  # predictions.npy keys listed


def _scan(keys: list[str], prefix: str, runs: dict[str, _Run]) -> None:
    """Sort listed keys into their runs: metrics keys, and the run's own files by kind."""
    root = bool(prefix)
    for key in keys:
        if not key.startswith(prefix) or (where := layout.run_folder(key, root=root)) is None:
            continue
        run = runs.setdefault(where[1], _Run(where[1]))
        k = layout.parse(key, root=root)
        if k is None:
            continue
        if k.kind in ("base", "repair"):
            run.metrics.append(key)
        elif k.kind == "predictions":
            run.predictions.add(key)
        elif k.kind in ("run_json", "summary", "success", "records", "test_labels"):
            run.files[k.kind] = key


def load(store: Store, sweep: str | None = None, *, packed: bool = True) -> Loaded:
    """Read one sweep below ``store``: the store's root holds sweeps, or is one sweep.

    ``packed=False`` ignores every records.arrow and reads each record's own file (the
    benchmark's baseline; the tables are the same).
    """
    uri = store.uri
    listing, (name, prefix) = _list(store, sweep)
    runs: dict[str, _Run] = {}
    _scan(listing, prefix, runs)  # (a full listing, the last resort, holds the records too)
    finished = {r for r, v in runs.items() if "success" in v.files}
    bundled = {r for r in finished if "records" in runs[r].files} if packed else set()
    _list_records(
        store, prefix, [r for r in runs if r not in bundled and not runs[r].metrics], runs
    )

    # Finished runs' records.arrow are parsed in two shares at once where a second core
    # is free (forked.py): each share becomes its own records frame, and the frames are put
    # in order together - the same rows in the same order as one frame of all of them.
    # The child's share is the smaller (45%): its frame still has to come back. From a
    # folder the child reads its share's files itself, beside this process; a client of
    # another store may hold connections that a child must not share, so this process
    # reads everything first.
    packed_runs = sorted(bundled)
    split = name is not None and len(packed_runs) * RECORDS_PER_RUN >= forked.MIN_RECORDS
    half = len(packed_runs) * 11 // 20 if split and forked.may_fork() else len(packed_runs)
    mine, theirs = packed_runs[:half], packed_runs[half:]
    apart = bool(theirs) and isinstance(store, FileStore)
    sweep_key = f"{prefix}sweep.json"
    wanted = [sweep_key] if sweep_key in listing else []
    wanted += [runs[r].files["records"] for r in (mine if apart else packed_runs)]
    wanted += _single_keys(runs, set(runs) - bundled)
    blobs: dict[str, bytes | Exception] = {}
    if not apart:
        blobs = read_many_bounded(store, wanted)
        _check_readable(uri, len(blobs), _failures(blobs))

    def their_part() -> _Packed:
        if not apart:
            return _packed_part(runs, theirs, blobs, prefix, name, finished)
        own = read_many_bounded(store, [runs[r].files["records"] for r in theirs])
        part = _packed_part(runs, theirs, own, prefix, name, finished)
        part.n_read, part.failed = len(own), _failures(own)
        return part

    with forked.start(their_part, fork=bool(theirs)) as other:
        if apart:
            blobs = read_many_bounded(store, wanted)
        first = _packed_part(runs, mine, blobs, prefix, name if theirs else None, finished)
        second = other.result() if theirs else None
    if apart and second is not None:
        _check_readable(uri, len(blobs) + second.n_read, _failures(blobs) + second.failed)
    problems: list[Problem] = refused_problems(store, prefix)
    labels: dict[str, np.ndarray] = {}
    sweep_info: dict[str, Any] = {}
    if sweep_key in blobs:
        sweep_info = _decode(sweep_key, "", blobs[sweep_key], problems) or {}
    done = [p for p in (first, second) if p is not None]
    for part in done:
        problems += part.problems
        blobs.update(part.files)
        labels.update(part.labels)
    redo = [r for part in done for r in part.redo]
    if redo:  # a damaged records.arrow: read that run's single files after all
        _list_records(store, prefix, redo, runs)
        blobs.update(read_many_bounded(store, _single_keys(runs, set(redo))))
    singles = sorted(set(runs) - bundled | set(redo))
    parts: list[tuple[str, int]] = []
    tables = [*first.tables, _single_records(runs, singles, blobs, problems, parts, labels)]
    table = _with_keys(tables, first.parts + parts, prefix)
    if name is None:
        name = _sweep_name(uri, sweep_info, table)
        if sweep is not None and sweep != name:
            raise BadInput(f"{uri} holds sweep {name!r}, not {sweep!r}; fix --sweep")
    frames = [(p.records, p.examples) for p in done if p.records is not None]
    if len(table) or not frames:
        frames.append(records_frame(table, name, prefix, finished, problems, labels))
    records, examples = _in_order(frames)
    once = without_duplicates(records, problems)  # keeps the index of the rows it keeps
    examples = examples.select(once.index.to_numpy())
    records = once.reset_index(drop=True)

    infos = {
        r: _validate(RunInfo, k, r, blobs[k], problems)
        for r, v in runs.items()
        if (k := v.files.get("run_json")) in blobs
    }
    sums = {
        r: _validate(TrainSummary, k, r, blobs[k], problems)
        for r, v in runs.items()
        if (k := v.files.get("summary")) in blobs
    }
    others = {r for r, v in runs.items() if {"run_json", "summary"} & set(v.files)}
    runs_df = runs_frame(name, records, infos, sums, finished, others | set(infos) | set(sums))
    problems.extend(run_problems(prefix, records, runs_df, sums))
    records = with_convergence(records, runs_df)
    n_packed = sum(part.packed for part in done)
    n_read = len(blobs) + sum(part.n_read for part in done)
    return Loaded(
        uri,
        name,
        prefix,
        records,
        runs_df,
        sweep_info,
        problems,
        n_read,
        n_packed,
        readiness_frame(sums),
        examples,
        costs_frame(infos),
    )


def _failures(blobs: dict[str, bytes | Exception]) -> list[Exception]:
    return [v for v in blobs.values() if isinstance(v, Exception)]


def _check_readable(uri: str, n: int, failed: list[Exception]) -> None:
    """Nothing at all could be read: the store is unusable (endpoint down, no access),
    which is bad input with one line, not a report full of "unreadable"."""
    if failed and len(failed) == n and not any(isinstance(v, BadObject) for v in failed):
        raise BadInput(f"{uri}: cannot read any result ({one_line(failed[0])})") from failed[0]


@dataclass
class _Packed:
    """A share of the finished runs, read from their records.arrow files."""

    tables: list[Any]  # one per run whose file could be used
    parts: list[tuple[str, int]]  # (run, rows) of each table
    problems: list[Problem]
    files: dict[str, bytes]  # the run files packed in them, by store key
    labels: dict[str, np.ndarray]  # run -> test labels
    redo: list[str]  # runs whose file cannot be used: read record by record instead
    packed: int = 0  # runs read from their file
    # Objects read for the share by the process that parsed it (a child reading from a
    # folder), and the errors among them: what the blobs themselves would say.
    n_read: int = 0
    failed: list[Exception] = field(default_factory=list)
    # The share's records frame, when built with it (the tables are then dropped).
    records: pd.DataFrame | None = None
    examples: Examples = field(default_factory=Examples)


def _packed_part(
    runs: dict[str, _Run],
    names: list[str],
    blobs: dict[str, bytes | Exception],
    prefix: str,
    sweep: str | None,
    finished: set[str],
) -> _Packed:
    """The records.arrow of the runs ``names``; their records frame too when ``sweep`` is
    given (the share parsed in a second process)."""
    part = _Packed([], [], [], {}, {}, [])
    read: list[tuple[str, RunRecords]] = []
    for r in names:
        key = runs[r].files["records"]
        packed = _unpack(key, r, blobs[key], part.problems)
        if packed is None:
            part.redo.append(r)
        else:
            read.append((r, packed))
    damaged = damaged_tables([p.table for _, p in read])
    for i, (r, packed) in enumerate(read):
        if i in damaged:
            part.problems.append(
                Problem(DAMAGED, runs[r].files["records"], r, damaged[i] + _FALLBACK)
            )
            part.redo.append(r)
            continue
        folder = f"{prefix}{r}/"
        for rel, data in packed.files.items():
            part.files[folder + rel] = data
        if packed.test_labels is not None:
            part.labels[r] = packed.test_labels
        part.tables.append(packed.table)
        part.parts.append((r, len(packed.table)))
    for i in sorted(repeated_keys(part.tables), reverse=True):  # a record twice in one file
        r = part.parts[i][0]
        part.problems.append(
            Problem(
                DUPLICATE,
                runs[r].files["records"],
                r,
                "it holds a record twice (two rows with one key); which one is right is"
                " unknown; reading the run's single files instead",
            )
        )
        del part.tables[i], part.parts[i]
        part.redo.append(r)
    part.packed = len(part.tables)
    if sweep is not None and part.tables:
        table = _with_keys(part.tables, part.parts, prefix)
        part.records, part.examples = records_frame(
            table, sweep, prefix, finished, part.problems, part.labels
        )
        part.tables, part.parts = [], []
    return part


def _in_order(frames: list[tuple[pd.DataFrame, Examples]]) -> tuple[pd.DataFrame, Examples]:
    """Records frames of disjoint sets of runs (each in ``RECORD_ORDER``) as one, in that
    order: the frame ``records_frame`` makes of all their records at once."""
    frames = [f for f in frames if len(f[0])] or frames[:1]
    if len(frames) == 1:
        return frames[0]
    records = pd.concat([f for f, _ in frames], ignore_index=True)
    examples = Examples.concat([e for _, e in frames])
    # Shares of runs in name order usually follow each other: then each frame's last row
    # sorts before (or with) the next one's first, and the whole is in order already.
    ends = np.cumsum([len(f) for f, _ in frames])[:-1]
    seams = np.stack([ends - 1, ends], axis=1).ravel()
    if (sorted_rows(records.iloc[seams], RECORD_ORDER) == np.arange(len(seams))).all():
        return records, examples
    order = sorted_rows(records, RECORD_ORDER)
    return records.take(order).reset_index(drop=True), examples.select(order)


def _list_records(store: Store, prefix: str, names: list[str], runs: dict[str, _Run]) -> None:
    """Fill in the record keys of the runs ``names`` (read one by one)."""
    if not names:
        return
    if len(names) > PER_RUN_LISTINGS:
        keys = store.list(prefix)
    else:
        keys = [k for r in sorted(names) for k in store.list(f"{prefix}{r}/")]
    picked: dict[str, _Run] = {}
    _scan(keys, prefix, picked)
    for r in names:
        runs[r].metrics = picked[r].metrics if r in picked else []
        runs[r].predictions = picked[r].predictions if r in picked else set()
        if r in picked and "test_labels" in picked[r].files:
            runs[r].files["test_labels"] = picked[r].files["test_labels"]


def _single_keys(runs: dict[str, _Run], names: set[str]) -> list[str]:
    out: list[str] = []
    for r in sorted(names):
        run = runs[r]
        out += run.metrics
        out += [p for m in run.metrics if (p := layout.predictions(m)) in run.predictions]
        out += [run.files[k] for k in ("run_json", "summary", "test_labels") if k in run.files]
    return out


_FALLBACK = "; reading the run's single files instead"


def _unpack(key: str, run: str, blob: bytes | Exception, problems: list[Problem]) -> Any:
    """One run's records.arrow, its buffers not yet checked (``damaged_tables``); None
    (and a problem) when it cannot be used."""
    if isinstance(blob, Exception):
        problems.append(unreadable(key, run, blob))
        return None
    try:
        return load_run_records(blob, complete=False, checked=False)
    except ValueError as e:
        problems.append(Problem(DAMAGED, key, run, one_line(e) + _FALLBACK))
        return None


def _single_records(
    runs: dict[str, _Run],
    names: list[str],
    blobs: dict[str, bytes | Exception],
    problems: list[Problem],
    parts: list[tuple[str, int]],
    labels: dict[str, np.ndarray],
) -> Any:
    """The valid records of runs read file by file, as one table like a records.arrow's
    (keys relative to the run folder; each record's predictions.npy, when it has one);
    appends (run, rows) to ``parts`` and puts each run's test labels in ``labels``."""
    import pyarrow as pa

    from orchestrator.results.records import predictions_array

    rows: list[dict[str, Any]] = []
    vectors: list[np.ndarray | None] = []
    for r in names:
        before = len(rows)
        if (key := runs[r].files.get("test_labels")) in blobs:
            got = _npy(key, r, blobs[key], problems)
            if got is not None:
                labels[r] = got
        for key in runs[r].metrics:
            rec = _validate(MetricsRecord, key, r, blobs[key], problems)
            if rec is not None:
                rows.append({**rec.model_dump(), "key": key.split(f"{r}/", 1)[1]})
                pkey = layout.predictions(key)
                vectors.append(_npy(pkey, r, blobs[pkey], problems) if pkey in blobs else None)
        parts.append((r, len(rows) - before))
    schema = run_records_schema()
    table = pa.Table.from_pylist(rows, schema=schema.remove(len(schema) - 1))
    return table.append_column(schema.field(PREDICTIONS_COLUMN), predictions_array(vectors))


def _npy(key: str, run: str, blob: bytes | Exception, problems: list[Problem]) -> Any:
    """A ``.npy`` of labels; None (and a problem) when it cannot be used."""
    if isinstance(blob, Exception):
        problems.append(unreadable(key, run, blob))
        return None
    try:
        return predicted.parse(blob)
    except ValueError as e:
        problems.append(Problem(DAMAGED, key, run, one_line(e) + "; not used"))
        return None


def _with_keys(tables: list[Any], parts: list[tuple[str, int]], prefix: str) -> Any:
    """All records in one table; ``key`` the full store key again, plus each record's run
    folder (``_folder``) and key relative to it (``_rel``) - in one pass, not per run."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # Columns a file may lack (load_run_records(complete=False)) become nulls here, once.
    schema = run_records_schema()
    # Unifying schemas costs five times a plain concatenation: only where they differ.
    same = all(t.schema.equals(tables[0].schema) for t in tables[1:])
    table = pa.concat_tables(tables, promote_options="none" if same else "default")
    for name in schema.names:
        if name not in table.column_names:  # no table has it
            table = table.append_column(
                schema.field(name), pa.nulls(len(table), schema.field(name).type)
            )
    table = table.select(schema.names)
    names = np.array([r for r, _ in parts], dtype=object)
    folder = pa.array(np.repeat(names, [n for _, n in parts]), pa.string())
    rel = table["key"]
    full = pc.binary_join_element_wise(pa.scalar(prefix), folder, pa.scalar("/"), rel, "")
    table = table.set_column(table.schema.get_field_index("key"), "key", full)
    return table.append_column("_folder", folder).append_column("_rel", rel)


def _sweep_name(uri: str, sweep_info: dict[str, Any], table: Any) -> str:
    said = sweep_info.get("name")
    if isinstance(said, str) and 0 < len(said) <= MAX_NAME_CHARS:
        return said
    names = Counter(table.column("sweep").slice(0, 50).to_pylist())
    if names:
        return names.most_common(1)[0][0]
    return Path(uri.rstrip("/")).name or "sweep"


# --- the records frame ----------------------------------------------------------------
