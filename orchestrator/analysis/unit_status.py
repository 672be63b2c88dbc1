"""Each switch-point unit's status: whether the rules' checkpoints all have a defined
repaired model (``ok``), some lack one (``partial``, compared on what exists) or the
reference does (``incomplete``), with the missing epochs and a note that says why.

Most units of a sweep are whole; they are found with counts over all units at once, and
only the others are looked at epoch by epoch, for what to say about them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.problems import INCOMPLETE, PARTIAL
from orchestrator.analysis.rows import find_rows
from orchestrator.analysis.run_frame import join_epochs
from orchestrator.analysis.words import noun


def status(
    sp: pd.DataFrame,
    unit_of: np.ndarray,
    unit: np.ndarray,
    epoch: np.ndarray,
    defined: np.ndarray,
    runs: pd.DataFrame,
    rules: str,
    after_convergence: str,
) -> dict[str, np.ndarray]:
    """(status, missing epochs, note) per unit - the same for every alpha - of the switch
    points ``sp`` (``unit_of``: each row's unit, numbered in order of first appearance),
    from each unit's repaired models at one alpha: their ``unit``, ``epoch`` and whether
    their Qual is ``defined``."""
    n = int(unit_of.max(initial=-1)) + 1
    first = np.unique(unit_of, return_index=True)[1]  # each unit's first row
    run_u = sp["run"].to_numpy(dtype=object)[first]
    cls_u = sp["repair_class"].to_numpy(dtype=np.int64)[first]
    info = runs.set_index("run")
    conv_of = info["convergence_epoch"].to_dict()
    epochs_of = info["checkpoint_epochs"].map(set).to_dict()
    complete = info["complete"].to_dict()
    whole = _whole_units(
        (unit, epoch, defined), run_u, conv_of, epochs_of, rules, after_convergence
    )
    status = np.full(n, "ok", dtype=object)
    missing = np.full(n, "", dtype=object)
    note = np.full(n, "", dtype=object)
    # Only the other units need their epochs one by one, for what to say about them.
    rest = ~whole[unit]
    present = _epoch_sets(unit[rest], epoch[rest])
    undefined = _epoch_sets(unit[rest & ~defined], epoch[rest & ~defined])
    for u in np.flatnonzero(~whole).tolist():
        run = run_u[u]
        status[u], missing[u], note[u] = _unit_status(
            rules,
            after_convergence,
            int(cls_u[u]),
            conv_of[run],
            epochs_of[run],
            present.get(u, set()),
            undefined.get(u, set()),
        )
    for u in np.flatnonzero(status != INCOMPLETE).tolist():
        if not complete[run_u[u]]:
            note[u] = "; ".join(x for x in (note[u], "run not finished (no _SUCCESS)") if x)
            status[u] = PARTIAL
    return {"status": status, "missing_epochs": missing, "note": note}


def _whole_units(
    one: tuple[np.ndarray, np.ndarray, np.ndarray],
    unit_runs: np.ndarray,
    conv_of: dict[str, Any],
    epochs_of: dict[str, set[int]],
    rules: str,
    after_convergence: str,
) -> np.ndarray:
    """Which units (the runs of ``unit_runs``) have a defined repaired model at every
    checkpoint the rules want - the common case, found with counts rather than a loop over
    records. ``one``: (unit, epoch, Qual defined) of each repaired model at one alpha."""
    unit, epoch, defined = one
    wanted: dict[str, set[int]] = {}
    for run, epochs in epochs_of.items():
        conv = conv_of[run]
        if rules == "notebook":
            wanted[run] = epochs
        elif not pd.isna(conv):
            w = epochs | {int(conv)}
            wanted[run] = {e for e in w if e <= conv} if after_convergence == "exclude" else w
    pairs = [(run, e) for run, w in wanted.items() for e in w]
    if not pairs:
        return np.zeros(len(unit_runs), dtype=bool)
    table = [np.array([r for r, _ in pairs], dtype=object), np.array([e for _, e in pairs])]
    is_wanted = find_rows(table, [unit_runs[unit], epoch]) >= 0
    n_defined = np.bincount(unit[is_wanted & defined], minlength=len(unit_runs))
    n_undefined = np.bincount(unit[is_wanted & ~defined], minlength=len(unit_runs))
    n_wanted = np.array([len(wanted.get(r, ())) for r in unit_runs.tolist()], dtype=np.int64)
    return (n_defined == n_wanted) & (n_undefined == 0) & (n_wanted > 0)


def _epoch_sets(unit: np.ndarray, epoch: np.ndarray) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for u, e in zip(unit.tolist(), epoch.tolist(), strict=True):
        out.setdefault(u, set()).add(e)
    return out


def _unit_status(
    rules: str,
    after_convergence: str,
    cls: int,
    conv: Any,
    epochs: set[int],
    have: set[int],
    bad: set[int],
) -> tuple[str, str, str]:
    if rules == "notebook":
        if not epochs:
            return INCOMPLETE, "", "checkpoint epochs unknown (no train/summary.json or records)"
        missing = epochs - have
        undefined = bad & epochs
        if missing or undefined:
            notes = []
            if missing:
                notes.append(
                    f"no repaired record at {noun(len(missing), 'epoch')} {join_epochs(missing)}"
                )
            if undefined:
                notes.append(
                    f"Acc_{cls} undefined at {noun(len(undefined), 'epoch')}"
                    f" {join_epochs(undefined)}"
                )
            return INCOMPLETE, join_epochs(missing), "; ".join(notes) + " (the notebook's rules"
            " leave out a unit with any checkpoint missing)"
        return "ok", "", ""
    if pd.isna(conv):
        return INCOMPLETE, "", "convergence epoch unknown (no train/summary.json)"
    conv = int(conv)
    wanted = epochs | {conv}
    if after_convergence == "exclude":
        wanted = {e for e in wanted if e <= conv}
    missing = wanted - have
    if conv in bad:
        return (
            INCOMPLETE,
            join_epochs(missing),
            f"Acc_{cls} undefined at the convergence checkpoint (class absent from the test set?)",
        )
    if conv not in have:
        return (
            INCOMPLETE,
            join_epochs(missing),
            f"no repaired record at the convergence checkpoint (epoch {conv})",
        )
    notes = []
    if missing:
        notes.append(f"no repaired record at {noun(len(missing), 'epoch')} {join_epochs(missing)}")
    if bad & wanted:
        notes.append(
            f"Acc_{cls} undefined at {noun(len(bad & wanted), 'epoch')} {join_epochs(bad & wanted)}"
        )
    return (PARTIAL if notes else "ok"), join_epochs(missing), "; ".join(notes)
