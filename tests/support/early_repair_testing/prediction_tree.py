"""Result trees built from per-example predictions: every record's metrics are computed from
the predictions written beside it, as the trainer does, so that paired tests see exactly
the models the records describe."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from early_repair_testing.aggregate_tree import run_info
from orchestrator.results import layout
from orchestrator.results import predictions as predicted
from orchestrator.results.consolidate import write_run_records
from orchestrator.results.records import MetricsRecord, TrainSummary
from orchestrator.store import Store, write_json


@dataclass
class PredictedRun:
    """One run: ``base[epoch]`` and ``repaired[(epoch, cls)]`` are predicted label vectors
    (in the order of ``labels``); ``convergence`` the convergence epoch."""

    run: str
    seed: int
    labels: np.ndarray
    convergence: int
    base: dict[int, np.ndarray]
    repaired: dict[tuple[int, int], np.ndarray]
    n_classes: int = 10
    dataset: str = "digits"
    model: str = "small-cnn"
    packed: bool = True
    # (epoch, cls) whose stated accuracy is off by this much (a record its predictions
    # do not reproduce)
    tamper: dict[tuple[int, int | None], float] = field(default_factory=dict)
    # (epoch, cls) -> further fields of that repaired record (accepted, repair_changed, ...)
    fields: dict[tuple[int, int], dict] = field(default_factory=dict)


def metrics(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> dict:
    per_class = [
        float((pred[labels == c] == c).mean()) if (labels == c).any() else None
        for c in range(n_classes)
    ]
    acc = float((pred == labels).mean())
    return {
        "accuracy": acc,
        "per_class_accuracy": per_class,
        "f1_macro": acc,
        "recall_macro": acc,
        "auc_macro": None,
    }


def write_predicted_run(store: Store, sweep: str, t: PredictedRun) -> None:
    classes = sorted({c for _, c in t.repaired})
    info = run_info(sweep, t.run, t.seed, t.dataset, t.model, classes)
    write_json(store, layout.run_json(sweep, t.run), info.model_dump(mode="json"))
    epochs = sorted(t.base)
    summary = TrainSummary(
        convergence_epoch=t.convergence,
        checkpoint_epochs=epochs,
        epochs_trained=max(epochs),
        stopped_early=True,
        best_val_loss=0.1,
        seconds=1.0,
    )
    write_json(store, layout.summary_json(sweep, t.run), summary.model_dump(mode="json"))
    store.write_bytes(layout.test_labels(sweep, t.run), predicted.dump(t.labels, t.n_classes))
    models = [(e, None, p) for e, p in t.base.items()] + [
        (e, c, p) for (e, c), p in t.repaired.items()
    ]
    for epoch, cls, pred in models:
        m = metrics(t.labels, pred, t.n_classes)
        m["accuracy"] = min(1.0, m["accuracy"] + t.tamper.get((epoch, cls), 0.0))
        rec = MetricsRecord(
            sweep=sweep,
            run=t.run,
            dataset=t.dataset,
            model=t.model,
            seed=t.seed,
            epoch=epoch,
            convergence_epoch=t.convergence,
            kind="base" if cls is None else "repaired",
            repair_class=cls,
            method=None if cls is None else "arachne",
            rr=None if cls is None else 50.0,
            br=None if cls is None else 1.0,
            seconds=None if cls is None else 0.5,
            **m,
            **({} if cls is None else t.fields.get((epoch, cls), {})),
        )
        key = (
            layout.base_metrics(sweep, t.run, epoch)
            if cls is None
            else layout.repair_metrics(sweep, t.run, epoch, cls)
        )
        store.write_bytes(layout.predictions(key), predicted.dump(pred, t.n_classes))
        write_json(store, key, rec.model_dump(mode="json"))
    if t.packed:
        assert write_run_records(store, sweep, t.run) is not None
    store.write_bytes(layout.success(sweep, t.run), b"")


def write_predicted_tree(store: Store, sweep: str, runs: list[PredictedRun]) -> None:
    write_json(store, layout.sweep_json(sweep), {"name": sweep, "description": "test"})
    for t in runs:
        write_predicted_run(store, sweep, t)


def coin_flips(
    pred: np.ndarray, labels: np.ndarray, rng: np.random.Generator, n: int
) -> np.ndarray:
    """``pred`` changed on ``n`` random examples, each as likely turned right (of the wrong
    ones) as turned wrong (of the right ones): a model that differs from ``pred`` by noise
    alone - the null hypothesis of the paired test."""
    out = pred.copy()
    k = int(rng.binomial(n, 0.5))
    wrong, right = np.flatnonzero(out != labels), np.flatnonzero(out == labels)
    fix = rng.choice(wrong, size=min(k, len(wrong)), replace=False)
    brk = rng.choice(right, size=min(n - k, len(right)), replace=False)
    n_classes = int(labels.max()) + 1
    out[fix] = labels[fix]
    out[brk] = (labels[brk] + 1) % n_classes
    return out


def fixed(pred: np.ndarray, labels: np.ndarray, cls: int, n: int) -> np.ndarray:
    """``pred`` with the first ``n`` wrong examples of class ``cls`` made right."""
    out = pred.copy()
    wrong = np.flatnonzero((labels == cls) & (out != labels))[:n]
    out[wrong] = cls
    return out
