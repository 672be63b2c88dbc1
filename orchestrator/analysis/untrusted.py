"""What makes reading a results tree safe against its writer: the checks the loader
(``load.py``) applies to untrusted records before they become numbers.

A results bucket is shared, and whoever could write to it chose every byte. Here: the
problem entry for an object the store refused (too large, not a regular file) or for a
listed key that is unsafe; JSON objects that give a key twice; records whose columns are
out of bounds (``store.limits.COLUMN_CHARS``/``COLUMN_VALUES``, by column name) or whose
per-class vector disagrees in length with the rest of its run; and records seen twice,
which count once when the copies agree and not at all when they do not.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from orchestrator.analysis.problems import (
    BAD_VALUE,
    DUPLICATE,
    NOT_A_FILE,
    REFUSED_KEY,
    TOO_LARGE,
    UNREADABLE,
    Problem,
    one_line,
)
from orchestrator.store import Store
from orchestrator.store.base import NotARegularFile, ObjectTooLarge
from orchestrator.store.limits import COLUMN_CHARS, COLUMN_VALUES

LEFT_OUT = "the record is left out"


def refused_problems(store: Store, prefix: str) -> list[Problem]:
    """The listed keys the store left out as unsafe (``a/../b`` in a bucket), as problems."""
    refused: dict[str, str] = getattr(store, "refused", {}) or {}
    return [
        Problem(REFUSED_KEY, key, "", f"{why}; not read")
        for key, why in sorted(refused.items())
        if key.startswith(prefix)
    ]


class DuplicateKey(ValueError):
    """A JSON object names one key twice: which value is meant is unknown."""


def unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook``: the object, or ``DuplicateKey`` naming the
    first key given twice (json.loads alone would keep the last value silently)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise DuplicateKey(k)
            seen.add(k)
    return out


def unreadable(key: str, run: str, error: Exception) -> Problem:
    """The problem entry for an object the store would not (or could not) give."""
    if isinstance(error, ObjectTooLarge):
        return Problem(TOO_LARGE, key, run, one_line(error))
    if isinstance(error, NotARegularFile):
        return Problem(NOT_A_FILE, key, run, one_line(error))
    return Problem(UNREADABLE, key, run, one_line(f"{type(error).__name__}: {error}"))


# Every key of a JSON object is a string followed by ':' (values may add matches, never
# hide one): as many matches as fields set means no key was given twice.
KEY_LIKE = re.compile(rb'"\s*:')


def key_count(value: Any) -> int:
    """How many object keys the JSON that validated as ``value`` held, at every depth - as
    many as ``KEY_LIKE`` matches means no key was given twice (each match is one key or
    a value that looks like one)."""
    if isinstance(value, BaseModel):
        fields = value.model_fields_set
        return len(fields) + sum(key_count(getattr(value, f)) for f in fields)
    if isinstance(value, dict):
        return len(value) + sum(key_count(v) for v in value.values())
    if isinstance(value, list) and value and isinstance(value[0], dict | list | BaseModel):
        return sum(key_count(v) for v in value)
    return 0


def repeated_keys(tables: list[Any]) -> set[int]:
    """The indexes of the tables (one run's records each) whose ``key`` column holds a key
    twice - in one pass over all of them, not one call per run."""
    import pyarrow as pa

    if not tables:
        return set()
    chunks = [c for t in tables for c in t.column("key").chunks]
    keys = pa.chunked_array(chunks, pa.string()).to_numpy(zero_copy_only=False)
    owner = np.repeat(np.arange(len(tables)), [len(t) for t in tables])
    codes, found = pd.factorize(keys)
    twice = pd.Series(owner * (len(found) + 1) + codes).duplicated(keep=False).to_numpy()
    return set(owner[twice].tolist())


def bounded(table: Any, problems: list[Problem]) -> Any:
    """``table`` without the records whose columns are out of bounds (``COLUMN_CHARS``,
    ``COLUMN_VALUES``, by column name: a name longer than 256 characters, more than 1,000
    per-class values) or whose per-class vector has another length than the run's other
    records' (checked on Arrow lengths, before anything is built from the values)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(table)
    if n == 0:
        return table
    why: dict[int, str] = {}
    names = set(table.column_names)
    for name, limit in COLUMN_CHARS.items():
        column = "_rel" if name == "key" else name  # the key as the run folder holds it
        if column not in names:
            continue
        chars = pc.fill_null(pc.utf8_length(table.column(column)), 0).to_numpy()
        for i in np.flatnonzero(chars > limit).tolist():
            why.setdefault(i, f"{name} is {int(chars[i]):,} characters long (at most {limit})")
    for name, limit in COLUMN_VALUES.items():
        if name not in names or name == "per_class_accuracy":  # that one: below
            continue
        count = pc.fill_null(pc.list_value_length(table.column(name)), 0).to_numpy()
        for i in np.flatnonzero(count > limit).tolist():
            why.setdefault(i, f"{name} has {int(count[i]):,} values (at most {limit:,})")
    values = pc.fill_null(pc.list_value_length(table.column("per_class_accuracy")), 0).to_numpy()
    folders = pc.dictionary_encode(table.column("_folder").combine_chunks())
    codes = folders.indices.to_numpy().astype(np.int64)
    most = COLUMN_VALUES["per_class_accuracy"]
    width = most + 2
    capped = np.minimum(values, most + 1)
    combos, counts = np.unique(codes * width + capped, return_counts=True)
    run_of, length_of = np.divmod(combos, width)
    # Per run, the number of values most of its records have (ties: the smaller number).
    order = np.lexsort((length_of, -counts, run_of))
    first = order[np.r_[True, run_of[order][1:] != run_of[order][:-1]]]
    expected = np.full(len(folders.dictionary), -1, dtype=np.int64)
    expected[run_of[first]] = length_of[first]
    for i in np.flatnonzero((values > most) | (values != expected[codes])).tolist():
        if values[i] > most:
            detail = f"per_class_accuracy has {int(values[i]):,} values (at most {most:,})"
        else:
            detail = (
                f"per_class_accuracy has {int(values[i])} values but the run's other records"
                f" have {int(expected[codes[i]])}"
            )
        why.setdefault(i, detail)
    if not why:
        return table
    keys, folder = table.column("key"), table.column("_folder")
    for i, detail in sorted(why.items()):
        key, run = keys[i].as_py(), folder[i].as_py()
        problems.append(Problem(BAD_VALUE, key, run, f"{detail}; {LEFT_OUT}"))
    keep = np.ones(n, dtype=bool)
    keep[list(why)] = False
    return table.filter(pa.array(keep))


RECORD_ID = ["run", "kind", "method", "repair_class", "epoch"]


def without_duplicates(df: pd.DataFrame, problems: list[Problem]) -> pd.DataFrame:
    """One row per record: keys that name the same record (``epoch_001/`` and
    ``epoch_0001/``; ``repair/class_3/`` and ``repair/arachne/class_3/``) count it once
    when they agree and not at all when they do not - a copy never changes a number. The
    rows kept keep their index labels."""
    twice = df.duplicated(RECORD_ID, keep=False).to_numpy()
    if not twice.any():
        return df
    drop: list[int] = []
    for _, group in df[twice].groupby(RECORD_ID, dropna=False, sort=False):
        keys = group["key"].tolist()
        values = group.drop(columns="key")
        same = all(
            values.iloc[[0, j]].nunique(dropna=False).le(1).all() for j in range(1, len(group))
        )
        if same:
            drop += group.index[1:].tolist()
            for k in keys[1:]:
                problems.append(
                    Problem(
                        DUPLICATE,
                        k,
                        group["run"].iloc[0],
                        f"the same record as {keys[0]}; counted once",
                    )
                )
        else:
            drop += group.index.tolist()
            for k in keys:
                others = ", ".join(x for x in keys if x != k)
                problems.append(
                    Problem(
                        DUPLICATE,
                        k,
                        group["run"].iloc[0],
                        f"names the same record as {others} with other values; which is right"
                        " is unknown, so none of them is counted",
                    )
                )
    return df.drop(index=drop)
