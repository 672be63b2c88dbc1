"""The answer at the top of the report: did repairing before convergence beat repairing at
convergence, how often, by how much, how sure - and was that "win" real?

Per (dataset, model, method, class, alpha), over the seeds the rules could compare:
``k`` of ``n`` seeds had their best repaired checkpoint before the reference; the paired
per-seed difference ``earlier_gain`` (best earlier repair - repair at the reference, any
sign) gets its mean with a bootstrap CI and a Wilcoxon signed-rank p-value; the switch
point's offset (epochs before the reference, 0 when the reference won) gets its mean and
CI. ``harm_wins`` counts early wins whose reference repair had made the model worse than
not repairing it, ``beat_unrepaired`` early wins that also beat the unrepaired reference
model. Then one plain sentence per dataset (and method) that says what it means.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.analysis import stats
from orchestrator.analysis.problems import INCOMPLETE
from orchestrator.analysis.tables import GROUP, PRE, rounded

HEADLINE_COLUMNS = [
    *GROUP,
    "n",
    "k",
    "harm_wins",
    "beat_unrepaired",
    "mean_gain",
    "gain_low",
    "gain_high",
    "n_gain",
    "wilcoxon_p",
    "wilcoxon_n",
    "mean_offset",
    "offset_low",
    "offset_high",
    "n_resamples",
    "text",
]


def pp(value: float, sign: bool = True) -> str:
    """A Qual difference (a fraction) in percentage points: "+0.43 pp"."""
    if np.isnan(value):
        return "n/a"
    return f"{100 * value:+.2f} pp" if sign else f"{100 * value:.2f} pp"


def _ci(low: float, high: float, fmt: str = "pp") -> str:
    if np.isnan(low):
        return "no CI with n < 2"
    if fmt == "pp":
        return f"95% CI [{pp(low)}, {pp(high)}]"
    return f"95% CI [{low:.1f}, {high:.1f}]"


def headline(sp: pd.DataFrame, seed: int = 0, reference: str = "convergence") -> pd.DataFrame:
    """The headline table (HEADLINE_COLUMNS), one row per group with a compared unit."""
    done = sp[sp["status"] != INCOMPLETE]
    if done.empty:
        return pd.DataFrame(columns=HEADLINE_COLUMNS)
    pre = done["pattern"] == PRE
    grouped = done.assign(
        k=pre,
        harm_wins=done["harm_win"].astype(bool),
        beat_unrepaired=pre & done["beats_unrepaired"].fillna(False).astype(bool),
    ).groupby(GROUP, sort=True)
    counts = grouped[["k", "harm_wins", "beat_unrepaired"]].sum()
    gains, offsets = [], []
    for _, g in grouped[["earlier_gain", "offset"]]:
        gains.append(rounded(g["earlier_gain"].to_numpy(dtype=float)))
        offsets.append(g["offset"].to_numpy(dtype=float, na_value=np.nan))
    g_ci = stats.mean_cis(gains, seed)
    o_ci = stats.mean_cis(offsets, seed)
    tests = stats.wilcoxons(gains)
    n_resamples = stats.resamples(gains)
    rows = []
    for i, (key, (k, harm_wins, beat)) in enumerate(counts.iterrows()):
        p, n_w = tests[i]
        row = dict(zip(GROUP, key, strict=True))
        row.update(
            n=len(gains[i]),
            k=int(k),
            harm_wins=int(harm_wins),
            beat_unrepaired=int(beat),
            mean_gain=g_ci[i, 0],
            gain_low=g_ci[i, 1],
            gain_high=g_ci[i, 2],
            n_gain=int((~np.isnan(gains[i])).sum()),
            wilcoxon_p=p,
            wilcoxon_n=n_w,
            mean_offset=o_ci[i, 0],
            offset_low=o_ci[i, 1],
            offset_high=o_ci[i, 2],
            n_resamples=n_resamples,
        )
        row["text"] = _row_text(row, reference)
        rows.append(row)
    return pd.DataFrame(rows, columns=HEADLINE_COLUMNS)


def _row_text(r: dict, ref: str) -> str:
    at = f"at {ref}"
    seeds = "seed" if r["n"] == 1 else "seeds"
    parts = [
        f"{r['dataset']}/{r['model']}/{r['method']}, class {r['repair_class']},"
        f" α={r['alpha']:g}: repairing before {ref} beat repairing {at} in {r['k']} of"
        f" {r['n']} {seeds}"
    ]
    if r["k"] and r["harm_wins"]:
        parts[0] += f" ({r['harm_wins']} of them where the repair {at} had hurt the model)"
    parts.append(
        f"mean gain {pp(r['mean_gain'])} ({_ci(r['gain_low'], r['gain_high'])}, n = {r['n_gain']})"
    )
    off = r["mean_offset"]
    if not np.isnan(off):
        where = f"{-off:.1f} epochs before {ref}" if off < 0 else f"{ref} itself"
        lo, hi = r["offset_low"], r["offset_high"]
        ci = "" if np.isnan(lo) else f" (95% CI [{-hi:.1f}, {-lo:.1f}] epochs before)"
        parts.append(f"best checkpoint on average {where}{ci}")
    p = r["wilcoxon_p"]
    test = "n too small" if np.isnan(p) else f"p = {p:.2g}"
    parts.append(f"Wilcoxon signed-rank {test} (n = {r['wilcoxon_n']} non-zero differences)")
    return "; ".join(parts) + "."


def sentences(sp: pd.DataFrame, head: pd.DataFrame, reference: str = "convergence") -> list[str]:
    """One plain sentence per dataset (and per method when a sweep has several)."""
    done = sp[sp["status"] != INCOMPLETE]
    several = done["method"].nunique() > 1
    out = []
    for (dataset, method), g in done.groupby(["dataset", "method"], sort=True):
        h = head[(head["dataset"] == dataset) & (head["method"] == method)]
        name = f"{dataset} ({method})" if several else str(dataset)
        out.append(_dataset_sentence(name, g, h, reference))
    return out


def _dataset_sentence(name: str, g: pd.DataFrame, h: pd.DataFrame, ref: str) -> str:
    n, k = len(g), int((g["pattern"] == PRE).sum())
    harm = int(g["harm_win"].sum())
    beat = int(((g["pattern"] == PRE) & g["beats_unrepaired"].fillna(False)).sum())
    seeds, classes, alphas = g["seed"].nunique(), g["repair_class"].nunique(), g["alpha"].nunique()
    what = f"{seeds} seed(s) x {classes} class(es) x {alphas} α"
    lead = (
        f"{name}: over {n} cases ({what}), repairing a checkpoint before {ref} beat"
        f" repairing at {ref} in {k}"
    )
    if k == 0:
        return f"{lead}: repairing at {ref} was never beaten - repair the model at {ref}."
    consistent = h[(h["gain_low"] > 0) & (h["k"] > 0)]
    if harm * 2 >= k:
        return (
            f"{lead}, but in {harm} of those {k} the repair at {ref} had made the model worse"
            f" than not repairing it, and only {beat} of the {k} earlier repairs beat the"
            f" unrepaired model at {ref} - so these early-repair wins mostly show the repair"
            f" damaging the model at {ref}; check the repair itself before switching earlier."
        )
    if len(consistent):
        where = ", ".join(
            sorted(
                {
                    f"class {c} (α={a:g})"
                    for c, a in zip(consistent["repair_class"], consistent["alpha"], strict=True)
                }
            )
        )
        return (
            f"{lead} ({harm} of them with a harmful repair at {ref}); the gain's 95% CI"
            f" excludes zero for {where}: repairing earlier paid off there across seeds."
        )
    return (
        f"{lead} ({harm} of them with a harmful repair at {ref}); no group's 95% CI of the"
        f" gain excludes zero, so the advantage of earlier repair is not consistent across"
        f" seeds - more seeds would tell."
    )
