"""One sweep's aggregation: load it, then every table, in one place.

``tables`` builds Qual, the switch points and Table 1; ``noise`` the paired tests;
``effects``, ``headline`` and ``readiness`` what is said about them. This module is the layer
above all of them (the import contract in pyproject.toml keeps it so): ``aggregate`` calls
them in order and returns an ``Aggregation``, which the report and the output files read.
Its names from ``tables`` (the pattern names, the unit keys) are re-exported for callers
that read an aggregation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from orchestrator.analysis import (
    allocation,
    effects,
    forked,
    headline,
    noise,
    readiness,
    regressions,
)
from orchestrator.analysis.load import Loaded, load
from orchestrator.analysis.problems import INCOMPLETE, problems_frame
from orchestrator.analysis.tables import (
    AFTER,
    DEFAULT_ALPHAS,
    KEYS,
    POST,
    PRE,
    TIE_DECIMALS,
    UNIT,
    AfterConvergence,
    Rules,
    check_rules,
    describe_reference,
    pattern_names,
    patterns,
    quality_rows,
    switch_points,
    unit_problems,
)
from orchestrator.errors import BadInput
from orchestrator.store import Store

__all__ = [
    "AFTER",
    "DEFAULT_ALPHAS",
    "INCOMPLETE",
    "KEYS",
    "POST",
    "PRE",
    "TIE_DECIMALS",
    "UNIT",
    "Aggregation",
    "Rules",
    "aggregate",
    "check_alphas",
    "check_rules",
    "pattern_names",
]


@dataclass
class Aggregation:
    loaded: Loaded
    alphas: tuple[float, ...]
    rules: Rules
    after_convergence: AfterConvergence
    quality: pd.DataFrame
    switch_points: pd.DataFrame
    patterns: pd.DataFrame
    effects: pd.DataFrame
    methods: pd.DataFrame
    headline: pd.DataFrame
    sentences: list[str]
    problems: pd.DataFrame
    bootstrap_seed: int = 0
    noise_alpha: float = 0.05  # the level of the per-unit paired tests (noise.py)
    # training.readiness judged against the repaired curve (analysis.readiness); empty
    # without such runs.
    readiness_runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    readiness: pd.DataFrame = field(default_factory=pd.DataFrame)
    # Test examples each repair fixed and broke (regressions.LEDGER_COLUMNS).
    regressions: pd.DataFrame = field(default_factory=pd.DataFrame)
    # Per run: the epoch action: stop ends training, and the epochs that saves.
    readiness_stops: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def sweep(self) -> str:
        return self.loaded.sweep

    @property
    def reference_name(self) -> str:
        """What the reference checkpoint is, in words."""
        return describe_reference(self.rules)


def check_alphas(alphas: Any) -> tuple[float, ...]:
    values = sorted({float(a) for a in alphas})
    if not values:
        raise BadInput("--alpha: give at least one value between 0 and 1")
    bad = [a for a in values if not 0.0 <= a <= 1.0]
    if bad:
        raise BadInput(f"--alpha {bad[0]:g}: alpha weighs Acc_c against Acc_total; use 0..1")
    return tuple(values)


def aggregate(
    store: Store,
    *,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    after_convergence: AfterConvergence = "exclude",
    rules: Rules = "text",
    sweep: str | None = None,
    bootstrap_seed: int = 0,
    packed: bool = True,
    noise_alpha: float = 0.05,
) -> Aggregation:
    """Load one sweep and compute every table; never writes anything."""
    alphas = check_alphas(alphas)
    check_rules(rules, after_convergence)
    if not 0.0 < noise_alpha < 1.0:
        raise BadInput(f"--noise-alpha {noise_alpha:g}: the paired tests' level; use 0 < a < 1")
    with allocation.settled():
        return _aggregate(
            store, alphas, after_convergence, rules, sweep, bootstrap_seed, packed, noise_alpha
        )


def _tested(
    loaded: Loaded,
    alphas: tuple[float, ...],
    after_convergence: AfterConvergence,
    rules: Rules,
    seed: int,
    noise_alpha: float,
) -> pd.DataFrame:
    """The switch points, with their paired tests."""
    sp, models = switch_points(loaded.records, loaded.runs, after_convergence, alphas, rules)
    return noise.noise_columns(
        sp, models, loaded.records, loaded.examples, noise_alpha=noise_alpha, seed=seed
    )


def _aggregate(
    store: Store,
    alphas: tuple[float, ...],
    after_convergence: AfterConvergence,
    rules: Rules,
    sweep: str | None,
    bootstrap_seed: int,
    packed: bool,
    noise_alpha: float,
) -> Aggregation:
    loaded = load(store, sweep, packed=packed)
    if loaded.records.empty and not loaded.problems:
        raise BadInput(f"{store.uri}: sweep {loaded.sweep!r} has no metrics records yet")
    # Two halves, each from the records. In a second process where there is a second core
    # (forked.py): the switch points with their paired tests - handed over as soon as
    # found, a table of units, a few MB - and then what they say across seeds (the
    # bootstrap, the Wilcoxon tests). Here: Qual and what each repair changed - the effects
    # and the regression ledger, hundreds of thousands of rows that would cost more to send
    # than to compute - the readiness tables, and Table 1 of the switch points.
    many = len(loaded.records) >= forked.MIN_RECORDS
    # What a child imports dies with it: scipy.stats (most of a second to import) is
    # imported here, once per process, not by every aggregation's child.
    import scipy.stats  # noqa: F401

    with forked.staged(
        lambda: _tested(loaded, alphas, after_convergence, rules, bootstrap_seed, noise_alpha),
        lambda tested: headline.seed_stats(tested, bootstrap_seed),
        fork=many,
    ) as started:
        q, q_rows = quality_rows(loaded.records, loaded.runs, alphas)
        changed, ledger = regressions.changes(loaded)
        eff = effects.effects(q, q_rows, loaded.records, changed)
        methods = effects.methods(eff)
        ready = readiness.per_run(loaded)
        ready_summary = readiness.summary(ready, bootstrap_seed)
        ready_stops = readiness.per_run_stops(loaded, ready)
        sp = started.first()
        pt = patterns(sp, after_convergence, rules)
        across = started.result()
    reference = describe_reference(rules)
    head = headline.headline(sp, bootstrap_seed, reference, across)
    sentences = headline.sentences(sp, head, reference, noise_alpha)
    probs = problems_frame(loaded.problems + unit_problems(loaded.prefix, sp))
    return Aggregation(
        loaded,
        alphas,
        rules,
        after_convergence,
        q,
        sp,
        pt,
        eff,
        methods,
        head,
        sentences,
        probs,
        bootstrap_seed,
        noise_alpha,
        ready,
        ready_summary,
        regressions=ledger,
        readiness_stops=ready_stops,
    )
