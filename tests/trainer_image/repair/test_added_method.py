"""A repair method added as one module (``early_repair_testing.greedy_repair``) runs through
the real trainer on digits, by import path, on the shared last-layer toolkit: it patches
exactly Arachne's localised weights of each checkpoint, sees the positives every method sees
for the seed, its recorded figures are those of the rebuilt model, and it never lowers the
fitness.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from early_repair_testing.greedy_repair import repair as greedy

from orchestrator.errors import BadInput
from orchestrator.results import layout as keys
from orchestrator.results.records import MetricsRecord, TrainSummary
from orchestrator.spec import parse_spec
from orchestrator.store.file import FileStore
from trainer_image.data import load_splits
from trainer_image.entrypoint import run_trainer
from trainer_image.models import build_model
from trainer_image.repair.base import (
    PatchedWeight,
    RepairResult,
    RepairTask,
    TargetSplit,
    apply_patch,
    repair_seed,
)
from trainer_image.repair.last_layer import paper_fitness, set_up

torch.set_num_threads(1)

SWEEP, RUN, CLASS = "added-method", "digits-small-cnn-s1", 3
GREEDY = {
    "method": "early_repair_testing.greedy_repair:repair",
    "classes": [CLASS],
    "options": {"rounds": 2},
}
KEY = "early-repair-testing-greedy-repair-repair"  # its folder: a slug of the import path
SPEC: dict[str, Any] = {
    "name": SWEEP,
    "datasets": ["digits"],
    "models": ["small_cnn"],
    "seeds": [1],
    "training": {"max_epochs": 2, "device": "cpu", "num_threads": 1},
    "repair": GREEDY,
}


@pytest.mark.slow
def test_a_method_of_one_module_runs_end_to_end_on_the_toolkit(tmp_path: Path) -> None:
    root = tmp_path / "results"
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({**SPEC, "results": str(root)}))
    run_trainer(sweep, 0)

    store = FileStore(root)
    summary = TrainSummary.model_validate_json(store.read_bytes(keys.summary_json(SWEEP, RUN)))
    run = parse_spec(SPEC).runs()[0]
    cfg = run.repair.configs()[0]
    splits = load_splits(run.dataset, 0.2)
    model = build_model(run.model, 1, 10, 8)
    improved = 0
    for epoch in summary.checkpoint_epochs:
        rec = MetricsRecord.model_validate_json(
            store.read_bytes(keys.repair_metrics(SWEEP, RUN, epoch, CLASS, KEY))
        )
        patch = [
            PatchedWeight(**w)
            for w in json.loads(store.read_bytes(keys.repair_patch(SWEEP, RUN, epoch, CLASS, KEY)))[
                "weights"
            ]
        ]
        model.load_state_dict(
            torch.load(root / keys.checkpoint(SWEEP, RUN, epoch), weights_only=True)
        )
        model.eval()
        x = torch.from_numpy(splits.repair.x)
        with torch.no_grad():
            feats = model.penultimate(x)
            pred = model.head(feats).argmax(1).numpy()
        split = TargetSplit(y=splits.repair.y, pred=pred)
        seed = repair_seed(cfg.seed, run.seed, epoch, CLASS)
        labels = torch.from_numpy(splits.repair.y)
        task = RepairTask(model.head, feats, labels, split, CLASS, seed)
        # The toolkit's problem for this checkpoint, as Arachne's defaults set it up.
        problem = set_up("check", task, n_positives=200, sampling="uniform", grad_factor=20)
        assert not isinstance(problem, RepairResult), "class 3 has negatives at every checkpoint"
        assert problem.loc is not None
        # Every localised weight is in the patch, in order, with its checkpoint value.
        assert [(p.row, p.col) for p in patch] == list(
            zip(problem.loc.rows.tolist(), problem.loc.cols.tolist(), strict=True)
        )
        assert all(p.old == model.head.weight[p.row, p.col].item() for p in patch)
        assert (rec.method, rec.n_neg, rec.n_pos, rec.iterations) == (
            "early_repair_testing.greedy_repair:repair",
            problem.neg.size,
            problem.pos.size,
            GREEDY["options"]["rounds"],
        )
        # The recorded figures are the rebuilt model's.
        with torch.no_grad():
            after = apply_patch(model.head, patch)(feats).argmax(1).numpy()
        assert rec.rr == pytest.approx(100 * np.mean(after[problem.neg] == CLASS))
        positives = split.positives()
        assert rec.br == pytest.approx(100 * np.mean(after[positives] != split.y[positives]))
        # Greedy moves only to strictly better candidates: never below the unpatched layer.
        used = torch.as_tensor(np.concatenate([problem.neg, problem.pos]))
        with torch.no_grad():
            logits = model.head(feats[used]).double()
        # Negatives first, as every fitness of the toolkit orders them; their label is CLASS.
        base = paper_fitness(logits, labels[used], int(problem.neg.size))
        assert rec.fitness is not None and rec.fitness >= base - 1e-6
        improved += rec.fitness > base + 1e-3
    assert improved, "the search improved on no checkpoint"


def test_its_own_config_class_rejects_bad_options() -> None:
    head = torch.nn.Linear(4, 3)
    y = np.array([0, 1, 2, 0])
    task = RepairTask(head, torch.zeros(4, 4), torch.from_numpy(y), TargetSplit(y, y), 0, 1)
    bad = {**SPEC, "repair": {**GREEDY, "options": {"rounds": 0}}}
    cfg = parse_spec(bad).runs()[0].repair.configs()[0]
    with pytest.raises(BadInput, match=r"repair\.options: .*greater than 0 \(greedy_repair\)"):
        greedy(task, cfg)
