"""How much of one stored object a reader may take in: one size limit per kind of object.

A results bucket is shared, and ``aggregate`` is run by people with more privileges than
the jobs that wrote it. Every object a reader takes from a store is untrusted: a
``metrics.json`` of gigabytes, or one that is a FIFO or ``/dev/zero``, must become one
problem entry, never a hang or an exhausted machine. ``LIMITS`` holds the largest size each
kind of object may have - generous for real results (a metrics.json is about 1 KB, a run's
records.arrow tens of KB per hundred records) and small against memory - and
``read_bounded``/``read_many_bounded`` read through it. A new kind of object (per-example
predictions, say) is one line in ``LIMITS`` and one in ``_BY_NAME``.
"""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.results import layout
from orchestrator.store.base import Store

KiB = 1 << 10
MiB = 1 << 20

# Kind (``layout.Kind``, or a name of ``_BY_NAME``) -> largest size in bytes.
LIMITS: dict[str, int] = {
    "sweep_json": 8 * MiB,  # the expanded spec: grows with datasets x models x seeds
    "run_json": 1 * MiB,
    "summary": 4 * MiB,  # readiness tracks: one per watched (method, class)
    "history": 16 * MiB,
    "base": 1 * MiB,  # one metrics.json: ~1 KB for 10 classes, ~20 KB for 1,000
    "repair": 1 * MiB,
    # One run's records packed (records.arrow); with per-example predictions a record
    # carries one label per test example (10,000 int16 = 20 KB).
    "records": 256 * MiB,
    "predictions": 16 * MiB,  # predictions.npy beside a metrics.json: one label per example
    "test_labels": 16 * MiB,  # <run>/test_labels.npy
    "local_state": 1 * MiB,  # the local backend's state.json
}
DEFAULT_LIMIT = 1 * MiB  # any other object a reader asks for
# File names whose kind ``layout.parse`` does not know (yet), by the key's last part.
_BY_NAME: dict[str, str] = {
    "predictions.npy": "predictions",
    "test_labels.npy": "test_labels",
    "state.json": "local_state",
}
# The longest string field a record may hold (names of sweeps, runs, datasets, models,
# methods): longer ones are damage, not names. Keys (paths) may be longer.
MAX_NAME_CHARS = 256
MAX_KEY_CHARS = 1024
# The most classes a per-class vector may have (ImageNet has 1,000).
MAX_CLASSES = 1000
# The most test examples a run may have (per-example predictions, one label each).
MAX_EXAMPLES = 1_000_000

# Bounds on the columns of a records.arrow (and of records read one by one), by column
# name; a record over one is left out as a bad value before anything is built from it.
# String columns: the most characters; list columns: the most values in one row.
COLUMN_CHARS: dict[str, int] = {
    "sweep": MAX_NAME_CHARS,
    "run": MAX_NAME_CHARS,
    "dataset": MAX_NAME_CHARS,
    "model": MAX_NAME_CHARS,
    "kind": MAX_NAME_CHARS,
    "method": MAX_NAME_CHARS,
    "key": MAX_KEY_CHARS,
}
COLUMN_VALUES: dict[str, int] = {
    "per_class_accuracy": MAX_CLASSES,
    "predictions": MAX_EXAMPLES,
}


def kind_of(key: str, *, root: bool = True) -> str | None:
    """The ``LIMITS`` kind of a store key (relative to a results root, or with
    ``root=False`` to one sweep's folder); None when unknown."""
    parsed = layout.parse(key, root=root)
    if parsed is not None:
        return parsed.kind
    return _BY_NAME.get(key.rsplit("/", 1)[-1])


def limit_for(key: str, kind: str | None = None) -> int:
    """The size limit of ``key`` (or of ``kind`` when given)."""
    if kind is None:
        kind = kind_of(key, root=True) or kind_of(key, root=False)
    return LIMITS.get(kind or "", DEFAULT_LIMIT)


def read_bounded(store: Store, key: str, kind: str | None = None) -> bytes:
    """``store.read_bytes(key)``, refused (``ObjectTooLarge``) above its kind's limit and
    (``NotARegularFile``) when it is no plain object. ``kind`` overrides the kind the key
    names, e.g. ``read_bounded(store, key, "predictions")``."""
    return store.read_bytes(key, max_bytes=limit_for(key, kind))


def read_many_bounded(store: Store, keys: Iterable[str]) -> dict[str, bytes | Exception]:
    """``store.read_many(keys)`` with each key's limit (see ``read_bounded``)."""
    return store.read_many(keys, max_bytes=limit_for)
