"""The report's section on why repairs hurt, and on patch acceptance rules side by side.

Kept apart from report.py so that the section's logic (what counts as which cause, how rules
are compared) lives with ``regressions.py``'s frames; report.py only calls ``harm_section``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.analysis import regressions
from orchestrator.analysis.aggregate import Aggregation, pattern_names
from orchestrator.analysis.document import Doc

ALPHA = 0.5  # the stakeholder weight the section speaks of (the paper's middle one)
RULE_SEPARATOR = "+"  # a method key under a rule other than always: arachne+fixes-some


def harm_section(doc: Doc, agg: Aggregation) -> None:
    """Causes of harm, classes broken most (with the ledger's link), acceptance rules."""
    eff = agg.effects
    if eff.empty:
        return
    doc.h("Why repairs hurt")
    doc.p(
        f"Repairs that lowered Qual(α={ALPHA:g}) against their checkpoint's unrepaired model,"
        " by cause: *RR = 0* patches fixed no repair-set negative of their class yet moved"
        " the decision boundary (`repair.accept: fixes-some` rejects them); *no-op* ones"
        " changed no repair-set prediction at all; *fixed none* turned no test image right;"
        " *broke more* fixed some test images but broke more. `effects.csv` has `no_op`,"
        " `test_fixed` and `test_broken` per repair."
    )
    doc.table(regressions.harm_causes(eff, ALPHA), name="harm-causes")
    notes = []
    if eff["test_fixed"].isna().all():
        notes.append(regressions.NOTE_NO_PREDICTIONS + ".")
    if eff["no_op"].isna().all():
        notes.append(regressions.NOTE_NO_CHANGED + ".")
    for note in notes:
        doc.p(note)
    ledger = agg.regressions
    if len(ledger):
        doc.p(
            "Test images repairs broke, by true class (most first), per dataset, model and"
            " method; [`regressions.parquet`](regressions.parquet) lists every image each"
            " repair fixed or broke (true label, prediction before and after)."
        )
        doc.table(regressions.broken_classes(ledger), name="broken-classes")
    rules = acceptance_table(agg)
    if len(rules):
        doc.h("Patch acceptance rules side by side")
        doc.p(
            f"Each method under each `repair.accept` rule, at α={ALPHA:g}: repairs, patches"
            " kept, repairs that lowered Qual, the mean Qual change, and Table 1's"
            ' pre-convergence units ("early wins") of the units compared. A rejected patch'
            " leaves the unrepaired model, so it can neither harm nor win."
        )
        doc.table(rules, name="acceptance")


def acceptance_table(agg: Aggregation) -> pd.DataFrame:
    """One row per (dataset, model, method key) when a method runs under more than one
    acceptance rule; empty otherwise."""
    eff = agg.effects
    at = eff[np.isclose(eff["alpha"].to_numpy(dtype=float), ALPHA)]
    if at.empty:
        return pd.DataFrame()
    base = at["method"].astype(str).str.split(RULE_SEPARATOR, n=1).str[0]
    rules_per = at.assign(_base=base).groupby(["dataset", "model", "_base"])["method"].nunique()
    if not (rules_per > 1).any():
        return pd.DataFrame()
    pt = agg.patterns
    top = pt[(pt["scope"] == "dataset") & np.isclose(pt["alpha"].to_numpy(dtype=float), ALPHA)]
    pre = top.set_index(["dataset", "method"])
    first = pattern_names(agg.rules, agg.after_convergence)[0]  # the early-win column
    rows = []
    for (d, m, meth), g in at.groupby(["dataset", "model", "method"], sort=True):
        rule = meth.split(RULE_SEPARATOR, 1)[1] if RULE_SEPARATOR in meth else "always"
        kept = g["accepted"]
        win = pre.loc[(d, meth)] if (d, meth) in pre.index else None
        rows.append(
            {
                "dataset": d,
                "model": m,
                "method": meth,
                "accept": rule,
                "repairs": len(g),
                "kept": int(kept.fillna(True).astype(bool).sum()),
                "harmed": int(g["harmed"].fillna(False).astype(bool).sum()),
                "mean Δ Qual (pp)": round(100 * float(g["delta_qual"].mean()), 2),
                "early wins": "" if win is None else f"{int(win[first])} of {int(win['compared'])}",
            }
        )
    return pd.DataFrame(rows)


def readiness_stops_section(doc: Doc, agg: Aggregation) -> None:
    """What a run saves (analysis.readiness.per_run_stops) beside the per-track figure, and
    per track whether the policy's repaired model beats the unrepaired converged model."""
    stops = agg.readiness_stops
    if stops.empty:
        return
    doc.p(
        "With `action: stop` a run ends only when *every* track has fired, so what a run saves"
        " is decided by its last track: per run, the epoch training stops (or would stop) and"
        " the epochs saved, beside the mean of the per-track figure above. A run with a track"
        " that never fired never stops (0 saved)."
    )
    table = stops.rename(columns={"repair_class": "class"}).assign(
        stop_epoch=stops["stop_epoch"].astype(object).where(stops["stop_epoch"].notna(), "never"),
        track_epochs_saved_mean=stops["track_epochs_saved_mean"].round(2),
    )
    doc.table(table.drop(columns=["dataset", "model"]), name="readiness-stops")
    saved = stops["epochs_saved"].dropna()
    per_track = stops["track_epochs_saved_mean"].dropna()
    if len(saved):
        doc.p(
            f"Mean epochs saved per run: {saved.mean():.2f} over {len(saved)} runs"
            f" (per track: {per_track.mean():.2f})."
        )
    tracks = agg.readiness_runs
    if len(tracks) and "beats_unrepaired" in tracks:
        beats = tracks["beats_unrepaired"]
        doc.p(
            "The policy's repaired model beats the unrepaired model at convergence (test Qual"
            f" at the policy's α) in {int(beats.fillna(False).astype(bool).sum())} of"
            f" {int(beats.notna().sum())} tracks (`beats_unrepaired` in readiness_runs.csv)."
        )
