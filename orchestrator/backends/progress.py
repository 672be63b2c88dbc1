"""How far each run of a sweep has got, read from the results store alone.

``status`` shows it next to what the scheduler says: the Kubernetes state tells whether a
pod runs, the store tells what that pod has finished (the trainer writes every step's last
file only when the step is done, see ``orchestrator.results``). One listing of the sweep's
prefix serves all runs, so a status refresh costs one LIST plus one read per trained run.
Keys are read back with ``orchestrator.results.layout.parse``, never matched by hand, so
this cannot drift from what the trainer writes.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.results import layout as results
from orchestrator.spec import RunSpec
from orchestrator.store import Store


def run_progress(
    keys: set[str], run: RunSpec, summary: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Progress of one run from the sweep's key listing (and its summary.json, if read).

    ``epoch``: the latest checkpoint written; ``trained``: summary.json exists;
    ``evaluated``/``checkpoints``: checkpoints with base metrics / checkpoints kept;
    ``repairs_done``/``repairs_total``: repair records written / checkpoints x classes x methods;
    ``done``: _SUCCESS exists.
    """
    sweep, name = run.sweep, run.name
    epochs: list[int] = []
    evaluated = 0
    repairs = 0
    for key in keys:
        k = results.parse(key)
        if k is None or k.sweep != sweep or k.run != name:
            continue
        if k.kind == "checkpoint" and k.epoch is not None:
            epochs.append(k.epoch)
        evaluated += k.kind == "base"
        repairs += k.kind == "repair"
    checkpoints = None
    if summary is not None and isinstance(summary.get("checkpoint_epochs"), list):
        checkpoints = len(summary["checkpoint_epochs"])
    return {
        "epoch": max(epochs) if epochs else None,
        "trained": results.summary_json(sweep, name) in keys,
        "evaluated": evaluated,
        "checkpoints": checkpoints,
        "repairs_done": repairs,
        "repairs_total": None
        if checkpoints is None
        else checkpoints * len(run.repair_classes) * len(run.repair.configs()),
        "done": results.success(sweep, name) in keys,
    }


def sweep_progress(store: Store, runs: list[RunSpec]) -> dict[str, dict[str, Any]]:
    """``run name -> run_progress`` for every run, from one listing of the sweep."""
    if not runs:
        return {}
    sweep = runs[0].sweep
    keys = set(store.list(f"{sweep}/"))
    summaries: dict[str, dict[str, Any]] = {}
    wanted = {results.summary_json(sweep, r.name): r.name for r in runs}
    present = [k for k in wanted if k in keys]
    for key, blob in store.read_many(present).items():
        if isinstance(blob, bytes):
            try:
                data = json.loads(blob)
            except ValueError:
                continue  # a damaged summary only costs the repair total
            if isinstance(data, dict):
                summaries[wanted[key]] = data
    return {r.name: run_progress(keys, r, summaries.get(r.name)) for r in runs}


def describe(progress: dict[str, Any]) -> str:
    """One short human line, e.g. ``trained, eval 4/4, repairs 7/12`` or ``done``."""
    if not progress:
        return ""
    if "error" in progress:
        return f"? ({progress['error']})"
    if progress.get("done"):
        return "done"
    parts = []
    if progress.get("trained"):
        parts.append("trained")
    elif progress.get("epoch") is not None:
        parts.append(f"epoch {progress['epoch']}")
    total = progress.get("checkpoints")
    if progress.get("evaluated") or total:
        parts.append(f"eval {progress.get('evaluated', 0)}/{total if total else '?'}")
    rtotal = progress.get("repairs_total")
    if progress.get("repairs_done") or rtotal:
        parts.append(f"repairs {progress.get('repairs_done', 0)}/{rtotal if rtotal else '?'}")
    return ", ".join(parts) or "-"
