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

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis import stats
from orchestrator.analysis.problems import INCOMPLETE
from orchestrator.analysis.tables import GROUP, PRE, rounded
from orchestrator.analysis.words import plural

HEADLINE_COLUMNS = [
    *GROUP,
    "n",
    "k",
    "k_beyond_noise",
    "n_tested",
    "harm_wins",
    "beat_unrepaired",
    "best_beats_unrepaired",
    "mean_gain",
    "seed_min",
    "seed_max",
    "seed_ci_low",
    "seed_ci_high",
    "wilcoxon_p",
    "wilcoxon_n",
    "wilcoxon_note",
    "seeds_needed",
    "mean_offset",
    "offset_low",
    "offset_high",
    "n_resamples",
    "text",
]
MIN_SEEDS_FOR_CI = stats.MIN_SEEDS_FOR_CI
LEVEL = 0.05  # of the Wilcoxon test and of the power computation behind seeds_needed
POWER = 0.8
MAX_SEEDS_NEEDED = 10_000


def wilcoxon_floor(n: int) -> float:
    """The smallest two-sided p an exact Wilcoxon signed-rank test can give with ``n``
    non-zero differences (all of one sign): 2 / 2**n."""
    return 2.0 / 2.0**n if n > 0 else 1.0


def seeds_needed(gains: np.ndarray, level: float = LEVEL, power: float = POWER) -> float:
    """Seeds a two-sided paired t-test at ``level`` needs for ``power`` when the true mean
    and SD of per-seed gains are the observed ones (noncentral t); NaN when the observed
    mean is <= 0, the SD is 0 or fewer than two gains are known; ``MAX_SEEDS_NEEDED`` + 1
    when even that many would not do."""
    return float(seeds_needed_many([gains], level, power)[0])


_TRIES = 64  # sample sizes tried from just below the normal approximation's
_CHUNK = 4


def seeds_needed_many(
    groups: list[np.ndarray], level: float = LEVEL, power: float = POWER
) -> np.ndarray:
    """``seeds_needed`` of every group, in one vectorized noncentral-t evaluation."""
    from scipy import stats as st

    out = np.full(len(groups), np.nan)
    effect = np.full(len(groups), np.nan)
    for i, gains in enumerate(groups):
        g = np.asarray(gains, dtype=float)
        g = g[~np.isnan(g)]
        if len(g) < 2:
            continue
        mean, sd = g.mean(), g.std(ddof=1)
        if mean > 0 and sd > 0:
            effect[i] = mean / sd
    live = np.flatnonzero(~np.isnan(effect))
    if not len(live):
        return out
    d = effect[live]
    # The normal approximation n = ((z_a + z_b) / d)^2 is a little low for a t-test; the
    # exact answer (noncentral t) is the first n from just below it that reaches the power.
    z = st.norm.ppf(1 - level / 2) + st.norm.ppf(power)
    approx = np.minimum((z / d) ** 2, MAX_SEEDS_NEEDED + 3)  # (a tiny effect: no overflow)
    start = np.maximum(2, np.floor(approx).astype(np.int64) - 2)
    too_many = start > MAX_SEEDS_NEEDED
    start = np.minimum(start, MAX_SEEDS_NEEDED)
    first = np.full(len(d), MAX_SEEDS_NEEDED + 1)
    todo = np.arange(len(d))
    # A few sizes at a time, for the groups not yet there: the approximation is close, so
    # most groups stop in the first few (the same first n as trying all at once).
    for lo in range(0, _TRIES + 1, _CHUNK):
        n = start[todo, None] + np.arange(lo, min(lo + _CHUNK, _TRIES + 1))[None, :]
        valid = n <= np.minimum(start[todo] + _TRIES, MAX_SEEDS_NEEDED)[:, None]
        crit = st.t.ppf(1 - level / 2, n - 1)
        nc = d[todo, None] * np.sqrt(n)
        achieved = st.nct.sf(crit, n - 1, nc) + st.nct.cdf(-crit, n - 1, nc)
        ok = (achieved >= power) & valid
        hit = ok.any(axis=1)
        first[todo[hit]] = n[hit, ok[hit].argmax(axis=1)]
        todo = todo[~hit]
        if not len(todo):
            break
    out[live] = np.where(too_many, MAX_SEEDS_NEEDED + 1, first)
    return out


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


@dataclass
class SeedStats:
    """Per group of switch points (``GROUP``, in order), what is said across its seeds:
    the gains, their and the offsets' bootstrap (mean, low, high), the Wilcoxon tests and
    the seeds a paired test needs. Only the switch points' own columns go in, not the
    paired tests', so this can be computed beside those."""

    keys: list[tuple[Any, ...]]
    gains: list[np.ndarray]
    gain_ci: np.ndarray
    offset_ci: np.ndarray
    tests: list[tuple[float, int]]
    n_resamples: int
    needed: np.ndarray


def seed_stats(sp: pd.DataFrame, seed: int = 0) -> SeedStats:
    """``SeedStats`` of the switch points ``sp`` (``seed``: the bootstrap's)."""
    done = sp[sp["status"] != INCOMPLETE]
    keys, gains, offsets = [], [], []
    for key, g in done[[*GROUP, "earlier_gain", "offset"]].groupby(GROUP, sort=True):
        keys.append(key)
        gains.append(rounded(g["earlier_gain"].to_numpy(dtype=float)))
        offsets.append(g["offset"].to_numpy(dtype=float, na_value=np.nan))
    return SeedStats(
        keys,
        gains,
        stats.mean_cis(gains, seed),
        stats.mean_cis(offsets, seed),
        stats.wilcoxons(gains),
        stats.resamples(gains),
        seeds_needed_many(gains),
    )


def headline(
    sp: pd.DataFrame,
    seed: int = 0,
    reference: str = "convergence",
    across: SeedStats | None = None,
) -> pd.DataFrame:
    """The headline table (HEADLINE_COLUMNS), one row per group with a compared unit;
    ``across``: ``seed_stats`` of these switch points, if computed already."""
    done = sp[sp["status"] != INCOMPLETE]
    if done.empty:
        return pd.DataFrame(columns=HEADLINE_COLUMNS)
    pre = done["pattern"] == PRE
    beyond = done["beyond_noise"] if "beyond_noise" in done else pd.Series(pd.NA, index=done.index)
    grouped = done.assign(
        k=pre,
        k_beyond_noise=beyond.fillna(False).astype(bool),
        n_tested=beyond.notna(),
        harm_wins=done["harm_win"].astype(bool),
        beat_unrepaired=pre & done["beats_unrepaired"].fillna(False).astype(bool),
        best_beats_unrepaired=_beats_converged(done),
    ).groupby(GROUP, sort=True)
    count_cols = ["k", "k_beyond_noise", "n_tested", "harm_wins", "beat_unrepaired"]
    counts = grouped[[*count_cols, "best_beats_unrepaired"]].sum()
    if across is None or across.keys != counts.index.tolist():
        across = seed_stats(sp, seed)
    gains, g_ci, o_ci = across.gains, across.gain_ci, across.offset_ci
    tests, n_resamples, needed = across.tests, across.n_resamples, across.needed
    rows = []
    for i, (key, c) in enumerate(counts.iterrows()):
        p, n_w = tests[i]
        known = gains[i][~np.isnan(gains[i])]
        wide = len(known) >= MIN_SEEDS_FOR_CI
        row = dict(zip(GROUP, key, strict=True))
        row.update(
            n=len(gains[i]),
            **{col: int(c[col]) for col in [*count_cols, "best_beats_unrepaired"]},
            mean_gain=g_ci[i, 0],
            seed_min=known.min() if len(known) else np.nan,
            seed_max=known.max() if len(known) else np.nan,
            seed_ci_low=g_ci[i, 1] if wide else np.nan,
            seed_ci_high=g_ci[i, 2] if wide else np.nan,
            wilcoxon_p=p,
            wilcoxon_n=n_w,
            wilcoxon_note=_wilcoxon_note(n_w),
            seeds_needed=needed[i],
            mean_offset=o_ci[i, 0],
            offset_low=o_ci[i, 1] if wide else np.nan,
            offset_high=o_ci[i, 2] if wide else np.nan,
            n_resamples=n_resamples,
        )
        row["text"] = _row_text(row, reference)
        rows.append(row)
    out = pd.DataFrame(rows, columns=HEADLINE_COLUMNS)
    out["seeds_needed"] = out["seeds_needed"].astype("Int64")
    return out


def _beats_converged(units: pd.DataFrame) -> pd.Series:
    """Whether the unit's best repaired model beat the unrepaired convergence checkpoint."""
    beats = rounded(units["best_qual"] - units["base_convergence_qual"])
    return pd.Series(beats > 0, index=units.index).fillna(False).astype(bool)


def _wilcoxon_note(n: int) -> str:
    if n < 2:
        return "fewer than 2 non-zero differences: no test"
    floor = wilcoxon_floor(n)
    if floor >= LEVEL:
        return f"with {n} non-zero differences p cannot go below {floor:.2g}"
    return ""


def seeds(n: int) -> str:
    return plural(n, "seed")


def _row_text(r: dict, ref: str) -> str:
    at = f"at {ref}"
    parts = [
        f"{r['dataset']}/{r['model']}/{r['method']}, class {r['repair_class']},"
        f" α={r['alpha']:g}: repairing before {ref} beat repairing {at} in {r['k']} of"
        f" {seeds(r['n'])}"
    ]
    if r["n_tested"]:
        parts[0] += f", {r['k_beyond_noise']} of them beyond test-set noise"
    if r["k"] and r["harm_wins"]:
        parts[0] += f" ({r['harm_wins']} where the repair {at} had hurt the model)"
    gain = f"mean gain {pp(r['mean_gain'])}"
    if not np.isnan(r["seed_min"]):
        gain += f" (per seed {pp(r['seed_min'])} to {pp(r['seed_max'])}"
        if not np.isnan(r["seed_ci_low"]):
            gain += f", {_ci(r['seed_ci_low'], r['seed_ci_high'])}"
        gain += f", n = {r['n']})"
    parts.append(gain)
    p = r["wilcoxon_p"]
    test = "no test" if np.isnan(p) else f"p = {p:.2g}"
    note = f"; {r['wilcoxon_note']}" if r["wilcoxon_note"] and not np.isnan(p) else ""
    parts.append(f"Wilcoxon signed-rank {test} (n = {r['wilcoxon_n']}{note})")
    if not pd.isna(r["seeds_needed"]):
        needed = r["seeds_needed"]
        many = f"more than {MAX_SEEDS_NEEDED:,}" if needed > MAX_SEEDS_NEEDED else f"{needed:.0f}"
        parts.append(f"{many} seeds would give a paired test 80% power at this mean gain")
    return "; ".join(parts) + "."


def sentences(
    sp: pd.DataFrame,
    head: pd.DataFrame,
    reference: str = "convergence",
    noise_alpha: float = LEVEL,
) -> list[str]:
    """One plain sentence per dataset (and per method when a sweep has several)."""
    done = sp[sp["status"] != INCOMPLETE]
    several = done["method"].nunique() > 1
    out = []
    for (dataset, method), g in done.groupby(["dataset", "method"], sort=True):
        h = head[(head["dataset"] == dataset) & (head["method"] == method)]
        name = f"{dataset} ({method})" if several else str(dataset)
        out.append(_dataset_sentence(name, g, h, reference, noise_alpha))
    return out


def _dataset_sentence(
    name: str, g: pd.DataFrame, h: pd.DataFrame, ref: str, noise_alpha: float
) -> str:
    n, k = len(g), int((g["pattern"] == PRE).sum())
    beyond = g["beyond_noise"] if "beyond_noise" in g else pd.Series(pd.NA, index=g.index)
    tested = int(beyond.notna().sum())
    kb = int(beyond.fillna(False).astype(bool).sum())
    harm = int(g["harm_win"].sum())
    beat = int(_beats_converged(g).sum())
    n_seeds = g["seed"].nunique()
    what = (
        f"{seeds(n_seeds)} x {plural(g['repair_class'].nunique(), 'class')}"
        f" x {g['alpha'].nunique()} α"
    )
    lead = f"{name}, {n} cases ({what}): repairing before {ref} beat repairing at {ref} in {k}"
    test = f"paired test per seed, Holm-adjusted p < {noise_alpha:g}"
    if tested == n:
        noise = f", {kb} of them beyond test-set noise ({test})"
    elif tested:
        noise = f", {kb} of them beyond test-set noise ({test}; {tested} of {n} cases testable)"
    else:
        noise = " (none testable against test-set noise: no per-example predictions)"
    if k == 0:
        return (
            f"{lead}{noise}: repairing at {ref} was never beaten - repair the model at {ref};"
            f" the best repaired model beat the unrepaired model at convergence in {beat} of"
            f" {n}."
        )
    wins = f"{harm} of the {k} wins came where the repair at {ref} had made the model worse"
    if harm * 2 >= k:
        wins += (
            f" - so most of these early-repair wins show the repair damaging the model at"
            f" {ref}; check the repair itself before switching earlier"
        )
    parts = [
        f"{lead}{noise}",
        wins,
        f"the best repaired model beat the unrepaired model at convergence in {beat} of {n}",
    ]
    consistent = h[(h["seed_ci_low"] > 0) & (h["n"] >= MIN_SEEDS_FOR_CI)]
    if len(consistent):
        where = ", ".join(
            sorted(
                {
                    f"class {c} (α={a:g})"
                    for c, a in zip(consistent["repair_class"], consistent["alpha"], strict=True)
                }
            )
        )
        parts.append(f"across seeds, the mean gain's 95% CI excludes zero for {where}")
    elif n_seeds < MIN_SEEDS_FOR_CI:
        parts.append(
            f"with {seeds(n_seeds)} no claim across seeds is made"
            f" (that needs at least {MIN_SEEDS_FOR_CI})"
        )
    else:
        parts.append("no group's 95% CI of the mean gain across seeds excludes zero")
    return "; ".join(parts) + "."
