"""The repair methods beyond Arachne's PSO on a really trained model: the quickstart's small
CNN trained with the trainer's own loop (conftest.py), repaired at its first and last
checkpoints for the quickstart's classes with arachne-de (both update orders), finetune
(both weight sets), neurecover (here without a history) and provable (two settings).
RR/BR must agree with the patched full model's predictions, and checkpoint + patch.json
must rebuild the repaired model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from early_repair_testing.digits_checkpoints import load, predict, repair_checkpoint

from orchestrator.spec import (
    ArachneDERepairSpec,
    FinetuneRepairSpec,
    NeurecoverRepairSpec,
    ProvableRepairSpec,
)
from trainer_image.repair import arachne, arachne_de, finetune, neurecover, provable
from trainer_image.repair.base import PatchedWeight, apply_patch

torch.set_num_threads(1)

# Smaller than the defaults so the whole file stays within seconds; the rules are the same.
METHODS = {
    "arachne-de-async": (
        arachne_de.repair,
        ArachneDERepairSpec(population=30, generations=30, update="asynchronous"),
    ),
    "arachne-de-batched": (
        arachne_de.repair,
        ArachneDERepairSpec(population=30, generations=30, update="batched"),
    ),
    "finetune-all": (finetune.repair, FinetuneRepairSpec()),
    "finetune-localised": (finetune.repair, FinetuneRepairSpec(weights="localised")),
    "neurecover": (neurecover.repair, NeurecoverRepairSpec(particles=30, iterations=20)),
    "provable-target-l1": (provable.repair, ProvableRepairSpec()),
    "provable-all-linf": (provable.repair, ProvableRepairSpec(rows="all", norm="linf")),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_method_repairs_real_checkpoints_with_consistent_figures(
    quickstart, trained, name: str
) -> None:
    method, cfg = METHODS[name]
    cfg = cfg.model_copy(update={"seed": quickstart.repair.seed})
    splits, saved = trained
    classes = quickstart.classes_for(quickstart.datasets[0])
    best_rr: dict[int, float] = {}
    for epoch in (min(saved), max(saved)):
        for cls in classes:
            run = repair_checkpoint(quickstart, splits, saved[epoch], epoch, cls, method, cfg)
            model, _, split, res = run
            if res.status == "nothing_to_repair":
                assert split.negatives(cls).size == 0
                continue
            model.head = apply_patch(model.head, res.patch)
            pred = predict(model, splits.repair.x)
            neg, pos = split.negatives(cls), split.positives()
            assert res.n_neg == neg.size and res.n_pos == min(cfg.n_positives, pos.size)
            assert res.n_patched == int((pred[neg] == cls).sum())
            assert res.rr == pytest.approx(100.0 * np.mean(pred[neg] == cls))
            assert res.br == pytest.approx(100.0 * np.mean(pred[pos] != split.y[pos]))
            assert res.iterations == len(res.history) - 1 > 0 and res.seconds > 0
            best_rr[cls] = max(best_rr.get(cls, 0.0), res.rr)
    assert set(best_rr) == set(classes)
    assert all(rr > 0 for rr in best_rr.values()), best_rr


@pytest.mark.parametrize("name", list(METHODS))
def test_checkpoint_plus_patch_json_rebuilds_the_repaired_model(
    quickstart, trained, tmp_path, name: str
) -> None:
    method, cfg = METHODS[name]
    splits, saved = trained
    epoch, cls = min(saved), quickstart.classes_for(quickstart.datasets[0])[0]
    model, feats, split, res = repair_checkpoint(
        quickstart, splits, saved[epoch], epoch, cls, method, cfg
    )
    assert res.status == "repaired" and res.patch
    (tmp_path / "patch.json").write_text(json.dumps(res.patch_json()))
    patch = [
        PatchedWeight(**w) for w in json.loads((tmp_path / "patch.json").read_text())["weights"]
    ]
    assert patch == res.patch
    rebuilt = load(quickstart, saved[epoch])
    rebuilt.head = apply_patch(rebuilt.head, patch)
    pred = predict(rebuilt, splits.repair.x)
    assert res.n_patched == int((pred[split.negatives(cls)] == cls).sum())
    # The repaired head on the cached features (what the method searched with) agrees.
    with torch.no_grad():
        searched = apply_patch(model.head, res.patch)(feats).argmax(1).numpy()
    np.testing.assert_array_equal(pred, searched)
    original = load(quickstart, saved[epoch])
    changed = {tuple(rc) for rc in (rebuilt.head.weight != original.head.weight).nonzero().tolist()}
    assert changed <= {(p.row, p.col) for p in patch}
    assert torch.equal(rebuilt.body[0].weight, original.body[0].weight)
    if name.startswith("arachne-de") or name == "finetune-localised":
        # The same fault localisation as Arachne's PSO: the same weights may change.
        pso = repair_checkpoint(
            quickstart, splits, saved[epoch], epoch, cls, arachne.repair, quickstart.repair
        )[3]
        localised = {(p.row, p.col) for p in pso.patch}
        assert {(p.row, p.col) for p in patch} <= localised
        if name.startswith("arachne-de"):
            assert [(p.row, p.col) for p in patch] == [(p.row, p.col) for p in pso.patch]
            assert res.n_pos == pso.n_pos
