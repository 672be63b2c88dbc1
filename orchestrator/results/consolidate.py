"""Pack a finished run's records into ``records.arrow``: the trainer's last step before
``_SUCCESS``, so that the aggregator reads one object per finished run.

The trainer calls, right before it writes ``_SUCCESS`` (after the final run.json)::

    write_run_records(self.store, self.sweep, self.name)

It reads back what the run left in the store (every metrics.json, run.json and
train/summary.json - also the ones written by an earlier, resumed attempt) and writes them
as one object. When any of them cannot be read or is not a valid current record, it writes
nothing (and deletes an older records.arrow): the aggregator then reads the single files
and reports the damaged one, exactly as it would without this file.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from orchestrator.results import layout
from orchestrator.results import predictions as predicted
from orchestrator.results.records import READABLE_VERSIONS, MetricsRecord, dump_run_records

if TYPE_CHECKING:  # the protocol only: results stay below the store layer
    from orchestrator.store.base import Store

PACKED_FILES = ("run_json", "summary")


def write_run_records(store: Store, sweep: str, run: str) -> str | None:
    """Write ``<sweep>/<run>/records.arrow``; returns its key, or None when a record of the
    run is unreadable or invalid (then no consolidated file is left behind)."""
    prefix = layout.run_prefix(sweep, run) + "/"
    metrics: list[str] = []
    files: list[str] = []
    npys: set[str] = set()
    for key in store.list(prefix):
        k = layout.parse(key)
        if k is None or k.run != run:
            continue
        if k.kind in ("base", "repair"):
            metrics.append(key)
        elif k.kind in PACKED_FILES:
            files.append(key)
        elif k.kind in ("predictions", "test_labels"):
            npys.add(key)
    # A record without predictions (written before they were stored) packs as null.
    pred_keys = [p for m in metrics if (p := layout.predictions(m)) in npys]
    labels_key = layout.test_labels(sweep, run)
    labels_keys = [labels_key] if labels_key in npys else []
    blobs = store.read_many([*metrics, *files, *pred_keys, *labels_keys])
    target = layout.records(sweep, run)
    records = []
    vectors: list[Any] = []
    for key in metrics:
        blob = blobs[key]
        try:
            if isinstance(blob, Exception):
                raise ValueError(str(blob))
            rec = MetricsRecord.model_validate(json.loads(blob))
            if rec.schema_version not in READABLE_VERSIONS:
                raise ValueError(f"schema_version {rec.schema_version}")
            records.append(rec.model_dump(mode="json"))
            vectors.append(_vector(blobs.get(layout.predictions(key))))
        except (ValueError, RecursionError):
            store.delete_prefix(target)
            return None
    try:
        labels = _vector(blobs.get(labels_key))
    except ValueError:  # the aggregator reads the single files and reports it
        store.delete_prefix(target)
        return None
    packed = {k[len(prefix) :]: b for k in files if isinstance(b := blobs[k], bytes)}
    data = dump_run_records(records, [k[len(prefix) :] for k in metrics], packed, vectors, labels)
    store.write_bytes(target, data)
    return target


def _vector(blob: bytes | Exception | None) -> Any:
    """A read ``.npy`` as its label vector; None when absent; ValueError when damaged."""
    if blob is None:
        return None
    if isinstance(blob, Exception):
        raise ValueError(str(blob))
    return predicted.parse(blob)
