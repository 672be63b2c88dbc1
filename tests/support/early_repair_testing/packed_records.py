"""Records for tests of ``records.arrow``: one valid metrics record to vary, and damage
that only Arrow's full check of a file's buffers can find."""

from __future__ import annotations

from typing import Any

import numpy as np

from orchestrator.results.records import load_run_records

RECORD: dict[str, Any] = {
    "sweep": "s",
    "run": "r",
    "dataset": "digits",
    "model": "small-cnn",
    "seed": 1,
    "epoch": 5,
    "convergence_epoch": 5,
    "kind": "repaired",
    "repair_class": 3,
    "accuracy": 0.5,
    "per_class_accuracy": [0.5, None],
    "f1_macro": 0.5,
    "recall_macro": 0.5,
    "auc_macro": None,
}


def offsets_past_values(data: bytes) -> bytes:
    """``data`` (a records.arrow) with the predictions' last list offset 1,000 past their
    values: its layout and columns stay sound."""
    offsets = load_run_records(data).table.column("predictions").combine_chunks().offsets
    stored = offsets.to_numpy().astype("<i4").tobytes()
    assert data.count(stored) == 1, "the offsets must be found once to be damaged"
    at = data.index(stored) + len(stored) - 4
    past = np.array([offsets[-1].as_py() + 1000], "<i4").tobytes()
    return data[:at] + past + data[at + 4 :]
