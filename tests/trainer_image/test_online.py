"""Dense online repair: one set of features per epoch for every method x class, the same
records as the checkpoint step writes for that epoch, and no effect on training."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from torch import nn

from orchestrator.results import layout as keys
from orchestrator.results.records import MetricsRecord, TrainSummary
from orchestrator.spec import DatasetSpec, ModelSpec, RepairSpec, TrainingSpec, parse_spec
from orchestrator.store.file import FileStore
from trainer_image import online as online_mod
from trainer_image.data import Splits, load_splits
from trainer_image.entrypoint import run_trainer
from trainer_image.models import Repairable, build_model
from trainer_image.online import Method, configured_methods, repair_epoch
from trainer_image.repair.arachne import repair
from trainer_image.repair.base import RepairTask, repair_seed
from trainer_image.train import cpu_state, make_deterministic, train

torch.set_num_threads(1)
CPU = torch.device("cpu")
SWEEP, RUN = "online-test", "digits-small-cnn-s1"
SPEC: dict[str, Any] = {
    "name": SWEEP,
    "datasets": ["digits"],
    "models": ["small_cnn"],
    "seeds": [1],
    "training": {"max_epochs": 5, "device": "cpu", "num_threads": 1},
    "repair": {"classes": [3, 6], "particles": 10, "iterations": 5},
}
METRICS = ("accuracy", "per_class_accuracy", "f1_macro", "recall_macro", "auc_macro")
REPAIR_FIGURES = ("rr", "br", "n_neg", "n_pos", "fitness", "n_patched", "n_intact", "iterations")


@pytest.fixture(scope="module")
def splits() -> Splits:
    return load_splits(DatasetSpec(name="digits"), 0.2)


def test_online_records_equal_the_checkpoint_steps(splits: Splits, tmp_path: Path) -> None:
    """``repair_epoch`` on a kept checkpoint computes exactly what the trainer recorded for it,
    so dense epochs and kept checkpoints are records of one kind."""
    spec_file = tmp_path / "sweep.json"
    spec_file.write_text(json.dumps({**SPEC, "results": str(tmp_path / "results")}))
    run_trainer(spec_file, 0)
    store = FileStore(tmp_path / "results")
    summary = TrainSummary.model_validate_json(store.read_bytes(keys.summary_json(SWEEP, RUN)))
    run = parse_spec({**SPEC}).runs()[0]
    model = build_model(run.model, 1, 10, 8)
    patched = 0
    for epoch in summary.checkpoint_epochs:
        blob = store.read_bytes(keys.checkpoint(SWEEP, RUN, epoch))
        state = torch.load(io.BytesIO(blob), weights_only=True)
        model.load_state_dict(state)
        got = repair_epoch(
            model,
            splits,
            epoch,
            configured_methods(run.repair),
            run.repair_classes,
            run_seed=run.seed,
            device=CPU,
            validation=False,
        )
        base = MetricsRecord.model_validate_json(
            store.read_bytes(keys.base_metrics(SWEEP, RUN, epoch))
        )
        assert got.base_test == {k: getattr(base, k) for k in METRICS}
        for cls in run.repair_classes:
            outcome = got.repairs[("arachne", cls)]
            rec = MetricsRecord.model_validate_json(
                store.read_bytes(keys.repair_metrics(SWEEP, RUN, epoch, cls))
            )
            assert outcome.test == {k: getattr(rec, k) for k in METRICS}
            assert {k: getattr(outcome.result, k) for k in REPAIR_FIGURES} == {
                k: getattr(rec, k) for k in REPAIR_FIGURES
            }
            patch = json.loads(store.read_bytes(keys.repair_patch(SWEEP, RUN, epoch, cls)))
            assert outcome.result.patch_json() == patch
            search = store.read_bytes(keys.repair_search(SWEEP, RUN, epoch, cls))
            if outcome.result.history:
                stored = pd.read_csv(io.BytesIO(search))
                assert stored.to_dict("records") == outcome.result.history
            assert outcome.val is None
            patched += len(outcome.result.patch)
    assert patched > 0  # real repairs, not only "nothing to repair"


def test_features_are_computed_once_for_every_method_and_class(
    splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_deterministic(4, CPU, 1)
    model = build_model(ModelSpec(name="small_cnn"), 1, 10, 8)
    before = cpu_state(model)
    v1 = RepairSpec(particles=8, iterations=4, seed=7)
    textbook = RepairSpec(particles=8, iterations=4, seed=9, variant="textbook")
    methods = [Method("arachne", repair, v1, v1.seed), Method("textbook", repair, textbook, 9)]
    calls: list[int] = []
    real = online_mod.forward_split

    def counting(m: nn.Module, split: Any, device: torch.device, **kw: Any) -> Any:
        calls.append(len(split))
        return real(m, split, device, **kw)

    monkeypatch.setattr(online_mod, "forward_split", counting)
    got = repair_epoch(model, splits, 2, methods, [0, 3, 8], run_seed=4, device=CPU)
    assert sorted(calls) == sorted([len(splits.repair), len(splits.test), len(splits.val)])
    _, val_feats = real(model, splits.val, CPU, features=True)
    given = repair_epoch(
        model, splits, 2, methods[:1], [3], run_seed=4, device=CPU, val_features=val_feats
    )
    assert len(calls) == 5  # given validation features are not computed again
    assert given.evidence()[("arachne", 3)] == got.evidence()[("arachne", 3)]
    assert all(torch.equal(before[k], v) for k, v in cpu_state(model).items())  # unchanged
    assert list(got.repairs) == [(m, c) for m in ("arachne", "textbook") for c in (0, 3, 8)]
    assert set(got.evidence()) == set(got.repairs)
    _, feats = real(model, splits.repair, CPU, features=True)
    assert feats is not None
    y = torch.from_numpy(splits.repair.y)
    for method in methods:
        for cls in (0, 3, 8):
            want = repair(
                RepairTask(
                    model.head, feats, y, got.split, cls, repair_seed(method.seed, 4, 2, cls), CPU
                ),
                method.cfg,
            )
            have = got.repairs[(method.name, cls)].result
            assert have.patch == want.patch and have.history == want.history
    patches = {t: r.result.patch for t, r in got.repairs.items()}
    assert patches[("arachne", 3)] != patches[("textbook", 3)]  # two methods really ran
    without_val = repair_epoch(
        model, splits, 2, methods[:1], [3], run_seed=4, device=CPU, validation=False
    )
    with pytest.raises(ValueError, match="without validation"):
        without_val.evidence()


def dropout_model() -> Repairable:
    make_deterministic(6, CPU, 1)
    small = build_model(ModelSpec(name="small_cnn"), 1, 10, 8)
    return Repairable(nn.Sequential(small.body, nn.Dropout(0.3)), small.head)


def test_online_repair_never_changes_the_training_trajectory(splits: Splits) -> None:
    """Repairing every epoch (even with a method that draws from torch's global generator,
    which dropout also draws from) trains the very same weights as not repairing."""
    methods = configured_methods(RepairSpec(particles=8, iterations=4))

    def on_repair(epoch: int, m: nn.Module, val_feats: torch.Tensor) -> Any:
        torch.rand(100)  # a method that uses the global generator
        assert isinstance(m, Repairable)
        # The features of the epoch's validation pass are the model's, in eval mode.
        assert torch.equal(
            val_feats, online_mod.forward_split(m, splits.val, CPU, features=True)[1]
        )
        online = repair_epoch(
            m, splits, epoch, methods, [3], run_seed=6, device=CPU, val_features=val_feats
        )
        return online.evidence()

    runs = []
    for every in (None, 1):
        cfg = TrainingSpec(max_epochs=3, batch_size=64, num_threads=1, repair_every=every)
        model = dropout_model()
        result = train(model, splits, cfg, 6, CPU, on_repair=on_repair if every else None)
        runs.append(([{**r, "seconds": 0} for r in result.history], cpu_state(model)))
    (h1, w1), (h2, w2) = runs
    assert h1 == h2 and all(torch.equal(w1[k], w2[k]) for k in w1)
