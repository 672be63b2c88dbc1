"""Arachne on a really trained model: the quickstart (settings/quickstart.yaml) - its
model, data, training settings (epochs capped to stay fast), first seed, repair settings and
classes - trained with the trainer's own loop and repaired at every checkpoint. Checks that
repair fixes something real, that RR/BR agree with predictions of the patched full model,
and that checkpoint + patch.json rebuild exactly the searched model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from early_repair_testing.digits_checkpoints import CPU, load, predict
from early_repair_testing.digits_checkpoints import repair_checkpoint as repair_with

from orchestrator.spec import SweepSpec
from trainer_image.data import Splits
from trainer_image.models import Repairable
from trainer_image.repair.arachne import repair
from trainer_image.repair.base import PatchedWeight, RepairResult, TargetSplit, apply_patch
from trainer_image.repair.last_layer import SwarmFitness

torch.set_num_threads(1)


def repair_checkpoint(
    spec: SweepSpec, splits: Splits, path: Path, epoch: int, cls: int
) -> tuple[Repairable, torch.Tensor, TargetSplit, RepairResult]:
    return repair_with(spec, splits, path, epoch, cls, repair, spec.repair)


def test_repair_fixes_something_real_for_every_quickstart_class(quickstart, trained) -> None:
    splits, saved = trained
    classes = quickstart.classes_for(quickstart.datasets[0])
    assert classes and len(saved) >= 3
    best_rr: dict[int, float] = {}
    for epoch, path in sorted(saved.items()):
        for cls in classes:
            model, _, split, res = repair_checkpoint(quickstart, splits, path, epoch, cls)
            if res.status == "nothing_to_repair":
                assert split.negatives(cls).size == 0
                continue
            # RR and BR recomputed independently: patch the full model, predict the images.
            model.head = apply_patch(model.head, res.patch)
            pred = predict(model, splits.repair.x)
            neg, pos = split.negatives(cls), split.positives()
            assert res.n_neg == neg.size
            assert res.n_patched == int((pred[neg] == cls).sum())
            assert res.rr == pytest.approx(100.0 * np.mean(pred[neg] == cls))
            assert res.br == pytest.approx(100.0 * np.mean(pred[pos] != split.y[pos]))
            # Per-class accuracy of the target class on the repair set moves by exactly
            # the fixed negatives minus the broken positives of that class.
            of_cls = split.y == cls
            before = int(split.correct[of_cls].sum())
            broken = int(((pred != split.y) & split.correct & of_cls).sum())
            assert int((pred[of_cls] == cls).sum()) == before + res.n_patched - broken
            best_rr[cls] = max(best_rr.get(cls, 0.0), res.rr)
    assert set(best_rr) == set(classes)
    assert all(rr > 0 for rr in best_rr.values()), best_rr


def test_checkpoint_plus_patch_json_rebuilds_the_searched_model(
    quickstart, trained, tmp_path
) -> None:
    splits, saved = trained
    epoch = min(saved)  # epoch 1: many negatives, a real search
    cls = quickstart.classes_for(quickstart.datasets[0])[0]
    model, feats, split, res = repair_checkpoint(quickstart, splits, saved[epoch], epoch, cls)
    assert res.status == "repaired" and res.patch
    (tmp_path / "patch.json").write_text(json.dumps(res.patch_json()))

    # Rebuild from files only: fresh model, checkpoint weights, patch after a JSON round trip.
    doc = json.loads((tmp_path / "patch.json").read_text())
    assert doc["target_class"] == cls and doc["status"] == "repaired"
    patch = [PatchedWeight(**w) for w in doc["weights"]]
    assert patch == res.patch
    rebuilt = load(quickstart, saved[epoch])
    rebuilt.head = apply_patch(rebuilt.head, patch)
    pred = predict(rebuilt, splits.repair.x)

    # The search's own predictions for the best patch, on the negatives and all positives.
    neg, pos = split.negatives(cls), split.positives()
    y = torch.as_tensor(splits.repair.y)
    rows = np.array([p.row for p in patch])
    cols = np.array([p.col for p in patch])
    search = SwarmFitness(
        model.head.weight,
        model.head.bias,
        feats[neg],
        feats[pos],
        y[pos],
        cls,
        rows,
        cols,
        CPU,
        2**28,
    )
    searched = search.predict(torch.tensor([[p.new for p in patch]], dtype=torch.float64))[0]
    np.testing.assert_array_equal(pred[np.concatenate([neg, pos])], searched.numpy())
    assert res.n_patched == int((pred[neg] == cls).sum())
    # Weights outside the patch are untouched.
    original = load(quickstart, saved[epoch])
    changed = (rebuilt.head.weight != original.head.weight).nonzero().tolist()
    assert set(map(tuple, changed)) <= {(p.row, p.col) for p in patch}
    assert torch.equal(rebuilt.body[0].weight, original.body[0].weight)


def test_repair_works_under_deterministic_algorithms(quickstart, trained) -> None:
    # The trainer turns on torch.use_deterministic_algorithms; the search must run under it.
    splits, saved = trained
    epoch = min(saved)
    cls = quickstart.classes_for(quickstart.datasets[0])[0]
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        a = repair_checkpoint(quickstart, splits, saved[epoch], epoch, cls)[3]
    finally:
        torch.use_deterministic_algorithms(previous)
    b = repair_checkpoint(quickstart, splits, saved[epoch], epoch, cls)[3]
    assert a.patch == b.patch and a.rr == b.rr
