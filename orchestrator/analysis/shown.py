"""The report's tables as a reader sees them: percentage points, ranges, CIs as text.

The CSV files keep every number as a number for programs; these frames are what report.md,
report.html and the LaTeX tables show (report.py, latex.py) and what the terminal summary
reads its checkpoint ranges from (terminal.py). Kept apart from report.py so the words and
the layout of the report are not mixed with the shaping of each table.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from orchestrator.analysis import aggregate as ag
from orchestrator.analysis.effects import CONVERGENCE
from orchestrator.analysis.headline import MAX_SEEDS_NEEDED

MAX_TABLE_ROWS = 200


def capped(df: pd.DataFrame, csv: str) -> tuple[pd.DataFrame, str]:
    """At most ``MAX_TABLE_ROWS`` rows of ``df``, and a note naming ``csv`` when cut."""
    if len(df) <= MAX_TABLE_ROWS:
        return df, ""
    return df.head(MAX_TABLE_ROWS), f"First {MAX_TABLE_ROWS} of {len(df)} rows; see {csv}."


def _pct(v: float) -> float:
    return float("nan") if pd.isna(v) else round(100 * float(v), 2)


def headline_table(head: pd.DataFrame, reference: str) -> pd.DataFrame:
    ref = "conv." if reference == "convergence" else "last"

    def ci(lo: float, hi: float) -> str:
        return "" if pd.isna(lo) else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"

    def off(r: Any) -> str:
        if pd.isna(r.mean_offset):
            return ""
        text = f"{r.mean_offset:+.1f}"
        return (
            text if pd.isna(r.offset_low) else f"{text} [{r.offset_low:+.1f}, {r.offset_high:+.1f}]"
        )

    return pd.DataFrame(
        {
            "dataset": head["dataset"],
            "model": head["model"],
            "method": head["method"],
            "class": head["repair_class"],
            "α": head["alpha"],
            "n seeds": head["n"],
            f"earlier beat {ref}": head["k"],
            "…beyond noise": [
                f"{k}" if t == n else (f"{k} of {t} tested" if t else "n/a")
                for k, t, n in zip(head["k_beyond_noise"], head["n_tested"], head["n"], strict=True)
            ],
            f"…with {ref} repair harmful": head["harm_wins"],
            "mean gain (pp)": (100 * head["mean_gain"]).round(2),
            "per seed (pp)": [
                "" if pd.isna(lo) else f"{100 * lo:+.2f} … {100 * hi:+.2f}"
                for lo, hi in zip(head["seed_min"], head["seed_max"], strict=True)
            ],
            "95% CI (pp), n ≥ 5": [
                ci(a, b) for a, b in zip(head["seed_ci_low"], head["seed_ci_high"], strict=True)
            ],
            "Wilcoxon p (n)": [
                "" if pd.isna(p) else f"{p:.2g} ({n})" + ("*" if note else "")
                for p, n, note in zip(
                    head["wilcoxon_p"], head["wilcoxon_n"], head["wilcoxon_note"], strict=True
                )
            ],
            "seeds for 80% power": [
                ""
                if pd.isna(v)
                else (f"> {MAX_SEEDS_NEEDED:,}" if v > MAX_SEEDS_NEEDED else str(v))
                for v in head["seeds_needed"]
            ],
            f"best epoch − {ref}": [off(r) for r in head.itertuples()],
        }
    )


def table1_shown(pt: pd.DataFrame) -> pd.DataFrame:
    """Table 1 rows as read: the paper's counts, then the wins beyond noise (of the units
    tested) and the checkpoints each unit compared as one range."""
    out = pt.drop(columns=["pre_beyond_noise", "tested", "n_compared_min", "n_compared_max"])
    out.insert(
        out.columns.get_loc("compared"),
        "pre beyond noise",
        [
            "n/a" if not t else (f"{k}" if t == c else f"{k} of {t} tested")
            for k, t, c in zip(pt["pre_beyond_noise"], pt["tested"], pt["compared"], strict=True)
        ],
    )
    out["checkpoints compared"] = [compared_range(r) for r in pt.to_dict("records")]
    return out


def effect_table(eff: pd.DataFrame) -> pd.DataFrame:
    """One row per repaired model (run, method, class, checkpoint), alphas as columns."""
    if eff.empty:
        return pd.DataFrame()
    keys = ["dataset", "model", "method", "repair_class", "seed", "run", "epoch"]
    first = eff.drop_duplicates(keys).set_index(keys)
    wide = eff.pivot_table(index=keys, columns="alpha", values="delta_qual", sort=False)
    worse = (
        eff[eff["harmed"].fillna(False)]
        .groupby(keys)["alpha"]
        .agg(lambda a: "worse at α=" + ", ".join(f"{x:g}" for x in sorted(a)))
    )
    out = pd.DataFrame(index=first.index)
    out["checkpoint"] = [
        f"{e} (conv.)" if c else str(e)
        for e, c in zip(first.index.get_level_values("epoch"), first["at_convergence"], strict=True)
    ]
    out["Δ acc (pp)"] = first["delta_acc"].map(_pct)
    out["Δ Acc_c (pp)"] = first["delta_acc_class"].map(_pct)
    out["RR %"] = first["rr"].round(1)
    out["BR %"] = first["br"].round(1)
    out["seconds"] = first["seconds"].round(2)
    out = out.join(_why_columns(first))
    for alpha in sorted(eff["alpha"].unique()):
        out[f"Δ Qual α={alpha:g} (pp)"] = wide[alpha].reindex(out.index).map(_pct)
    flags = worse.reindex(out.index).astype(object)
    out["flag"] = flags.where(flags.notna(), "").map(lambda s: f"⚠ {s}" if s else "")
    out = out.reset_index().drop(columns=["run", "epoch"])
    return out.rename(columns={"repair_class": "class"})


def _why_columns(first: pd.DataFrame) -> pd.DataFrame:
    """What each repair did (regressions.py): no-op patch, kept or not, test images fixed
    and broken; blank where not recorded."""
    out = pd.DataFrame(index=first.index)
    yes_no = {True: "yes", False: "no"}
    for name, col in (("no-op", "no_op"), ("kept", "accepted")):
        out[name] = first[col].astype(object).map(yes_no).fillna("")
    for name, col in (("test fixed", "test_fixed"), ("test broken", "test_broken")):
        out[name] = first[col].astype(object).where(first[col].notna(), "")
    return out


def switch_table(sp: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, method, class), one column per alpha: "epoch (pattern, +gain)"."""
    short = {ag.PRE: "pre", ag.POST: "post", ag.AFTER: "after"}
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in sp.itertuples(index=False):
        row = rows.setdefault(
            (r.run, r.method, r.repair_class),
            {
                "dataset": r.dataset,
                "model": r.model,
                "method": r.method,
                "class": r.repair_class,
                "seed": r.seed,
                "run": r.run,
                "reference": r.reference_epoch,
                "status": r.status,
            },
        )
        if r.status == ag.INCOMPLETE:
            cell = "incomplete"
        else:
            cell = f"{int(r.best_epoch)} ({short.get(r.pattern, r.pattern)}, +{100 * r.gain:.2f} pp"
            if r.pattern == ag.PRE and not pd.isna(r.p_value):
                cell += f", p = {r.p_value:.2g}" + (" beyond noise" if r.beyond_noise else "")
            cell += ")"
            if r.harm_win:
                cell += " ⚠ reference repair hurt"
        row[f"α={r.alpha:g}: best epoch (pattern, gain)"] = cell
    return pd.DataFrame(list(rows.values()))


def methods_table(meth: pd.DataFrame, every_checkpoint: bool) -> pd.DataFrame:
    """Methods side by side per (dataset, model, class, checkpoint), alphas as columns; only
    each seed's convergence checkpoint unless ``every_checkpoint``."""
    conv = meth if every_checkpoint else meth[meth["checkpoint"] == CONVERGENCE]
    if conv.empty:
        return pd.DataFrame()
    keys = ["dataset", "model", "repair_class", "checkpoint", "method"]
    first = conv.drop_duplicates(keys).set_index(keys)
    out = pd.DataFrame(index=first.index)
    out["n seeds"] = first["n"]
    out["RR %"] = first["rr"].round(1)
    out["BR %"] = first["br"].round(1)
    out["Δ acc (pp)"] = first["delta_acc"].map(_pct)
    out["Δ Acc_c (pp)"] = first["delta_acc_class"].map(_pct)
    wide = conv.pivot_table(index=keys, columns="alpha", values="qual_gain", sort=False)
    for alpha in sorted(conv["alpha"].unique()):
        out[f"Qual gain α={alpha:g} (pp)"] = wide[alpha].reindex(out.index).map(_pct)
    out["seconds"] = first["seconds"].round(2)
    return out.reset_index().rename(columns={"repair_class": "class"})


def readiness_table(summary: pd.DataFrame) -> pd.DataFrame:
    """analysis.readiness.summary for reading: percentage points, epochs, 95% CIs."""

    def ci(prefix: str, scale: float, fmt: str) -> list[str]:
        out = []
        for mean, lo, hi in zip(
            summary[f"{prefix}_mean"],
            summary[f"{prefix}_ci_low"],
            summary[f"{prefix}_ci_high"],
            strict=True,
        ):
            if pd.isna(mean):
                out.append("")
            elif pd.isna(lo):
                out.append(format(scale * mean, fmt))
            else:
                out.append(f"{scale * mean:{fmt}} [{scale * lo:{fmt}}, {scale * hi:{fmt}}]")
        return out

    return pd.DataFrame(
        {
            "dataset": summary["dataset"],
            "model": summary["model"],
            "policy": summary["policy"],
            "action": summary["action"],
            "method": summary["method"],
            "class": summary["repair_class"],
            "α": summary["alpha"],
            "n seeds": summary["n"],
            "regret (pp) [95% CI]": ci("regret", 100, ".2f"),
            "gain over conv. (pp) [95% CI]": ci("gain", 100, "+.2f"),
            "epochs saved per track [95% CI]": ci("epochs_saved", 1, ".1f"),
        }
    )


def compared_range(r: dict[str, Any]) -> str:
    """Checkpoints a unit compared, as a range: "4" or "4-6"."""
    lo, hi = r["n_compared_min"], r["n_compared_max"]
    if pd.isna(lo):
        return ""
    return f"{lo}" if lo == hi else f"{lo}-{hi}"
