"""Dense online repair: repair the model at an epoch while it trains, every method x class
from one set of features.

Why this exists: the paper repaired only a few checkpoints because one repair took hours.
A repair method sees only the final Linear layer and the penultimate activations, so an
epoch's whole repair work is three forward passes (repair, validation and test splits)
plus, per (method, class), a search on cached features and two small matrix products (the
patched head on the test and validation features). ``repair_epoch`` does exactly that and
returns everything the pipeline writes for an epoch - the records of ``epoch_NNN/base``
and ``epoch_NNN/repair/...`` (test metrics, patch, search history) - and, apart from them,
the validation figures a readiness policy may read (``OnlineEpoch.evidence``). It is the
same computation as a kept checkpoint's repair step (same seeds, same features), so a dense
epoch's records equal the ones the checkpoint step writes for that epoch;
``validation=False`` skips the validation pass for that step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from orchestrator.spec import RepairConfig
from trainer_image.acceptance import Verdict, judge, needs_validation
from trainer_image.costs import CostMeter
from trainer_image.data import Splits
from trainer_image.metrics import classification_metrics, per_class_accuracy, predicted_labels
from trainer_image.models import Repairable
from trainer_image.outputs import method_name
from trainer_image.readiness import RepairedScores, Track
from trainer_image.repair import method_for
from trainer_image.repair.base import (
    RepairMethod,
    RepairResult,
    RepairTask,
    TargetSplit,
    apply_patch,
    repair_seed,
)
from trainer_image.train import forward_split


@dataclass(frozen=True)
class Method:
    """One configured repair method: its callable, its config block and its spec seed."""

    name: str
    repair: RepairMethod
    cfg: Any  # its member of orchestrator.spec.RepairConfig
    seed: int  # mixed with the run seed, the epoch and the class (repair_seed)


def configured_methods(cfg: RepairConfig) -> list[Method]:
    """The methods of the spec's ``repair`` section, in the order of its ``methods``."""
    return [Method(method_name(c), method_for(c.method), c, c.seed) for c in cfg.configs()]


@dataclass(frozen=True)
class RepairOutcome:
    """One (method, class) repair of the epoch's model."""

    method: str
    repair_class: int
    result: RepairResult  # patch, search history, rr, br, ... (patch.json, search.csv)
    test: dict[str, Any]  # classification_metrics of model + patch on the test split
    val: RepairedScores | None  # model + patch on the validation split (None: not asked)
    seconds: float  # the search and both evaluations
    predictions: np.ndarray = field(compare=False)  # model + patch's test labels
    verdict: Verdict | None = None  # repair.accept's decision (None: made by hand)


@dataclass
class OnlineEpoch:
    """Everything one epoch's online repair computed."""

    epoch: int
    split: TargetSplit  # the unrepaired model's predictions on the repair set
    base_test: dict[str, Any]  # classification_metrics of the unrepaired model (base record)
    base_predictions: np.ndarray = field(compare=False)  # its predicted test labels
    repairs: dict[Track, RepairOutcome] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # features, base, repairs

    def evidence(self) -> dict[Track, RepairedScores]:
        """What a readiness policy may see: validation and repair-set figures only."""
        out = {}
        for track, r in self.repairs.items():
            if r.val is None:
                raise ValueError("repair_epoch ran without validation: no evidence for a policy")
            out[track] = r.val
        return out


def validation_scores(
    logits: torch.Tensor, y: np.ndarray, num_classes: int, result: RepairResult
) -> RepairedScores:
    pred = logits.argmax(1).cpu().numpy()
    return RepairedScores(
        val_accuracy=float((pred == y).mean()),
        val_per_class_accuracy=per_class_accuracy(y, pred, num_classes),
        rr=result.rr,
        br=result.br,
    )


def repair_epoch(
    model: Repairable,
    splits: Splits,
    epoch: int,
    methods: Sequence[Method],
    classes: Sequence[int],
    *,
    run_seed: int,
    device: torch.device,
    validation: bool = True,
    val_features: torch.Tensor | None = None,
    on_result: Callable[[RepairOutcome], Any] | None = None,
    meter: CostMeter | None = None,
) -> OnlineEpoch:
    """Repair ``model`` (as it is at ``epoch``; left unchanged) for every class by every method.

    Features of the repair, test and (with ``validation``) validation splits are computed
    once - the validation ones only when not given as ``val_features`` (``train`` hands over
    those of the epoch's own validation pass); each repair gets the seed
    ``repair_seed(method.seed, run_seed, epoch, class)``. ``on_result`` gets each outcome as
    soon as it exists (to write its records); ``meter`` is charged the features
    (``online_features``) and each repair (``online_repair``, per method).
    """
    meter = meter or CostMeter()
    t0 = time.perf_counter()
    with meter.stage("online_features"):
        repair_logits, repair_feats = forward_split(model, splits.repair, device, features=True)
        test_logits, test_feats = forward_split(model, splits.test, device, features=True)
        val_feats = val_features
        wanted = validation or any(needs_validation(m.cfg) for m in methods)
        if wanted and val_feats is None:
            val_feats = forward_split(model, splits.val, device, features=True)[1]
        elif not validation:
            val_feats = None
    assert repair_feats is not None and test_feats is not None
    t1 = time.perf_counter()
    num_classes = splits.num_classes
    split = TargetSplit(y=splits.repair.y, pred=repair_logits.argmax(1).cpu().numpy())
    out = OnlineEpoch(
        epoch=epoch,
        split=split,
        base_test=classification_metrics(test_logits, splits.test.y, num_classes),
        base_predictions=predicted_labels(test_logits),
    )
    t2 = time.perf_counter()
    y_repair = torch.from_numpy(splits.repair.y).to(device)
    for method in methods:
        for cls in classes:
            t = time.perf_counter()
            seed = repair_seed(method.seed, run_seed, epoch, cls)
            with meter.stage("online_repair", getattr(method.cfg, "key", method.name)):
                task = RepairTask(model.head, repair_feats, y_repair, split, cls, seed, device)
                val_split = None if val_feats is None else (val_feats, splits.val.y)
                verdict = judge(method.cfg, task, method.repair(task, method.cfg), val_split)
                result = verdict.result  # a rejected patch: empty, the model stays as it is
                head = apply_patch(model.head, result.patch)
                with torch.no_grad():
                    test_logits = head(test_feats)
                    test = classification_metrics(test_logits, splits.test.y, num_classes)
                    val = (
                        None
                        if val_feats is None or not validation
                        else validation_scores(head(val_feats), splits.val.y, num_classes, result)
                    )
            outcome = RepairOutcome(
                method.name,
                cls,
                result,
                test,
                val,
                seconds=time.perf_counter() - t,
                predictions=predicted_labels(test_logits),
                verdict=verdict,
            )
            out.repairs[(method.name, cls)] = outcome
            if on_result is not None:
                on_result(outcome)
    out.seconds = {"features": t1 - t0, "base": t2 - t1, "repairs": time.perf_counter() - t2}
    return out
