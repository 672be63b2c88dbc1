"""Repair's effect against the unrepaired checkpoint, and repair methods side by side.

A switch point says which repaired checkpoint is best; it does not say whether repairing
helped at all. Here every repaired model is set against the base model of its own
checkpoint: delta Qual, delta test accuracy, delta Acc_c, RR, BR and the repair's seconds,
with ``harmed`` where the repair made Qual lower than not repairing. ``methods`` averages
that over seeds per (dataset, model, class, checkpoint, method), so methods can be
compared at the same checkpoint; with one method it is that method's effect per checkpoint.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.analysis.rows import base_rows, sort_keys
from orchestrator.analysis.tables import model_values, rounded

CONVERGENCE = "convergence"  # the checkpoint column's name for each seed's convergence epoch
EFFECT_COLUMNS = [
    "sweep",
    "dataset",
    "model",
    "method",
    "run",
    "seed",
    "repair_class",
    "epoch",
    "convergence_epoch",
    "at_convergence",
    "alpha",
    "qual_before",
    "qual_after",
    "delta_qual",
    "acc_before",
    "acc_after",
    "delta_acc",
    "acc_class_before",
    "acc_class_after",
    "delta_acc_class",
    "rr",
    "br",
    "seconds",
    "harmed",
    # Why (regressions.py): the patch changed no repair-set prediction; it was kept
    # (repair.accept); test images it turned right / wrong. Empty where not recorded.
    "no_op",
    "accepted",
    "test_fixed",
    "test_broken",
]


def effects(
    q: pd.DataFrame,
    rows: np.ndarray,
    records: pd.DataFrame,
    changes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per repaired model and alpha, against the base model of its checkpoint.

    ``rows``: the records row of each row of ``q`` (``quality_rows``); ``changes``
    (``regressions.changes``, indexed by records row) adds what each repair fixed and
    broke. The base model's Qual is computed from its record as ``quality`` computes it:
    looking records up by row costs far less than joining string keys for large sweeps."""
    # The repaired models' rows of ``q``, in the table's order: by keys ranked once over
    # the records (a third of the rows), then alpha; one take builds the frame.
    rep = np.flatnonzero((records["kind"] == "repaired").to_numpy(dtype=bool)[rows])
    keys = sort_keys(records, ["dataset", "model", "method", "repair_class", "seed", "run"])
    keys.append(records["epoch"].to_numpy(dtype=np.int64))
    rank = np.empty(len(records), dtype=np.int64)
    rank[np.lexsort(keys[::-1])] = np.arange(len(records))
    rep = rep[np.lexsort((q["alpha"].to_numpy(dtype=float)[rep], rank[rows[rep]]))]
    eff = q.take(rep).reset_index(drop=True)
    eff = eff.rename(  # kind is base or repaired: load() leaves out any other
        columns={"qual": "qual_after", "accuracy": "acc_after", "acc_class": "acc_class_after"}
    )
    mine = rows[rep]
    eff["acc_class_before"], eff["acc_before"], eff["qual_before"] = model_values(
        records,
        base_rows(records, mine),
        eff["repair_class"].to_numpy(dtype=np.int64),
        eff["alpha"].to_numpy(dtype=float),
    )
    for col in ("rr", "br", "seconds"):
        eff[col] = records[col].to_numpy(dtype=float)[mine]
    why_cols = EFFECT_COLUMNS[-4:]
    if changes is None:
        changes = pd.DataFrame(columns=why_cols)
    why = changes.reindex(index=mine, columns=why_cols)
    for col, dtype in zip(why_cols, ["boolean", "boolean", "Int64", "Int64"], strict=True):
        eff[col] = why[col].astype(dtype).array
    eff["delta_qual"] = eff["qual_after"] - eff["qual_before"]
    eff["delta_acc"] = eff["acc_after"] - eff["acc_before"]
    eff["delta_acc_class"] = eff["acc_class_after"] - eff["acc_class_before"]
    eff["at_convergence"] = (eff["epoch"] == eff["convergence_epoch"]).fillna(False).astype(bool)
    delta = rounded(eff["delta_qual"])
    eff["harmed"] = pd.array(delta < 0, dtype="boolean")
    eff.loc[delta.isna().to_numpy(), "harmed"] = pd.NA
    return eff[EFFECT_COLUMNS]


METHOD_COLUMNS = [
    "dataset",
    "model",
    "repair_class",
    "checkpoint",
    "method",
    "alpha",
    "n",
    "rr",
    "br",
    "delta_acc",
    "delta_acc_class",
    "qual_gain",
    "harmed",
    "seconds",
]


def methods(eff: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds per (dataset, model, class, checkpoint, method, alpha).

    ``checkpoint`` is the epoch, or ``convergence`` for each seed's own convergence
    checkpoint (seeds converge at different epochs); ``qual_gain`` is the mean delta Qual,
    ``harmed`` how many seeds' repairs lowered Qual, ``n`` the seeds averaged.
    """
    if eff.empty:
        return pd.DataFrame(columns=METHOD_COLUMNS)
    # Grouped by the checkpoint's order (the epoch; convergence last), which names it: a
    # string label per row would cost more than the grouping.
    last = 10**9
    by = ["dataset", "model", "repair_class", "_o", "method", "alpha"]
    values = ["run", "rr", "br", "delta_acc", "delta_acc_class", "delta_qual", "harmed", "seconds"]
    used = eff[["dataset", "model", "repair_class", "method", "alpha", "epoch", *values]]
    rows = pd.concat(
        [
            used.rename(columns={"epoch": "_o"}),
            used[eff["at_convergence"]].rename(columns={"epoch": "_o"}).assign(_o=last),
        ],
        ignore_index=True,
    )
    g = rows.groupby(by, sort=True, dropna=False)
    out = g.agg(
        n=("run", "size"),
        rr=("rr", "mean"),
        br=("br", "mean"),
        delta_acc=("delta_acc", "mean"),
        delta_acc_class=("delta_acc_class", "mean"),
        qual_gain=("delta_qual", "mean"),
        harmed=("harmed", "sum"),
        seconds=("seconds", "mean"),
    ).reset_index()
    out["harmed"] = out["harmed"].astype("int64")
    order = out["_o"].to_numpy()
    out["checkpoint"] = np.where(order == last, CONVERGENCE, order.astype(str)).astype(object)
    return out[METHOD_COLUMNS]
