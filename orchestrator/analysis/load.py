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

from orchestrator.analysis.costs import costs_frame
from orchestrator.analysis.examples import Examples, from_arrow
from orchestrator.analysis.examples import check as check_examples
from orchestrator.analysis.problems import (
    BAD_VALUE,
    DAMAGED,
    DUPLICATE,
    INCONSISTENT,
    MISPLACED,
    NO_SUMMARY,
    SCHEMA,
    UNFINISHED,
    Problem,
    one_line,
)
from orchestrator.analysis.rows import plain_strings, sorted_rows
from orchestrator.analysis.untrusted import (
    KEY_LIKE,
    DuplicateKey,
    bounded,
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
    TrainSummary,
    load_run_records,
    run_records_schema,
)
from orchestrator.spec import describe_error
from orchestrator.store import Store
from orchestrator.store.base import BadObject
from orchestrator.store.limits import MAX_CLASSES, MAX_NAME_CHARS, read_many_bounded

M = TypeVar("M", bound=BaseModel)
DEFAULT_METHOD = layout.DEFAULT_METHOD
# Up to this many runs read record by record are listed one by one; more, and the whole
# sweep is listed at once (the store's own listing is concurrent).
PER_RUN_LISTINGS = 16

RECORD_COLUMNS = [
    "sweep",
    "dataset",
    "model",
    "run",
    "seed",
    "epoch",
    "convergence_epoch",
    "kind",
    "repair_class",
    "method",
    "accuracy",
    "f1_macro",
    "recall_macro",
    "auc_macro",
    "rr",
    "br",
    "n_neg",
    "n_pos",
    "fitness",
    "n_patched",
    "n_intact",
    "iterations",
    "seconds",
    "accepted",
    "repair_changed",
    "n_classes",
    "schema_version",
    "run_complete",
    "has_predictions",
    "key",
]
_INT_COLUMNS = (
    "repair_class",
    "n_neg",
    "n_pos",
    "n_patched",
    "n_intact",
    "iterations",
    "repair_changed",
)
_FLOAT_COLUMNS = ("auc_macro", "rr", "br", "fitness", "seconds")
# Impossible values: (columns, low, high, what it is); None is allowed where the schema is.
_RANGES: list[tuple[tuple[str, ...], float, float, str]] = [
    (("accuracy", "f1_macro", "recall_macro", "auc_macro"), 0.0, 1.0, "a fraction"),
    (("rr", "br"), 0.0, 100.0, "a percentage"),
    (("seconds",), 0.0, np.inf, "a duration"),
    (
        ("n_neg", "n_pos", "n_patched", "n_intact", "iterations", "repair_changed"),
        0,
        np.inf,
        "a count",
    ),
]


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
    readiness: pd.DataFrame = field(default_factory=lambda: _readiness_frame({}))
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


def _schema_detail(version: object) -> str:
    return (
        f"schema_version {version!r}; this early-repair reads versions"
        f" {sorted(READABLE_VERSIONS)} (aggregate with the matching early-repair version)"
    )


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
        problems.append(Problem(SCHEMA, key, run, _schema_detail(version)))
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

    sweep_key = f"{prefix}sweep.json"
    wanted = [sweep_key] if sweep_key in listing else []
    wanted += [runs[r].files["records"] for r in sorted(bundled)]
    wanted += _single_keys(runs, set(runs) - bundled)
    blobs = read_many_bounded(store, wanted)
    failed = [v for v in blobs.values() if isinstance(v, Exception)]
    if failed and len(failed) == len(blobs) and not any(isinstance(v, BadObject) for v in failed):
        # Nothing at all could be read: the store is unusable (endpoint down, no access),
        # which is bad input with one line, not a report full of "unreadable".
        raise BadInput(f"{uri}: cannot read any result ({one_line(failed[0])})") from failed[0]
    problems: list[Problem] = refused_problems(store, prefix)
    labels: dict[str, np.ndarray] = {}
    sweep_info: dict[str, Any] = {}
    if sweep_key in blobs:
        sweep_info = _decode(sweep_key, "", blobs[sweep_key], problems) or {}

    tables: list[Any] = []
    parts: list[tuple[str, int]] = []  # (run, rows) in table order
    redo: list[str] = []
    for r in sorted(bundled):
        key = runs[r].files["records"]
        table = _unpack(key, r, blobs[key], prefix, problems, blobs, labels)
        if table is None:
            redo.append(r)
        else:
            tables.append(table)
            parts.append((r, len(table)))
    for i in sorted(repeated_keys(tables), reverse=True):  # a record twice in one file
        r = parts[i][0]
        problems.append(
            Problem(
                DUPLICATE,
                runs[r].files["records"],
                r,
                "it holds a record twice (two rows with one key); which one is right is"
                " unknown; reading the run's single files instead",
            )
        )
        del tables[i], parts[i]
        redo.append(r)
    if redo:  # a damaged records.arrow: read that run's single files after all
        _list_records(store, prefix, redo, runs)
        blobs.update(read_many_bounded(store, _single_keys(runs, set(redo))))
    singles = sorted(set(runs) - bundled | set(redo))
    tables.append(_single_records(runs, singles, blobs, problems, parts, labels))
    table = _with_keys(tables, parts, prefix)
    if name is None:
        name = _sweep_name(uri, sweep_info, table)
        if sweep is not None and sweep != name:
            raise BadInput(f"{uri} holds sweep {name!r}, not {sweep!r}; fix --sweep")
    records, examples = _records_frame(table, name, prefix, finished, problems, labels)
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
    runs_df = _runs_frame(name, records, infos, sums, finished, others | set(infos) | set(sums))
    problems.extend(_run_problems(prefix, records, runs_df, sums))
    records = _with_convergence(records, runs_df)
    n_packed = len(tables) - 1
    return Loaded(
        uri,
        name,
        prefix,
        records,
        runs_df,
        sweep_info,
        problems,
        len(blobs),
        n_packed,
        _readiness_frame(sums),
        examples,
        costs_frame(infos),
    )


READINESS_COLUMNS = [
    "run",
    "policy",
    "action",
    "alpha",
    "stopped_training",
    "method",
    "repair_class",
    "fired_epoch",
    "ready_epoch",
    "epochs_trained",
    "scores",  # [(epoch, watched value or None), ...]: empty in older summaries
]


def _readiness_frame(sums: dict[str, TrainSummary | None]) -> pd.DataFrame:
    """What each run's readiness policy decided (train/summary.json), one row per track."""
    rows = [
        (
            run,
            r.policy,
            r.action,
            r.alpha,
            r.stopped_training,
            t.method,
            t.repair_class,
            t.fired_epoch,
            t.ready_epoch,
            s.epochs_trained,
            [tuple(p) for p in t.scores],
        )
        for run, s in sorted(sums.items())
        if s is not None and (r := s.readiness) is not None
        for t in r.tracks
    ]
    df = pd.DataFrame(rows, columns=READINESS_COLUMNS)
    for col in ("repair_class", "fired_epoch", "ready_epoch", "epochs_trained"):
        df[col] = df[col].astype("Int64")
    df["alpha"] = df["alpha"].astype(float)
    return plain_strings(df.astype({c: object for c in ("run", "policy", "action", "method")}))


def _with_convergence(records: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Records written while training (training.repair_every) without a convergence epoch
    take their run's (train/summary.json)."""
    missing = records["convergence_epoch"].isna()
    if not missing.any():
        return records
    conv = records["run"].map(runs.set_index("run")["convergence_epoch"]).astype("Int64")
    records["convergence_epoch"] = records["convergence_epoch"].fillna(conv)
    return records


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


def _unpack(
    key: str,
    run: str,
    blob: bytes | Exception,
    prefix: str,
    problems: list[Problem],
    blobs: dict[str, bytes | Exception],
    labels: dict[str, np.ndarray],
) -> Any:
    """One run's records.arrow as a table (keys relative to the run folder), its packed run
    files put in ``blobs`` and its test labels in ``labels``; None (and a problem) when it
    cannot be used."""
    fallback = "; reading the run's single files instead"
    if isinstance(blob, Exception):
        problems.append(unreadable(key, run, blob))
        return None
    try:
        packed = load_run_records(blob, complete=False)
    except ValueError as e:
        problems.append(Problem(DAMAGED, key, run, one_line(e) + fallback))
        return None
    folder = f"{prefix}{run}/"
    for rel, data in packed.files.items():
        blobs[folder + rel] = data
    if packed.test_labels is not None:
        labels[run] = packed.test_labels
    return packed.table


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
    table = pa.concat_tables(tables, promote_options="default").select(schema.names)
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


def join_epochs(values: Any) -> str:
    """Epochs as "1;5;10": one CSV cell, sorted."""
    return ";".join(str(int(v)) for v in sorted(values))


def _runs_frame(
    sweep: str,
    records: pd.DataFrame,
    infos: dict[str, RunInfo | None],
    sums: dict[str, TrainSummary | None],
    finished: set[str],
    others: set[str],
) -> pd.DataFrame:
    # Per-run facts from the records in a few grouped passes: a loop of pandas operations
    # per run would cost seconds for a sweep of thousands of runs.
    run_codes, run_index = pd.factorize(records["run"])
    run_names = run_index.tolist()

    def sets(col: str, rows: Any = True) -> dict[str, list[Any]]:
        """The distinct values of ``col`` per run (of the ``rows`` chosen), from codes."""
        values = records[col]
        keep = values.notna().to_numpy() & rows
        codes, found = pd.factorize(values[keep])
        width, uniques = max(len(found), 1), found.tolist()
        runs, which = divmod(np.unique(run_codes[keep] * width + codes), width)
        out: dict[str, list[Any]] = {}
        for run, i in zip(runs.tolist(), which.tolist(), strict=True):
            out.setdefault(run_names[run], []).append(uniques[i])
        return out

    firsts = records.drop_duplicates("run")
    first_of = {
        run: {"dataset": d, "model": m, "seed": s}
        for run, d, m, s in zip(
            *(firsts[c].tolist() for c in ("run", "dataset", "model", "seed")), strict=True
        )
    }
    n_of = dict(zip(run_names, np.bincount(run_codes, minlength=len(run_names)), strict=True))
    classes_of = sets("repair_class")
    methods_of = sets("method")
    epochs_of = sets("epoch", (records["kind"] == "base").to_numpy())
    convs_of = sets("convergence_epoch")
    rows = []
    for run in sorted(set(n_of) | finished | others):
        info = infos.get(run)
        summary = sums.get(run)
        spec = info.run if info else {}
        first = first_of.get(run)
        if first is not None:
            dataset, model, seed = first["dataset"], first["model"], int(first["seed"])
        else:
            dataset = _label(spec.get("dataset"))
            model = _label(spec.get("model"))
            seed = _spec_int(spec.get("seed"))
        # run.json is untrusted too: only what has the shape a RunSpec gives it counts.
        listed = spec.get("repair_classes")
        named = [_spec_int(c) for c in listed] if isinstance(listed, list) else []
        classes = {c for c in named if c is not None and 0 <= c < MAX_CLASSES} | {
            int(c) for c in classes_of.get(run, [])
        }
        methods = set(_spec_methods(spec)) | set(methods_of.get(run, []))
        epochs = sorted(int(e) for e in epochs_of.get(run, []))
        seen = convs_of.get(run, [])
        conv = int(seen[0]) if len(seen) == 1 else None
        if summary is not None:
            conv = summary.convergence_epoch
            # The epochs a run evaluates: its checkpoints and those repaired while it trained.
            epochs = sorted(set(summary.checkpoint_epochs) | set(summary.online_epochs))
        rows.append(
            {
                "sweep": sweep,
                "dataset": dataset,
                "model": model,
                "run": run,
                "seed": seed,
                "convergence_epoch": conv,
                "checkpoint_epochs": epochs,
                "repair_classes": sorted(classes),
                "methods": sorted(methods) or [DEFAULT_METHOD],
                "complete": run in finished,
                "has_summary": summary is not None,
                "epochs_trained": summary.epochs_trained if summary else None,
                "stopped_early": summary.stopped_early if summary else None,
                "best_val_loss": summary.best_val_loss if summary else None,
                "device": info.device if info else None,
                "n_records": n_of.get(run, 0),
            }
        )
    df = pd.DataFrame(
        rows,
        columns=[
            "sweep",
            "dataset",
            "model",
            "run",
            "seed",
            "convergence_epoch",
            "checkpoint_epochs",
            "repair_classes",
            "methods",
            "complete",
            "has_summary",
            "epochs_trained",
            "stopped_early",
            "best_val_loss",
            "device",
            "n_records",
        ],
    )
    df["seed"] = df["seed"].astype("Int64")
    df["convergence_epoch"] = df["convergence_epoch"].astype("Int64")
    df["epochs_trained"] = df["epochs_trained"].astype("Int64")
    df = plain_strings(df)
    return df.sort_values(["dataset", "model", "seed", "run"], na_position="last").reset_index(
        drop=True
    )


def _spec_methods(spec: dict[str, Any]) -> list[str]:
    """The repair methods a run's spec names: ``repair.methods`` (a list) or
    ``repair.method`` (one name, the first spec); none when the spec is unknown."""
    repair = spec.get("repair")
    if not isinstance(repair, dict):
        return []
    methods = repair.get("methods", repair.get("method"))
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, list):
        return []
    return [m for m in methods if isinstance(m, str) and 0 < len(m) <= MAX_NAME_CHARS]


def _label(part: Any) -> str | None:
    if isinstance(part, dict):
        part = part.get("label") or part.get("name")
    return part if isinstance(part, str) and len(part) <= MAX_NAME_CHARS else None


def _spec_int(value: Any) -> int | None:
    """An integer of a run.json's spec, if it is one that fits the tables' int64."""
    ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    return value if ok else None


def _run_problems(
    prefix: str, records: pd.DataFrame, runs: pd.DataFrame, sums: dict[str, TrainSummary | None]
) -> list[Problem]:
    out = []
    seen: dict[str, list[int]] = {}
    # Records written while training (training.repair_every) say None: nothing to compare.
    pairs = records[["run", "convergence_epoch"]].dropna().drop_duplicates()
    for run, conv in zip(
        pairs["run"].to_numpy(), pairs["convergence_epoch"].to_numpy(), strict=True
    ):
        seen.setdefault(run, []).append(int(conv))
    for row in runs.itertuples(index=False):
        where = f"{prefix}{row.run}"
        if not row.complete:
            out.append(
                Problem(UNFINISHED, f"{where}/", row.run, "no _SUCCESS: still running or failed")
            )
        said = sorted(int(e) for e in seen.get(row.run, []))
        if row.run in sums:
            if sums[row.run] is not None and any(e != row.convergence_epoch for e in said):
                out.append(
                    Problem(
                        INCONSISTENT,
                        f"{where}/",
                        row.run,
                        f"records say convergence epoch {join_epochs(said)} but train/summary.json"
                        f" says {row.convergence_epoch}; using the summary",
                    )
                )
        elif row.complete or row.n_records:
            out.append(
                Problem(
                    NO_SUMMARY,
                    f"{where}/train/summary.json",
                    row.run,
                    "missing; the convergence epoch comes from the records",
                )
            )
            if len(said) > 1:
                out.append(
                    Problem(
                        INCONSISTENT,
                        f"{where}/",
                        row.run,
                        f"records disagree on the convergence epoch ({join_epochs(said)})",
                    )
                )
    return out


# --- the records frame ----------------------------------------------------------------


def _per_class(column: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_records x n_classes matrix, NaN where a class is absent or None; lengths; rows
    holding a NaN or infinite value - not None - among their per-class accuracies)."""
    import pyarrow.compute as pc

    col = column.combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0)), np.zeros(0, dtype="int64"), np.zeros(0, dtype=bool)
    offsets = col.offsets.to_numpy()
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    flat = col.flatten()
    values = flat.to_numpy(zero_copy_only=False).astype(float)
    rows = np.repeat(np.arange(len(col)), lengths)
    matrix = np.full((len(col), int(lengths.max(initial=0))), np.nan)
    matrix[rows, np.arange(len(values)) - offsets[:-1][rows]] = values
    odd = _not_finite(flat, pc)
    nonfinite = np.zeros(len(col), dtype=bool)
    nonfinite[rows[odd]] = True
    return matrix, lengths, nonfinite


def _not_finite(array: Any, pc: Any) -> np.ndarray:
    """NaN or infinite values (a None is absent, not bad) of an Arrow float array."""
    return pc.fill_null(pc.invert(pc.is_finite(array)), False).to_numpy(zero_copy_only=False)


_FEW_STRINGS = ("sweep", "run", "dataset", "model", "kind", "method", "_folder", "_rel")


def _records_frame(
    table: Any,
    sweep: str,
    prefix: str,
    finished: set[str],
    problems: list[Problem],
    labels: dict[str, np.ndarray],
) -> tuple[pd.DataFrame, Examples]:
    import pyarrow as pa
    import pyarrow.compute as pc

    table = bounded(table, problems)
    matrix, lengths, class_nonfinite = _per_class(table.column("per_class_accuracy"))
    values, offsets, present = from_arrow(table.column(PREDICTIONS_COLUMN))
    floats = [
        n for n, t in zip(table.column_names, table.schema.types, strict=True) if t == pa.float64()
    ]
    nonfinite = {n: _not_finite(table.column(n), pc) for n in floats}
    table = table.drop_columns(["per_class_accuracy", PREDICTIONS_COLUMN])
    # Columns of few distinct strings go through a dictionary: each value becomes one
    # Python object shared by all its rows, which converts faster and compares faster
    # (by identity first) in every table built later.
    encoded = []
    for i, (name, kind) in enumerate(zip(table.column_names, table.schema.types, strict=True)):
        if name in _FEW_STRINGS and pa.types.is_string(kind):
            table = table.set_column(i, name, pc.dictionary_encode(table.column(name)))
            encoded.append(name)
    df = table.to_pandas()
    for name in encoded:  # categorical from the dictionary; plain objects from here on
        df[name] = df[name].astype(object)
    df = plain_strings(df)
    df["n_classes"] = lengths.astype("int64")
    repaired = df["kind"] == "repaired"
    df.loc[repaired & df["method"].isna(), "method"] = DEFAULT_METHOD
    acc = pd.DataFrame(matrix, columns=[f"acc_class_{c}" for c in range(matrix.shape[1])])
    df = pd.concat([df, acc], axis=1)

    bad = _check(df, sweep, nonfinite, class_nonfinite)
    # Predictions count only with their run's labels; each must reproduce its record.
    has_labels = df["_folder"].isin(list(labels)).to_numpy(dtype=bool)
    row_of = np.where(present & has_labels, np.arange(len(df)), -1)
    examples = Examples(values, offsets, row_of, labels)
    for i, (n, why) in check_examples(df, examples, list(acc.columns)).items():
        bad.setdefault(i, (INCONSISTENT, f"{why} on {n} test examples; {_LEFT_OUT}"))
    for i, (kind, detail) in sorted(bad.items()):
        problems.append(Problem(kind, df.at[i, "key"], df.at[i, "_folder"], detail))
    kept = np.setdiff1d(np.arange(len(df)), np.fromiter(bad, dtype=np.int64, count=len(bad)))
    df = df.drop(index=list(bad), columns=["_folder", "_rel"])
    df["has_predictions"] = examples.row_of[kept] >= 0

    df["run_complete"] = df["run"].isin(finished)
    for col in _INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    for col in _FLOAT_COLUMNS:
        df[col] = df[col].astype(float)
    df["accepted"] = df["accepted"].astype("boolean")  # null: base, or written before accept
    for col in ("seed", "epoch", "n_classes", "schema_version"):
        df[col] = df[col].astype("int64")
    # Missing in records written while training, until _with_convergence fills it in.
    df["convergence_epoch"] = df["convergence_epoch"].astype("Int64")
    df = df[RECORD_COLUMNS + list(acc.columns)]
    # Base before repaired, classes and epochs ascending: the order people read them in.
    by = ["dataset", "model", "run", "kind", "method", "repair_class", "epoch"]
    order = sorted_rows(df, by)
    return df.take(order).reset_index(drop=True), examples.select(kept[order])


def _check(
    df: pd.DataFrame,
    sweep: str,
    nonfinite: dict[str, np.ndarray],
    class_nonfinite: np.ndarray,
) -> dict[int, tuple[str, str]]:
    """Rows that are no result: index -> (problem kind, detail); the first reason wins.

    Masks are computed for all rows at once; only the (few) flagged rows get a message.
    """
    bad: dict[int, tuple[str, str]] = {}

    def flag(mask: Any, kind: str, detail: Any) -> None:
        for i in df.index[np.asarray(mask, dtype=bool)]:
            if i not in bad:
                bad[i] = (kind, detail(i))

    flag(
        ~df["schema_version"].isin(list(READABLE_VERSIONS)),
        SCHEMA,
        lambda i: _schema_detail(int(df.at[i, "schema_version"])),
    )
    for col, mask in nonfinite.items():
        flag(mask, BAD_VALUE, lambda i, c=col: f"{c} is {float(df.at[i, c])!r}; {_LEFT_OUT}")
    flag(
        class_nonfinite,
        BAD_VALUE,
        lambda i: f"per_class_accuracy holds NaN or infinity; {_LEFT_OUT}",
    )
    for cols, lo, hi, what in _RANGES:
        for col in cols:
            v = df[col].to_numpy(dtype=float, na_value=np.nan)
            out = np.isfinite(v) & ((v < lo) | (v > hi))
            flag(
                out,
                BAD_VALUE,
                lambda i, c=col, w=what, b=_bounds(lo, hi): (
                    f"{c} {float(df.at[i, c])!r} is not {w} ({b}); {_LEFT_OUT}"
                ),
            )
    accs = df.filter(like="acc_class_").to_numpy()
    out = (np.isfinite(accs) & ((accs < 0) | (accs > 1))).any(axis=1)
    flag(out, BAD_VALUE, lambda i: _class_detail(accs[df.index.get_loc(i)]))

    said = _expected_keys(df["_rel"])
    repaired = df["kind"] == "repaired"
    wrong = {
        "sweep": (df["sweep"] != sweep).to_numpy(),
        "run": (df["run"] != df["_folder"]).to_numpy(),
        "epoch": (df["epoch"] != said["epoch"]).to_numpy(),
        "kind": (df["kind"] != said["kind"]).to_numpy(),
        "repair_class": (repaired & (df["repair_class"] != said["repair_class"])).to_numpy(),
        "method": (repaired & (df["method"] != said["method"])).to_numpy(),
    }
    any_wrong = np.logical_or.reduce(list(wrong.values()))

    def misplaced(i: int) -> str:
        j = df.index.get_loc(i)
        parts = []
        for name, mask in wrong.items():
            if mask[j]:
                v = df.at[i, name]
                parts.append(f"{name} {v!r}" if isinstance(v, str) else f"{name} {v}")
        return "the record says " + ", ".join(parts)

    flag(any_wrong, MISPLACED, misplaced)
    return bad


_LEFT_OUT = "the record is left out"


def _bounds(lo: float, hi: float) -> str:
    return f"{lo:g}..{hi:g}" if np.isfinite(hi) else f"at least {lo:g}"


def _expected_keys(rel: pd.Series) -> pd.DataFrame:
    """What each record's key (relative to its run folder) says it is, parsed once per
    distinct relative key (2,500 runs share 40 of them)."""
    kinds = {"base": "base", "repair": "repaired"}
    codes, distinct = pd.factorize(rel, use_na_sentinel=False)
    rows = []
    for r in distinct:
        k = layout.parse(f"_/{r}", root=False)
        rows.append(
            (k.epoch, kinds.get(k.kind), k.repair_class, k.method) if k else (-1, None, None, None)
        )
    out = pd.DataFrame(rows, columns=["epoch", "kind", "repair_class", "method"])
    return out.take(codes).set_axis(rel.index)


def _class_detail(row: np.ndarray) -> str:
    c = int(np.flatnonzero(np.isfinite(row) & ((row < 0) | (row > 1)))[0])
    return f"per_class_accuracy[{c}] {float(row[c])!r} is not a fraction (0..1); {_LEFT_OUT}"
