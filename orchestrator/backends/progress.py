"""How far each run of a sweep has got, read from the results store alone.

``status`` shows it next to what the scheduler says: the Kubernetes state tells whether a
pod runs, the store tells what that pod has finished (the trainer writes every step's last
file only when the step is done, see ``orchestrator.results``). One listing of the sweep's
prefix serves all runs, so a status refresh costs one LIST plus one read per started run
(its summary.json once trained, else its history.csv, which the trainer rewrites after every
epoch: the epoch shown is the one training has reached, not the last checkpoint). Keys are
read back with ``orchestrator.results.layout.parse``, never matched by hand, so
this cannot drift from what the trainer writes.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from orchestrator.results import layout as results
from orchestrator.spec import RunSpec
from orchestrator.store import Store


def history_epoch(blob: bytes) -> int | None:
    """The last epoch of a ``train/history.csv`` (None when it holds no whole row yet)."""
    text = blob.decode("utf-8", errors="replace")
    rows = list(csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1])))
    try:
        return int(float(rows[-1]["epoch"])) if rows else None
    except (KeyError, TypeError, ValueError):
        return None  # a damaged history only costs the epoch shown


def run_progress(
    keys: set[str],
    run: RunSpec,
    summary: dict[str, Any] | None = None,
    trained_epochs: int | None = None,
) -> dict[str, Any]:
    """Progress of one run from the sweep's key listing (and its summary.json, if read).

    ``epoch``: the epoch training has reached (``trained_epochs``, from history.csv), else
    the summary's epochs trained, else the latest checkpoint; ``checkpoint``: the latest
    checkpoint written; ``trained``: summary.json exists; ``evaluated``/``checkpoints``:
    checkpoints with base metrics / checkpoints kept; ``repairs_done``/``repairs_total``:
    repair records written / checkpoints x classes x methods; ``done``: _SUCCESS exists;
    ``complete``: done and nothing left for the trainer (every kept checkpoint has its base
    metrics and a record for each class x method - new classes or methods make a finished
    run incomplete again).
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
        # Only the run's classes count: a class dropped from the spec is not progress.
        repairs += k.kind == "repair" and k.repair_class in run.repair_classes
    checkpoints = None
    kept: list[int] | None = None
    if summary is not None and isinstance(summary.get("checkpoint_epochs"), list):
        kept = [e for e in summary["checkpoint_epochs"] if isinstance(e, int)]
        checkpoints = len(summary["checkpoint_epochs"])
    trained = results.summary_json(sweep, name) in keys
    done = results.success(sweep, name) in keys
    epoch = trained_epochs
    if epoch is None and summary is not None and isinstance(summary.get("epochs_trained"), int):
        epoch = summary["epochs_trained"]
    if epoch is None and epochs:
        epoch = max(epochs)
    complete = (
        done
        and trained
        and kept is not None
        and len(kept) == checkpoints
        and all(
            results.base_metrics(sweep, name, e) in keys
            and all(
                results.repair_metrics(sweep, name, e, c, m.key) in keys
                for c in run.repair_classes
                for m in run.repair.configs()
            )
            for e in kept
        )
    )
    return {
        "epoch": epoch,
        "checkpoint": max(epochs) if epochs else None,
        "trained": trained,
        "evaluated": evaluated,
        "checkpoints": checkpoints,
        "repairs_done": repairs,
        "repairs_total": None
        if checkpoints is None
        else checkpoints * len(run.repair_classes) * len(run.repair.configs()),
        "done": done,
        "complete": complete,
    }


def sweep_progress(store: Store, runs: list[RunSpec]) -> dict[str, dict[str, Any]]:
    """``run name -> run_progress`` for every run, from one listing of the sweep."""
    if not runs:
        return {}
    sweep = runs[0].sweep
    keys = set(store.list(f"{sweep}/"))
    summaries: dict[str, dict[str, Any]] = {}
    wanted = {results.summary_json(sweep, r.name): r.name for r in runs}
    # Runs still training: how far they are is in the history rewritten every epoch.
    histories = {
        results.history_csv(sweep, r.name): r.name
        for r in runs
        if results.summary_json(sweep, r.name) not in keys
    }
    present = [k for k in [*wanted, *histories] if k in keys]
    reached: dict[str, int | None] = {}
    for key, blob in store.read_many(present).items():
        if not isinstance(blob, bytes):
            continue
        if key in histories:
            reached[histories[key]] = history_epoch(blob)
            continue
        try:
            data = json.loads(blob)
        except ValueError:
            continue  # a damaged summary only costs the repair total
        if isinstance(data, dict):
            summaries[wanted[key]] = data
    return {r.name: run_progress(keys, r, summaries.get(r.name), reached.get(r.name)) for r in runs}


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
