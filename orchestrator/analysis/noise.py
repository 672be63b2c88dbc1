"""Is an early repair's win bigger than the test set can resolve? A paired test per unit
that accounts for picking the best of several earlier checkpoints.

Every model of a run was evaluated on the same test examples, and Qual is a weighted mean
of per-example correctness: each example weighs ``(1 - alpha) / n``, and each example of the
target class c ``alpha / n_c`` more. So the difference in Qual between an earlier
checkpoint's repaired model and the reference's is a sum over the *discordant* examples
(one model right, the other wrong) of +-weight; on every other example the two agree.

* **Sign-flip test** (exact). Under "no difference", each discordant example is equally
  likely to favour either model, independently: the numbers of class-c and other examples
  favouring the earlier model are Binomial(m_c, 1/2) and Binomial(m_o, 1/2). With only two
  weights the exact null distribution of the difference is one sum over the smaller of the
  two counts - never too large for exact computation, so no Monte Carlo is needed. One
  sided: the alternative is that the earlier checkpoint is better (what a "win" claims).
* **Selection.** A unit compares k earlier checkpoints with the reference; the best of them
  is picked afterwards, so its p-value is Holm-adjusted over all k (``holm``). The unit's
  win is *beyond noise* when it is a win (pattern pre-convergence) and the best earlier
  checkpoint's adjusted p is below ``noise_alpha``.
* **Gain CI** given the selection: a paired bootstrap over test examples, stratified by
  class (each class keeps its size, so the weights stay those of Qual), seeded per unit
  from ``--bootstrap-seed``; percentile interval of 9999 resamples. It describes the picked
  checkpoint's gain and does not undo the selection (the Holm p does that). For sweeps too
  large to resample within ``BOOT_BUDGET`` the interval is the bootstrap's normal interval
  (Efron & Tibshirani's "standard" interval) from the exact bootstrap variance - the
  B -> infinity limit, no draws: gain +- 1.96 sqrt(sum_k w_k^2 ((p_k + m_k) - (p_k - m_k)^2
  / n_k)) over the class strata k; ``gain_ci_method`` says which.

Units without predictions (trees written before they were stored, or a record without
them) get empty columns; ``NOTE_NO_PREDICTIONS`` says why in the report.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from orchestrator.analysis.examples import Examples, blocks
from orchestrator.analysis.problems import INCOMPLETE
from orchestrator.analysis.rows import sorted_rows
from orchestrator.analysis.tables import PRE, UNIT, UnitModels, rounded

NOISE_ALPHA = 0.05
N_BOOT = 9999
MIN_BOOT = 999
# Resampled class counts per aggregation (resamples x class strata with a discordant
# example, summed over the pairs resampled) that Monte Carlo may draw: 9999 resamples for
# sweeps up to a few hundred units, fewer (never under MIN_BOOT) above; beyond that the
# draws would cost seconds to minutes (a sweep of 100,000 records has 30,000 units), and
# the interval is the bootstrap's normal one from its exact variance instead.
BOOT_BUDGET = 3_000_000
PERCENTILE = "percentile"
NORMAL = "normal"
CONFIDENCE = 0.95
NOISE_COLUMNS = [
    "n_discordant",
    "gain_ci_low",
    "gain_ci_high",
    "gain_ci_method",
    "p_value",
    "beyond_noise",
]
NOTE_NO_PREDICTIONS = (
    "no per-example predictions (results written before early-repair stored them, or a"
    " record without its predictions.npy): wins cannot be tested against test-set noise"
)
_EPS = 1e-7  # in counts of examples: far below the spacing of distinct differences


# --- the exact sign-flip test -----------------------------------------------------------


class _Binomial:
    """Binomial(m, 1/2) probabilities and upper tails from log-factorials, as tables for
    each m in ``ms`` looked up in one gather; tails are summed from the far end, so small
    p-values keep their precision."""

    def __init__(self, ms: np.ndarray) -> None:
        from scipy.special import gammaln

        self.ms = np.unique(ms)
        lf = gammaln(np.arange(int(self.ms.max(initial=0)) + 2) + 1.0)
        # every m's pmf(0..m) one after the other; its tail P(V >= 0..m+1) likewise
        self.pmf_at = np.concatenate([[0], np.cumsum(self.ms + 1)[:-1]]).astype(np.int64)
        self.tail_at = self.pmf_at + np.arange(len(self.ms))
        m = np.repeat(self.ms, self.ms + 1)
        k = np.arange(len(m)) - np.repeat(self.pmf_at, self.ms + 1)
        self.pmf_table = np.exp(lf[m] - lf[k] - lf[m - k] - m * np.log(2.0))
        tails = []
        for i, mm in enumerate(self.ms.tolist()):
            pmf = self.pmf_table[self.pmf_at[i] : self.pmf_at[i] + mm + 1]
            tails.append(np.concatenate([np.cumsum(pmf[::-1])[::-1], [0.0]]))
        self.tail_table = np.concatenate(tails) if tails else np.zeros(0)

    def pmf(self, k: np.ndarray, m: np.ndarray, item: np.ndarray | None = None) -> np.ndarray:
        """P(U = k) for U ~ Binomial(m, 1/2); with ``item``, ``m`` is per row and ``k`` per
        term, the terms of row i being those where ``item == i``."""
        at = self.pmf_at[np.searchsorted(self.ms, m)]
        return self.pmf_table[(at if item is None else at[item]) + k]

    def tail(self, v: np.ndarray, m: np.ndarray, item: np.ndarray | None = None) -> np.ndarray:
        """P(V >= v) for V ~ Binomial(m, 1/2), any integer v (``item``: as in ``pmf``)."""
        at = self.tail_at[np.searchsorted(self.ms, m)]
        if item is not None:
            at, m = at[item], m[item]
        return self.tail_table[at + np.clip(v, 0, m + 1)]


def signflip_p(
    mc: np.ndarray, mo: np.ndarray, xc: np.ndarray, xo: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """One-sided exact p of ``a * X + b * Y >= a * xc + b * xo`` under sign flips, per row.

    ``mc``/``mo``: discordant examples of the target class / of the others; ``xc``/``xo``:
    (favouring the earlier model) - (favouring the reference) among them; ``a``/``b``: their
    weights (a > 0, b >= 0). X = 2U - mc, Y = 2V - mo with U ~ Bin(mc, 1/2), V ~ Bin(mo, 1/2).
    """
    mc, mo, xc, xo = (np.asarray(v, dtype=np.int64) for v in (mc, mo, xc, xo))
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = np.ones(len(mc))
    if not len(mc):
        return out
    binom = _Binomial(np.concatenate([mc, mo]))
    # Sum over the variable with fewer values; the other's coefficient must be positive.
    over_x = (mc <= mo) & (b > 0)
    for rows, (m_sum, m_tail, x_sum, x_tail, c_sum, c_tail) in (
        (np.flatnonzero(over_x), (mc, mo, xc, xo, a, b)),
        (np.flatnonzero(~over_x), (mo, mc, xo, xc, b, a)),
    ):
        if not len(rows):
            continue
        m1, m2 = m_sum[rows], m_tail[rows]
        t = c_sum[rows] * x_sum[rows] + c_tail[rows] * x_tail[rows]
        reps = m1 + 1
        item = np.repeat(np.arange(len(rows)), reps)
        u = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
        x = 2 * u - m1[item]
        # P(c_tail * (2V - m2) >= t - c_sum * x)  <=>  V >= ((t - c_sum x) / c_tail + m2) / 2
        need = ((t[item] - c_sum[rows][item] * x) / c_tail[rows][item] + m2[item]) / 2
        v = np.ceil(need - _EPS).astype(np.int64)
        terms = binom.pmf(u, m1, item) * binom.tail(v, m2, item)
        out[rows] = np.minimum(1.0, np.bincount(item, weights=terms, minlength=len(rows)))
    return out


def holm(p: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values within each group (step-down, monotone)."""
    p = np.asarray(p, dtype=float)
    group = np.asarray(group)
    if not len(p):
        return p.copy()
    # Groups are a unit's few earlier checkpoints: each group a row of a grid, sorted and
    # adjusted along the row - a tenth of the time of sorting by (group, p) - unless one
    # group is so large that the grid would not fit.
    by_group = np.argsort(group, kind="stable")
    g = group[by_group]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    gid = np.cumsum(np.r_[True, g[1:] != g[:-1]]) - 1
    col = np.arange(len(g)) - starts[gid]
    size = np.bincount(gid)
    width = int(size.max())
    if len(size) * width > 8 * len(p) or np.isnan(p).any():
        return _holm_sorted(p, group)
    grid = np.full((len(size), width), np.inf)
    grid[gid, col] = p[by_group]
    rank = np.argsort(grid, axis=1, kind="stable")  # stable: ties keep their order
    ps = np.take_along_axis(grid, rank, axis=1)
    with np.errstate(invalid="ignore"):  # the padding after each group's p-values
        scaled = np.minimum(1.0, (size[:, None] - np.arange(width)) * ps)
    adj = np.maximum.accumulate(scaled, axis=1)
    out = np.empty(len(p))
    out[by_group[starts[gid] + rank[gid, col]]] = adj[gid, col]
    return out


def _holm_sorted(p: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``holm`` by one sort of all p-values by (group, p)."""
    order = np.lexsort((p, group))
    g, ps = group[order], p[order]
    starts = np.r_[True, g[1:] != g[:-1]]
    gid = np.cumsum(starts) - 1
    rank = np.arange(len(g)) - np.flatnonzero(starts)[gid]
    size = np.bincount(gid)[gid]
    scaled = np.minimum(1.0, (size - rank) * ps)
    adj = pd.Series(scaled).groupby(gid).cummax().to_numpy()
    out = np.empty_like(adj)
    out[order] = adj
    return out


# --- the stratified paired bootstrap ----------------------------------------------------


def unit_seed(seed: int, *parts: object) -> np.random.Generator:
    """A generator of its own per unit: a unit's interval never depends on other units."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def bootstrap_draws(
    plus: np.ndarray, minus: np.ndarray, sizes: np.ndarray, rng: np.random.Generator, n_boot: int
) -> np.ndarray:
    """Resampled (favouring - disfavouring) counts per class, ``n_boot`` x classes.

    Resampling a class's ``sizes[k]`` examples with replacement, the number of draws that
    land on its discordant examples is Binomial(size, (plus + minus) / size), and of those
    the number favouring the earlier model Binomial(landed, plus / (plus + minus)).
    """
    out = np.zeros((n_boot, len(sizes)), dtype=np.int64)
    disc = plus + minus
    ks = np.flatnonzero(disc > 0)
    if len(ks):
        landed = rng.binomial(sizes[ks], disc[ks] / sizes[ks], size=(n_boot, len(ks)))
        up = rng.binomial(landed, plus[ks] / disc[ks])
        out[:, ks] = 2 * up - landed
    return out


def normal_ci(
    plus: np.ndarray, minus: np.ndarray, sizes: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap's normal interval of sum_k w_k (plus_k - minus_k) per row, from the
    exact variance of the class-stratified resampling (rows x classes arrays)."""
    from scipy.stats import norm

    gain = ((plus - minus) * w).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = (plus + minus) - np.where(sizes > 0, (plus - minus) ** 2 / sizes, 0.0)
    half = norm.ppf(0.5 + CONFIDENCE / 2) * np.sqrt((w**2 * per_class).sum(axis=1))
    return gain - half, gain + half


def percentile_ci(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


# --- per unit ---------------------------------------------------------------------------


@dataclass
class _Pairs:
    """Earlier repaired models against their reference's, per class of the test set."""

    plus: np.ndarray  # pairs x classes: the earlier model right, the reference wrong
    minus: np.ndarray  # pairs x classes: the other way round
    sizes: np.ndarray  # pairs x classes: test examples per class (of the pair's run)


def _pairs(runs: np.ndarray, examples: Examples, early: np.ndarray, late: np.ndarray) -> _Pairs:
    """The pairs of records rows ``early[i]`` and ``late[i]``, both with predictions;
    ``runs``: the run of every records row."""
    width = examples.hits.shape[1]
    plus = np.zeros((len(early), width), dtype=np.int64)
    minus = np.zeros_like(plus)
    sizes = np.zeros_like(plus)
    # The checked per-class hits give (plus - minus); the examples where the two models
    # disagree give (plus + minus): one pass over the predictions, test set by test set.
    for group, ts in examples.test_sets(runs[early]):
        sizes[group] = ts.sizes(width)
        for block in blocks(group, len(ts.labels)):
            one = examples.matrix(early[block]) == ts.labels
            two = examples.matrix(late[block]) == ts.labels
            disc = ts.by_class(one != two, width)
            diff = examples.class_hits(early[block]) - examples.class_hits(late[block])
            plus[block], minus[block] = (disc + diff) // 2, (disc - diff) // 2
    return _Pairs(plus, minus, sizes)


@dataclass
class _Candidates:
    """The earlier repaired models each live unit compares: ``unit`` is the unit's row in
    the switch points, ``row`` the model's records row, ``ref`` the records row of the
    unit's repaired reference model (-1: none)."""

    unit: np.ndarray
    row: np.ndarray
    epoch: np.ndarray
    qual: np.ndarray
    ref: np.ndarray


def _candidates(sp: pd.DataFrame, live: np.ndarray, m: UnitModels) -> _Candidates:
    """Per live unit (a row of ``sp``), its repaired models from before its reference
    epoch whose Qual is defined, each with the unit's repaired reference model."""
    ref_e = sp["reference_epoch"].to_numpy(dtype=float, na_value=np.nan)[m.at]
    ref = np.full(len(sp), -1, dtype=np.int64)
    at_ref = m.epoch == ref_e
    ref[m.at[at_ref]] = m.row[at_ref]
    keep = live[m.at] & (m.epoch < ref_e) & ~np.isnan(m.qual)
    return _Candidates(m.at[keep], m.row[keep], m.epoch[keep], m.qual[keep], ref[m.at[keep]])


def noise_columns(
    sp: pd.DataFrame,
    models: UnitModels,
    records: pd.DataFrame,
    examples: Examples,
    *,
    noise_alpha: float = NOISE_ALPHA,
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> pd.DataFrame:
    """``sp`` (switch points, with their ``models``) with NOISE_COLUMNS; empty where
    predictions are missing."""
    out = sp.reset_index(drop=True)
    out["n_discordant"] = pd.array([pd.NA] * len(out), dtype="Int64")
    out["gain_ci_low"] = np.nan
    out["gain_ci_high"] = np.nan
    out["gain_ci_method"] = ""
    out["p_value"] = np.nan
    out["beyond_noise"] = pd.array([pd.NA] * len(out), dtype="boolean")
    live = ((out["status"] != INCOMPLETE) & out["reference_epoch"].notna()).to_numpy(dtype=bool)
    if not live.any() or not (examples.row_of >= 0).any():
        return out
    c = _candidates(out, live, models)
    # One pair per earlier model whose unit's reference model exists; both with predictions.
    paired = (c.ref >= 0) & examples.has(c.row) & examples.has(np.maximum(c.ref, 0))
    early, first = np.unique(c.row[paired], return_index=True)
    runs = records["run"].to_numpy(dtype=object)
    pairs = _pairs(runs, examples, early, c.ref[paired][first])
    pair = np.full(len(c.row), -1, dtype=np.int64)
    pair[paired] = np.searchsorted(early, c.row[paired])
    # A unit is tested only when every earlier checkpoint it compares has predictions.
    lacking = np.bincount(c.unit, weights=pair < 0, minlength=len(out))
    whole = lacking[c.unit] == 0
    if not whole.any():
        return out
    unit, pair, epoch, qual = c.unit[whole], pair[whole], c.epoch[whole], c.qual[whole]
    cls = out["repair_class"].to_numpy(dtype=np.int64)[unit]
    alpha = out["alpha"].to_numpy(dtype=float)[unit]
    pc, nc = pairs.plus[pair, cls], pairs.minus[pair, cls]
    po, no = pairs.plus[pair].sum(axis=1) - pc, pairs.minus[pair].sum(axis=1) - nc
    b = (1 - alpha) / pairs.sizes[pair].sum(axis=1)
    a = b + alpha / pairs.sizes[pair, cls]
    p_adj = holm(signflip_p(pc + nc, po + no, pc - nc, po - no, a, b), unit)
    # Per unit its best earlier checkpoint: the highest rounded Qual, then the earliest.
    r = rounded(qual)
    top = np.full(len(out), -np.inf)
    np.maximum.at(top, unit, r)
    rank = np.flatnonzero(r == top[unit])
    rank = rank[np.lexsort((epoch[rank], unit[rank]))]
    best = rank[np.r_[True, unit[rank][1:] != unit[rank][:-1]]]
    chosen = out.iloc[unit[best]][UNIT].assign(
        epoch=epoch[best], _pair=pair[best], a=a[best], b=b[best]
    )
    in_order = sorted_rows(out.iloc[unit[best]], [*UNIT, "alpha"])
    chosen, best = chosen.take(in_order), best[in_order]
    low, high, how = _intervals(chosen, pairs, seed, n_boot)
    at = unit[best]  # each tested unit's row, once

    def spread(values: np.ndarray) -> np.ndarray:
        full = np.zeros(len(out), dtype=values.dtype)
        full[at] = values
        return full[have]

    have = np.zeros(len(out), dtype=bool)
    have[at] = True
    p_value = np.full(len(out), np.nan)
    p_value[at] = p_adj[best]
    out.loc[have, "n_discordant"] = spread((pairs.plus + pairs.minus)[pair[best]].sum(axis=1))
    out.loc[have, "gain_ci_low"] = spread(low)
    out.loc[have, "gain_ci_high"] = spread(high)
    out.loc[have, "gain_ci_method"] = how
    out.loc[have, "p_value"] = p_value[have]
    beyond = (out["pattern"] == PRE).to_numpy() & (p_value < noise_alpha)
    out.loc[have, "beyond_noise"] = beyond[have]
    return out


def resamples(classes: int, n_boot: int = N_BOOT) -> int:
    """Bootstrap resamples per pair when ``classes`` class strata (with a discordant
    example, over every pair) are resampled: ``n_boot``, fewer for large sweeps
    (``BOOT_BUDGET``), never under ``MIN_BOOT``; 0 when even that is over the budget (then
    the normal interval)."""
    if classes <= 0:
        return n_boot
    n = min(n_boot, BOOT_BUDGET // classes)
    return int(n) if n >= MIN_BOOT else 0


def _intervals(
    best: pd.DataFrame, pairs: _Pairs, seed: int, n_boot: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """The bootstrap CI of each unit's best earlier gain, and how it was computed. The
    alphas of one (run, method, class) that pick the same earlier checkpoint share its
    resamples (only the weights differ), drawn from a generator seeded by that pair alone."""
    used = best.drop_duplicates([*UNIT, "epoch"])["_pair"].to_numpy(dtype=np.int64)
    n_boot = resamples(int(((pairs.plus + pairs.minus)[used] > 0).sum()), n_boot)
    j = best["_pair"].to_numpy(dtype=np.int64)
    if not n_boot:
        w = np.repeat(best["b"].to_numpy()[:, None], pairs.plus.shape[1], axis=1)
        w[np.arange(len(best)), best["repair_class"].to_numpy(dtype=np.int64)] = best["a"]
        low, high = normal_ci(pairs.plus[j], pairs.minus[j], pairs.sizes[j], w)
        return low, high, NORMAL
    low, high = np.full(len(best), np.nan), np.full(len(best), np.nan)
    draws, last = None, None
    cols = (*UNIT, "epoch", "_pair", "a", "b")
    for i, (run, m, c, e, j, a, b) in enumerate(
        zip(*(best[x].tolist() for x in cols), strict=True)
    ):
        if (run, m, c, e) != last:
            rng = unit_seed(seed, run, m, c, e)
            draws = bootstrap_draws(pairs.plus[j], pairs.minus[j], pairs.sizes[j], rng, n_boot)
            last = (run, m, c, e)
        w = np.full(draws.shape[1], b)
        w[c] = a
        low[i], high[i] = percentile_ci(draws @ w)
    return low, high, f"{PERCENTILE} ({n_boot} resamples)"
