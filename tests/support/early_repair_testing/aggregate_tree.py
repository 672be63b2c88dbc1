"""Builds synthetic result trees with known answers for the aggregator's tests and benchmark.

The trainer is real elsewhere; here we need trees whose Qual values, switch epochs and
patterns are known by construction, including the awkward cases (ties, missing checkpoints,
damaged files), written with the same schema models and keys the trainer uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestrator.results import layout as results
from orchestrator.results.consolidate import write_run_records
from orchestrator.results.records import MetricsRecord, RunInfo, TrainSummary
from orchestrator.store import Store, write_json


@dataclass
class RunTree:
    """One run's results: ``repaired[(epoch, cls)] = (acc_c, acc_total)`` (Arachne) or
    ``repaired[(epoch, cls, method)]``, and ``base[epoch] = (acc_total, {cls: acc_c})``
    (classes not named get acc_total). ``method_level``: write repairs under
    ``repair/<method>/class_C`` (always for methods other than arachne); else the first
    layout, ``repair/class_C``. ``packed``: a finished run also gets its records.arrow.
    ``costs[(epoch, cls[, method])] = (rr, br, seconds)`` overrides (50, 1, 0.5)."""

    run: str
    convergence: int
    epochs: list[int]
    classes: list[int]
    repaired: dict[tuple[int, int], tuple[float, float]]
    base: dict[int, tuple[float, dict[int, float]]] = field(default_factory=dict)
    dataset: str = "digits"
    model: str = "small_cnn"
    seed: int = 1024
    n_classes: int = 10
    success: bool = True
    summary: bool = True
    run_json: bool = True
    method_level: bool = False
    packed: bool = False
    methods: tuple[str, ...] = ()  # named in run.json's spec (repair.methods) when given
    costs: dict[tuple, tuple[float, float, float]] = field(default_factory=dict)
    readiness: dict | None = None  # train/summary.json's readiness (ReadinessOutcome)
    online: bool = False  # records written while training: no convergence epoch in them


def unit(key: tuple) -> tuple[int, int, str]:
    """(epoch, cls, method) of a ``repaired`` key."""
    return (key[0], key[1], key[2] if len(key) > 2 else "arachne")


def per_class(n_classes: int, cls: int, acc_c: float, acc_total: float) -> list[float | None]:
    # Other classes carry the overall accuracy: only Acc_c and Acc_total enter Qual.
    values: list[float | None] = [acc_total] * n_classes
    values[cls] = acc_c
    return values


def record(
    sweep: str,
    t: RunTree,
    epoch: int,
    cls: int | None,
    acc_c: float,
    acc_total: float,
    method: str = "arachne",
) -> MetricsRecord:
    """A repaired record (``cls`` set) or a base one (then ``acc_c`` is unused)."""
    repaired = cls is not None
    rr, br, seconds = t.costs.get((epoch, cls, method), t.costs.get((epoch, cls), (50.0, 1.0, 0.5)))
    if repaired:
        accs = per_class(t.n_classes, cls, acc_c, acc_total)
    else:
        accs = [acc_total] * t.n_classes
        for c, a in t.base.get(epoch, (acc_total, {}))[1].items():
            accs[c] = a
    return MetricsRecord(
        sweep=sweep,
        run=t.run,
        dataset=t.dataset,
        model=t.model,
        seed=t.seed,
        epoch=epoch,
        convergence_epoch=None if t.online else t.convergence,
        kind="repaired" if repaired else "base",
        repair_class=cls,
        method=method if repaired else None,
        accuracy=acc_total,
        per_class_accuracy=accs,
        f1_macro=acc_total,
        recall_macro=acc_total,
        auc_macro=0.9,
        rr=rr if repaired else None,
        br=br if repaired else None,
        n_neg=10 if repaired else None,
        n_pos=200 if repaired else None,
        fitness=2.5 if repaired else None,
        n_patched=5 if repaired else None,
        n_intact=198 if repaired else None,
        iterations=12 if repaired else None,
        seconds=seconds if repaired else None,
    )


def run_info(
    sweep: str,
    run: str,
    seed: int,
    dataset: str,
    model: str,
    classes: list[int],
    methods: Iterable[str] = (),
) -> RunInfo:
    """The run.json a trainer writes for such a run."""
    methods = list(methods)
    return RunInfo(
        run={
            "sweep": sweep,
            "name": run,
            "seed": seed,
            "dataset": {"name": dataset},
            "model": {"name": model},
            "repair_classes": classes,
            **({"repair": {"methods": methods}} if methods else {}),
        },
        versions={"python": "3.11"},
        device="cpu",
        hostname="test",
        started="2024-01-01T00:00:00Z",
    )


def write_run(store: Store, sweep: str, t: RunTree) -> None:
    if t.run_json:
        info = run_info(sweep, t.run, t.seed, t.dataset, t.model, t.classes, t.methods)
        write_json(store, results.run_json(sweep, t.run), info.model_dump(mode="json"))
    if t.summary:
        summary = TrainSummary(
            convergence_epoch=t.convergence,
            checkpoint_epochs=sorted(t.epochs),
            epochs_trained=max(t.epochs),
            stopped_early=True,
            best_val_loss=0.1,
            seconds=1.0,
            online_epochs=sorted(t.epochs) if t.online else [],
            readiness=t.readiness,
        )
        write_json(store, results.summary_json(sweep, t.run), summary.model_dump(mode="json"))
    for epoch in t.epochs:
        total = t.base.get(epoch, (0.5, {}))[0]
        rec = record(sweep, t, epoch, None, total, total)
        write_json(store, results.base_metrics(sweep, t.run, epoch), rec.model_dump(mode="json"))
    for k, (acc_c, total) in t.repaired.items():
        epoch, cls, method = unit(k)
        rec = record(sweep, t, epoch, cls, acc_c, total, method)
        level = method if t.method_level or method != "arachne" else None
        key = results.repair_metrics(sweep, t.run, epoch, cls, level)
        write_json(store, key, rec.model_dump(mode="json"))
    if t.success:
        if t.packed:
            assert write_run_records(store, sweep, t.run) is not None
        store.write_bytes(results.success(sweep, t.run), b"")


def write_tree(
    store: Store,
    sweep: str,
    runs: Iterable[RunTree],
    spec: dict | None = None,
    *,
    packed: bool | None = None,
) -> None:
    """``packed`` (when given) sets every run's ``packed``."""
    write_json(store, results.sweep_json(sweep), spec or {"name": sweep, "description": "test"})
    for t in runs:
        if packed is not None:
            t.packed = packed
        write_run(store, sweep, t)


def pattern_run(
    run: str,
    pattern: str,
    *,
    seed: int = 1024,
    cls: int = 3,
    dataset: str = "digits",
    model: str = "small_cnn",
    epochs: tuple[int, ...] = (1, 5, 10, 15),
    convergence: int = 10,
) -> RunTree:
    """A run whose best repaired checkpoint (for every alpha) gives ``pattern``."""
    best = {"pre": 5, "post": convergence, "after": 15}[pattern]
    repaired = {(e, cls): (0.5, 0.5) for e in epochs}
    repaired[(best, cls)] = (0.9, 0.9)
    return RunTree(
        run=run,
        convergence=convergence,
        epochs=list(epochs),
        classes=[cls],
        repaired=repaired,
        seed=seed,
        dataset=dataset,
        model=model,
    )


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


# Acc values (acc_c, acc_total) at a pre-convergence checkpoint and at the convergence
# checkpoint that give each per-alpha pattern for alpha = 0.2 / 0.5 / 0.8 (worked out by
# hand; the tests assert the Qual values too).
PATTERN_TYPES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "always-pre": ((0.9, 0.9), (0.5, 0.5)),  # pre  pre  pre
    "always-post": ((0.5, 0.5), (0.9, 0.9)),  # post post post
    "pre-from-0.5": ((0.9, 0.7), (0.6, 0.9)),  # post pre  pre
    "pre-at-0.8": ((0.9, 0.6), (0.7, 0.85)),  # post post pre
    "pre-at-0.2": ((0.5, 0.9), (0.9, 0.7)),  # pre  post post
}
PRE_BY_ALPHA = {
    "always-pre": (True, True, True),
    "always-post": (False, False, False),
    "pre-from-0.5": (False, True, True),
    "pre-at-0.8": (False, False, True),
    "pre-at-0.2": (True, False, False),
}


def typed_run(
    run: str,
    types: dict[int, str],
    *,
    seed: int,
    dataset: str,
    model: str,
    n_classes: int,
    epochs: tuple[int, ...] = (1, 5, 10),
    convergence: int = 10,
    pre_epoch: int = 5,
) -> RunTree:
    """A run repairing several classes, each following one of ``PATTERN_TYPES``."""
    repaired: dict[tuple[int, int], tuple[float, float]] = {}
    for cls, kind in types.items():
        pre, conv = PATTERN_TYPES[kind]
        for e in epochs:
            repaired[(e, cls)] = (0.1, 0.1)
        repaired[(pre_epoch, cls)] = pre
        repaired[(convergence, cls)] = conv
    return RunTree(
        run=run,
        convergence=convergence,
        epochs=list(epochs),
        classes=sorted(types),
        repaired=repaired,
        seed=seed,
        dataset=dataset,
        model=model,
        n_classes=n_classes,
    )


def paper_table1_runs() -> list[RunTree]:
    """A sweep whose Table 1 equals the paper's (docs/science.md): RSNA 3/2/4 pre and 2/3/1 post
    over 5 seeds x class 1; GTSRB 9 pre and 6 post at every alpha over 5 seeds x 3 classes."""
    seeds = (1024, 2048, 4096, 8192, 16384)
    rsna = ["always-pre", "always-pre", "pre-at-0.2", "pre-at-0.8", "pre-at-0.8"]
    gtsrb = [
        {20: "always-pre", 27: "always-pre", 30: "always-post"},
        {20: "always-pre", 27: "always-post", 30: "always-pre"},
        {20: "always-post", 27: "always-pre", 30: "always-pre"},
        {20: "always-pre", 27: "always-post", 30: "always-post"},
        {20: "always-pre", 27: "always-pre", 30: "always-post"},
    ]
    runs = [
        typed_run(
            f"rsna-densenet121-s{s}",
            {1: t},
            seed=s,
            dataset="rsna",
            model="densenet121",
            n_classes=2,
        )
        for s, t in zip(seeds, rsna, strict=True)
    ]
    runs += [
        typed_run(f"gtsrb-vgg16-s{s}", t, seed=s, dataset="gtsrb", model="vgg16", n_classes=43)
        for s, t in zip(seeds, gtsrb, strict=True)
    ]
    return runs
