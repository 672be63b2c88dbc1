"""The records frame: one validated row per metrics record, from the records' Arrow table.

``load`` gathers every run's records into one Arrow table (from records.arrow files and
single JSON files alike); this turns it into the pandas frame the tables use, and decides
which records are no result: an unreadable schema version, a NaN or out-of-range value, a
record whose fields disagree with its key, or predictions that do not reproduce its
accuracies (``examples.check``). Each such record becomes a problem, never a row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.examples import Examples, from_arrow
from orchestrator.analysis.examples import check as check_examples
from orchestrator.analysis.problems import (
    BAD_VALUE,
    INCONSISTENT,
    MISPLACED,
    SCHEMA,
    Problem,
)
from orchestrator.analysis.rows import plain_strings, sorted_rows
from orchestrator.analysis.untrusted import bounded
from orchestrator.results import layout
from orchestrator.results.records import PREDICTIONS_COLUMN, READABLE_VERSIONS

DEFAULT_METHOD = layout.DEFAULT_METHOD

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


# Base before repaired, classes and epochs ascending: the order people read them in.
RECORD_ORDER = ["dataset", "model", "run", "kind", "method", "repair_class", "epoch"]

_FEW_STRINGS = ("sweep", "run", "dataset", "model", "kind", "method", "_folder", "_rel")


def records_frame(
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
    kept = np.delete(np.arange(len(df)), list(bad))
    df = df.drop(index=list(bad) if bad else None, columns=["_folder", "_rel"])
    df["has_predictions"] = examples.row_of[kept] >= 0

    df["run_complete"] = df["run"].isin(finished)
    for col in _INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    for col in _FLOAT_COLUMNS:
        df[col] = df[col].astype(float)
    df["accepted"] = df["accepted"].astype("boolean")  # null: base, or written before accept
    for col in ("seed", "epoch", "n_classes", "schema_version"):
        df[col] = df[col].astype("int64")
    # Missing in records written while training, until with_convergence fills it in.
    df["convergence_epoch"] = df["convergence_epoch"].astype("Int64")
    df = df[RECORD_COLUMNS + list(acc.columns)]
    order = sorted_rows(df, RECORD_ORDER)
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
        lambda i: schema_detail(int(df.at[i, "schema_version"])),
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


def schema_detail(version: object) -> str:
    return (
        f"schema_version {version!r}; this early-repair reads versions"
        f" {sorted(READABLE_VERSIONS)} (aggregate with the matching early-repair version)"
    )
