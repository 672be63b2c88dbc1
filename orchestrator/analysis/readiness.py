"""How good was the readiness policy? Its choice of epoch against the whole repaired curve.

A run with ``training.readiness`` says in train/summary.json, per watched (method, class),
at which epoch its policy fired and which epoch it would repair (the *policy epoch*,
decided from validation data only). With ``training.repair_every`` the run also repaired
every epoch, so the test Qual(alpha, c) of the repaired model is known at each: the
*oracle epoch* is the best of them (first on ties) - what a policy that could read the
test set would pick. Per (run, method, class) at the policy's alpha:

    regret       oracle Qual - policy Qual (>= 0; 0 is a perfect choice)
    gain         policy Qual - Qual of the model repaired at the convergence epoch
    epochs_saved epochs trained - fired epoch of this track, with ``action: record`` and a
                 policy that fired; 0 when it never fired; NaN with ``action: stop`` (the
                 rest of the curve was never trained). Per *track*: a run stops only when
                 every track has fired, so what a *run* saves is ``per_run_stops``'s.
    beats_unrepaired  policy Qual > Qual of the unrepaired model at convergence

A policy of the unrepaired model (val-loss) watches no track of its own: its epoch is
judged for every (method, class) the run repaired. ``summary`` gives the mean and a 95%
bootstrap interval across seeds (``stats.mean_cis``), per (dataset, model, policy, method,
class, alpha).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.analysis import stats
from orchestrator.analysis.load import Loaded
from orchestrator.analysis.rows import plain_strings

KEYS = ["dataset", "model", "policy", "action", "method", "repair_class", "alpha"]
PER_RUN = [
    *KEYS[:2],
    "run",
    "seed",
    *KEYS[2:],
    "fired_epoch",
    "policy_epoch",
    "oracle_epoch",
    "convergence_epoch",
    "epochs_trained",
    "policy_qual",
    "oracle_qual",
    "convergence_qual",
    "regret",
    "gain",
    "epochs_saved",
    # Whether the policy's repaired model beats not repairing at all: the unrepaired
    # model at convergence (what training to convergence gives without repair).
    "unrepaired_convergence_qual",
    "beats_unrepaired",
]
MEASURES = ("regret", "gain", "epochs_saved")
SUMMARY = [
    *KEYS,
    "n",
    *(f"{m}_{part}" for m in MEASURES for part in ("mean", "ci_low", "ci_high")),
]


def repaired_qual(records: pd.DataFrame, cls: int, alpha: float) -> pd.Series:
    """Test Qual(alpha, cls) of each record, at the policy's own alpha (which need not be
    one of aggregate's ``--alpha`` values, so the quality table may not hold it)."""
    return alpha * records[f"acc_class_{cls}"] + (1 - alpha) * records["accuracy"]


def per_run(loaded: Loaded) -> pd.DataFrame:
    """One row per (run, method, class) a readiness policy decided (PER_RUN columns)."""
    decided = loaded.readiness
    rec = loaded.records
    repaired = rec[rec["kind"] == "repaired"]
    if decided.empty or repaired.empty:
        return pd.DataFrame(columns=PER_RUN)
    units = repaired[["run", "method", "repair_class"]].drop_duplicates()
    # A policy of the unrepaired model (no method, no class) judges every repaired unit.
    own = decided.dropna(subset=["method"])
    whole = decided[decided["method"].isna()].drop(columns=["method", "repair_class"])
    tracks = pd.concat([own, whole.merge(units, on="run")], ignore_index=True)
    info = loaded.runs.set_index("run")
    by_unit = dict(list(repaired.groupby(["run", "method", "repair_class"], sort=False)))
    base = rec[rec["kind"] == "base"]
    base_at = {
        (r, int(e)): i for i, r, e in zip(base.index, base["run"], base["epoch"], strict=True)
    }
    rows = []
    for t in tracks.itertuples(index=False):
        unit = by_unit.get((t.run, t.method, t.repair_class))
        if unit is None or f"acc_class_{int(t.repair_class)}" not in unit:
            continue
        quals = repaired_qual(unit, int(t.repair_class), t.alpha).to_numpy(float)
        epochs = unit["epoch"].to_numpy(int)
        qual_at = dict(zip(epochs.tolist(), quals.tolist(), strict=True))
        order = np.lexsort((epochs, -np.nan_to_num(quals, nan=-np.inf)))
        oracle = int(epochs[order[0]])
        conv = info.at[t.run, "convergence_epoch"]
        policy = t.ready_epoch
        p_q = _at(qual_at, policy)
        c_q = _at(qual_at, conv)
        o_q = qual_at[oracle]
        b = None if pd.isna(conv) else base_at.get((t.run, int(conv)))
        u_q = (
            float("nan")
            if b is None
            else float(repaired_qual(base.loc[[b]], int(t.repair_class), t.alpha).iloc[0])
        )
        saved = np.nan
        if t.action == "record":
            saved = 0 if pd.isna(t.fired_epoch) else int(t.epochs_trained) - int(t.fired_epoch)
        rows.append(
            (
                unit["dataset"].iloc[0],
                unit["model"].iloc[0],
                t.run,
                int(unit["seed"].iloc[0]),
                t.policy,
                t.action,
                t.method,
                int(t.repair_class),
                float(t.alpha),
                t.fired_epoch,
                policy,
                oracle,
                conv,
                t.epochs_trained,
                p_q,
                o_q,
                c_q,
                o_q - p_q,
                p_q - c_q,
                saved,
                u_q,
                pd.NA if np.isnan(p_q) or np.isnan(u_q) else bool(p_q > u_q),
            )
        )
    df = pd.DataFrame(rows, columns=PER_RUN)
    for c in ("fired_epoch", "policy_epoch", "oracle_epoch", "convergence_epoch"):
        df[c] = df[c].astype("Int64")
    df["epochs_trained"] = df["epochs_trained"].astype("Int64")
    for c in ("policy_qual", "oracle_qual", "convergence_qual", *MEASURES):
        df[c] = df[c].astype(float)
    df["unrepaired_convergence_qual"] = df["unrepaired_convergence_qual"].astype(float)
    df["beats_unrepaired"] = df["beats_unrepaired"].astype("boolean")
    df = plain_strings(df)
    return df.sort_values(["dataset", "model", "policy", "method", "repair_class", "alpha", "seed"])


def _at(qual_at: dict[int, float], epoch: object) -> float:
    if epoch is None or pd.isna(epoch):
        return float("nan")
    return qual_at.get(int(epoch), float("nan"))  # type: ignore[call-overload]


def summary(runs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Mean and 95% bootstrap CI across seeds of each measure (SUMMARY columns)."""
    if runs.empty:
        return pd.DataFrame(columns=SUMMARY)
    groups = list(runs.groupby(KEYS, sort=True, dropna=False))
    out = pd.DataFrame([k for k, _ in groups], columns=KEYS)
    out["n"] = [len(g) for _, g in groups]
    for m in MEASURES:
        cis = stats.mean_cis([g[m].to_numpy(float) for _, g in groups], seed)
        out[f"{m}_mean"], out[f"{m}_ci_low"], out[f"{m}_ci_high"] = cis.T
    return plain_strings(out[SUMMARY])


# --- what a run saves -------------------------------------------------------------------
# epochs_saved above is per track; but with ``action: stop`` a run ends only when every
# track has fired, so what a run saves is decided by its last track to fire.
STOPS = [
    "dataset",
    "model",
    "run",
    "seed",
    "policy",
    "action",
    "tracks",
    "tracks_fired",
    "stop_epoch",
    "epochs_trained",
    "epochs_saved",
    "track_epochs_saved_mean",
]


def per_run_stops(loaded: Loaded, tracks: pd.DataFrame) -> pd.DataFrame:
    """One row per run with a readiness policy (STOPS columns): ``stop_epoch``, the epoch
    ``action: stop`` stops (would stop) training - the last firing, when every track fired;
    missing when one never fired - and ``epochs_saved`` = epochs trained - stop_epoch
    (``action: record``; 0 when it would never stop; NaN with ``action: stop``, whose rest of
    the curve was never trained). ``track_epochs_saved_mean`` is the per-track figure of
    ``tracks`` (``per_run``) averaged over the run's tracks, to set beside it."""
    decided = loaded.readiness
    if decided.empty:
        return pd.DataFrame(columns=STOPS)
    who = loaded.records.drop_duplicates("run").set_index("run")
    rows = []
    for run, g in decided.groupby("run", sort=True):
        if run not in who.index:
            continue
        fired = g["fired_epoch"]
        trained = g["epochs_trained"].iloc[0]
        stop = int(fired.max()) if fired.notna().all() else pd.NA
        action = g["action"].iloc[0]
        saved: float = np.nan
        if action == "record" and not pd.isna(trained):
            saved = 0.0 if pd.isna(stop) else float(int(trained) - int(stop))
        per_track = tracks.loc[tracks["run"] == run, "epochs_saved"] if len(tracks) else []
        rows.append(
            (
                who.at[run, "dataset"],
                who.at[run, "model"],
                run,
                int(who.at[run, "seed"]),
                g["policy"].iloc[0],
                action,
                len(g),
                int(fired.notna().sum()),
                stop,
                trained,
                saved,
                float(np.mean(per_track)) if len(per_track) else np.nan,
            )
        )
    df = pd.DataFrame(rows, columns=STOPS)
    for c in ("stop_epoch", "epochs_trained"):
        df[c] = df[c].astype("Int64")
    return plain_strings(df)
