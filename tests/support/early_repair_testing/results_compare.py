"""Every result object of a store in comparable form: what two runs computed, minus timings,
logs and where the store lives (so a resumed run can be compared with an uninterrupted one)."""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd
import torch

from orchestrator.results.records import load_run_records
from orchestrator.store import Store

TIMING = {"seconds"}
WHERE = {"results", "storage"}  # where a store lives, not what was computed


def comparable(store: Store, prefix: str) -> dict[str, Any]:
    """Every result object, minus timing fields, logs and where the store lives."""
    out: dict[str, Any] = {}
    for key in store.list(prefix):
        blob = store.read_bytes(key)
        if key.endswith("trainer.log") or key.endswith("_SUCCESS"):
            out[key] = "present"
        elif key.endswith("records.arrow"):
            # Packs run.json (timings) with the records: compare the records without timings.
            table = load_run_records(blob).table.drop_columns(sorted(TIMING))
            out[key] = table.to_pylist()
        elif key.endswith(".pt"):
            state = torch.load(io.BytesIO(blob), weights_only=True)
            out[key] = {k: v.numpy().tobytes() for k, v in state.items()}
        elif key.endswith("history.csv"):
            out[key] = pd.read_csv(io.BytesIO(blob)).drop(columns="seconds").to_dict("records")
        elif key.endswith(".json"):
            data = json.loads(blob)
            if key.endswith("run.json"):
                data = {k: v for k, v in data["run"].items() if k not in WHERE}
            elif key.endswith("sweep.json"):
                data = {k: v for k, v in data.items() if k not in WHERE}
            else:
                data = {k: v for k, v in data.items() if k not in TIMING}
            out[key] = data
        else:
            out[key] = blob
    return out
