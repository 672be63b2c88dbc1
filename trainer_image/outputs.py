"""What a run writes for each evaluated model: its metrics record, its test predictions
and, for a repaired one, the patch and the search history.

The order of the writes is the resume contract: the ``metrics.json`` comes last, so that a
record found in the store always has its ``predictions.npy`` (and patch) beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from orchestrator.results import layout as keys
from orchestrator.results import predictions as predicted
from orchestrator.results.records import MetricsRecord
from orchestrator.spec import RunSpec
from trainer_image.acceptance import Verdict
from trainer_image.ledger import Ledger, csv_bytes
from trainer_image.repair.base import RepairResult


def metrics_record(
    run: RunSpec,
    convergence_epoch: int | None,
    epoch: int,
    test: dict[str, Any],
    **fields: Any,
) -> MetricsRecord:
    """The one place a ``MetricsRecord`` is built: a model's test metrics (``test``, from
    ``classification_metrics``) and what it is."""
    return MetricsRecord(
        sweep=run.sweep,
        run=run.name,
        dataset=run.dataset.key,
        model=run.model.key,
        seed=run.seed,
        epoch=epoch,
        convergence_epoch=convergence_epoch,
        **test,
        **fields,
    )


def method_name(cfg: Any) -> str:
    """What a repaired record's ``method`` says: the method's name, or, under an acceptance
    rule other than ``always``, its folder key (``arachne+fixes-some``), so that one method
    under two rules reads as two methods."""
    return cfg.method if getattr(cfg, "accept", "always") == "always" else cfg.key


def repair_fields(result: RepairResult, verdict: Verdict | None = None) -> dict[str, Any]:
    """What a repaired model's record says about its repair (and, given the acceptance
    ``verdict``, whether its patch was kept)."""
    return (verdict.fields() if verdict is not None else {}) | {
        "rr": result.rr,
        "br": result.br,
        "n_neg": result.n_neg,
        "n_pos": result.n_pos,
        "fitness": result.fitness,
        "n_patched": result.n_patched,
        "n_intact": result.n_intact,
        "iterations": result.iterations,
        "seconds": round(result.seconds, 3),
        **result.details,
    }


def write_repair(
    job: Ledger,
    epoch: int,
    cls: int,
    where: str,
    result: RepairResult,
    record: MetricsRecord,
    test_predictions: np.ndarray,
) -> None:
    """A repair's patch, search history, test predictions and, last (its done-key), its
    metrics."""
    sweep, name = job.sweep, job.name
    job.put_json(keys.repair_patch(sweep, name, epoch, cls, where), result.patch_json())
    job.put_bytes(keys.repair_search(sweep, name, epoch, cls, where), csv_bytes(result.history))
    put_record(job, keys.repair_metrics(sweep, name, epoch, cls, where), record, test_predictions)


def put_record(
    job: Ledger, metrics_key: str, record: MetricsRecord, test_predictions: np.ndarray
) -> None:
    """A model's ``predictions.npy``, then its ``metrics.json``: the record exists only
    with the predictions it was computed from."""
    num_classes = len(record.per_class_accuracy)
    job.put_bytes(keys.predictions(metrics_key), predicted.dump(test_predictions, num_classes))
    job.put_json(metrics_key, record.model_dump(mode="json"))
