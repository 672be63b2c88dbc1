"""Which test examples each repair fixed and broke: the regression ledger, and why harm happens.

A repaired model and the base model of its checkpoint were evaluated on the same test images,
so their per-example predictions (``Loaded.examples``) say exactly which images the repair
turned right (``fixed``) and which it turned wrong (``broken``) - the counts the
regression-aware repair literature reports. With ``repair_changed`` (how many repair-set
predictions the patch changed, from the trainer) a harmful repair splits into "fixed some,
broke more" and "fixed nothing, moved the boundary" (a no-op patch). Records without
predictions, or whose base model has none, get empty counts; trees written before
``repair_changed`` existed get an empty ``no_op``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.analysis.examples import blocks
from orchestrator.analysis.load import Loaded
from orchestrator.analysis.rows import base_rows

# One row per repaired record (its identity, as in the records frame).
RECORD_KEYS = ["run", "method", "repair_class", "epoch"]
CHANGE_COLUMNS = [*RECORD_KEYS, "no_op", "accepted", "test_fixed", "test_broken"]
LEDGER_COLUMNS = [
    "dataset",
    "model",
    "method",
    "run",
    "seed",
    "repair_class",
    "epoch",
    "accepted",
    "example",  # index in the run's test order (test_labels.npy)
    "label",  # true label
    "before",  # the base model's prediction
    "after",  # the repaired model's prediction
    "change",  # fixed | broken
]
_CHANGE = np.array(["broken", "fixed"], dtype=object)  # by "now right"
NOTE_NO_PREDICTIONS = (
    "test_fixed, test_broken and the regression ledger are empty: this tree holds no"
    " per-example test predictions (written before predictions.npy existed)"
)
NOTE_NO_CHANGED = (
    "no_op is empty: these records were written before the trainer counted the repair-set"
    " predictions a patch changes"
)


_USED = [*RECORD_KEYS, "dataset", "model", "seed", "repair_changed", "accepted"]


def _pairs(loaded: Loaded) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The repaired rows, their records rows and the rows of their checkpoints' base
    models (-1: none)."""
    rec = loaded.records
    is_rep = (rec["kind"] == "repaired").to_numpy(dtype=bool)
    rep = np.flatnonzero(is_rep)
    # only the columns used: a filter copies every column it keeps
    return rec.loc[is_rep, _USED].reset_index(drop=True), rep, base_rows(rec, rep)


def changes(loaded: Loaded) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per repaired record, indexed by its records row: ``CHANGE_COLUMNS``; the
    ledger: one row per test example a repair fixed or broke, ``LEDGER_COLUMNS``)."""
    merged, rep_rows, bases = _pairs(loaded)
    ex = loaded.examples
    fixed = np.full(len(merged), -1, dtype=np.int64)
    broken = np.full(len(merged), -1, dtype=np.int64)
    runs = merged["run"].to_numpy(dtype=object)
    # (a row that has predictions has its run's labels: Examples.has)
    ok = (bases >= 0) & ex.has(rep_rows) & ex.has(np.maximum(bases, 0))
    # Test set by test set, as matrices compared with one label vector: a loop over
    # records would cost seconds in a sweep of 100,000 records.
    who: list[np.ndarray] = []
    idx: list[np.ndarray] = []
    parts: list[tuple[np.ndarray, ...]] = []
    for group, ts in ex.test_sets(runs[ok]):
        rows = np.flatnonzero(ok)[group]
        n = len(ts.labels)
        rows = rows[(ex.lengths(rep_rows[rows]) == n) & (ex.lengths(bases[rows]) == n)]
        for block in blocks(rows, n):
            after, before = ex.matrix(rep_rows[block]), ex.matrix(bases[block])
            now = after == ts.labels
            moved = (before == ts.labels) != now  # fixed or broken
            # row-major: each record's examples in order (a flat index is several times
            # faster to find than np.nonzero's row and column)
            flat = np.flatnonzero(moved)
            r, e = np.divmod(flat, max(n, 1))
            right = now.ravel()[flat]
            fixed[block] = np.bincount(r, weights=right, minlength=len(block)).astype(np.int64)
            broken[block] = np.bincount(r, minlength=len(block)) - fixed[block]
            who.append(block[r])
            idx.append(e)
            parts.append((ts.labels[e], before.ravel()[flat], after.ravel()[flat], right))
    if len(who) > 1:  # several test sets: records in frame order again
        order = np.argsort(np.concatenate(who), kind="stable")
        who, idx = [np.concatenate(who)[order]], [np.concatenate(idx)[order]]
        parts = [tuple(np.concatenate([p[j] for p in parts])[order] for j in range(4))]
    out = merged[RECORD_KEYS].copy()
    out["repair_class"] = out["repair_class"].astype("int64")
    changed = merged["repair_changed"]
    out["no_op"] = pd.array(changed == 0, dtype="boolean")
    out.loc[changed.isna().to_numpy(), "no_op"] = pd.NA
    out["accepted"] = merged["accepted"].astype("boolean")
    out["test_fixed"] = pd.arrays.IntegerArray(fixed, fixed < 0)
    out["test_broken"] = pd.arrays.IntegerArray(broken, broken < 0)
    if parts and sum(len(w) for w in who):
        ident = merged[["dataset", "model", "method", "run", "seed", "repair_class", "epoch"]]
        ident = ident.assign(accepted=out["accepted"], repair_class=out["repair_class"])
        ledger = ident.iloc[np.concatenate(who)].reset_index(drop=True)
        ledger["example"] = np.concatenate(idx).astype("int64")
        for j, col in enumerate(("label", "before", "after")):
            ledger[col] = np.concatenate([p[j] for p in parts]).astype("int64")
        ledger["change"] = _CHANGE[np.concatenate([p[3] for p in parts]).astype(np.int64)]
        ledger = ledger[LEDGER_COLUMNS]
    else:
        ledger = pd.DataFrame({c: pd.Series(dtype=object) for c in LEDGER_COLUMNS})
    return out[CHANGE_COLUMNS].set_axis(rep_rows), ledger


def broken_classes(ledger: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    """Per (dataset, model, method): the true classes of the test images repairs broke most,
    with how many, and how many images the repairs fixed and broke in all."""
    cols = ["dataset", "model", "method", "fixed", "broken", "most broken classes"]
    if ledger.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (d, m, meth), g in ledger.groupby(["dataset", "model", "method"], sort=True):
        broke = g[g["change"] == "broken"]["label"].value_counts()
        broke = broke.sort_index().sort_values(ascending=False, kind="stable").head(top)
        most = ", ".join(f"{int(c)} ({int(n)})" for c, n in broke.items()) or "none"
        rows.append(
            (
                d,
                m,
                meth,
                int((g["change"] == "fixed").sum()),
                int(len(g) - (g["change"] == "fixed").sum()),
                most,
            )
        )
    return pd.DataFrame(rows, columns=cols)


def harm_causes(eff: pd.DataFrame, alpha: float = 0.5) -> pd.DataFrame:
    """Per (dataset, model, method), at ``alpha``: repairs that lowered Qual, split by cause -
    RR = 0 (fixed no repair-set negative of the class), no-op (changed no repair-set
    prediction at all: a subset of RR = 0 with BR = 0), fixed no test image, fixed some test
    images but broke more."""
    cols = [
        "dataset",
        "model",
        "method",
        "repairs",
        "harmed",
        "RR = 0",
        "no-op",
        "fixed none",
        "broke more",
    ]
    at = eff[np.isclose(eff["alpha"].to_numpy(dtype=float), alpha)]
    if at.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (d, m, meth), g in at.groupby(["dataset", "model", "method"], sort=True):
        h = g[g["harmed"].fillna(False).astype(bool)]
        fixed, broken = h["test_fixed"], h["test_broken"]
        rows.append(
            (
                d,
                m,
                meth,
                len(g),
                len(h),
                int((h["rr"] == 0).sum()),
                _count(h["no_op"]),
                _count(fixed == 0) if fixed.notna().any() else pd.NA,
                _count((fixed > 0) & (broken > fixed)) if fixed.notna().any() else pd.NA,
            )
        )
    return pd.DataFrame(rows, columns=cols)


def _count(mask: pd.Series) -> object:
    """True values of a nullable mask; NA when every value is missing."""
    return pd.NA if mask.isna().all() else int(mask.fillna(False).astype(bool).sum())
