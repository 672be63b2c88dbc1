"""Real checkpoints to repair: the quickstart's small CNN trained on digits, and helpers.

Why this exists: every repair method is tested on a really trained model (not a random
head), and training one takes seconds, so the repair tests share one training per
session (``tests/trainer_image/repair/conftest.py``) and these helpers to load a
checkpoint, predict, and run a repair method on it as the trainer does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from early_repair_testing.paths import QUICKSTART
from orchestrator.spec import DatasetSpec, SweepSpec, load_spec
from trainer_image.data import Splits, load_splits
from trainer_image.data.digits import load as load_digits
from trainer_image.models import Repairable, build_model, small_cnn
from trainer_image.repair.base import RepairResult, RepairTask, TargetSplit, repair_seed
from trainer_image.train import train

MAX_EPOCHS = 15
CPU = torch.device("cpu")

Method = Callable[..., RepairResult]


def quickstart_spec() -> SweepSpec:
    return load_spec(QUICKSTART)


def build(spec: SweepSpec) -> Repairable:
    return build_model(spec.models[0], in_channels=1, num_classes=10, image_size=8)


def train_checkpoints(spec: SweepSpec, folder: Path) -> tuple[Splits, dict[int, Path]]:
    """Train the quickstart's first run (epochs capped); checkpoints as epoch -> file."""
    assert spec.datasets[0].name == "digits"
    cfg = spec.training.model_copy(update={"max_epochs": min(MAX_EPOCHS, spec.training.max_epochs)})
    splits = load_splits(spec.datasets[0], cfg.validation_split)
    torch.manual_seed(spec.seeds[0])
    model = build(spec)
    saved: dict[int, Path] = {}

    def keep(epoch: int, state: dict[str, torch.Tensor]) -> None:
        saved[epoch] = folder / f"epoch_{epoch:03d}.pt"
        torch.save(state, saved[epoch])

    train(model, splits, cfg, spec.seeds[0], CPU, on_checkpoint=keep)
    return splits, saved


def load(spec: SweepSpec, path: Path) -> Repairable:
    model = build(spec)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def predict(model: Repairable, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x)).argmax(1).numpy()


def repair_checkpoint(
    spec: SweepSpec,
    splits: Splits,
    path: Path,
    epoch: int,
    cls: int,
    method: Method,
    cfg: Any,
) -> tuple[Repairable, torch.Tensor, TargetSplit, RepairResult]:
    """Repair one checkpoint x class with ``method`` as the trainer does (cached features)."""
    model = load(spec, path)
    x = torch.as_tensor(splits.repair.x)
    with torch.no_grad():
        feats = model.penultimate(x)
    split = TargetSplit(y=splits.repair.y, pred=predict(model, splits.repair.x))
    seed = repair_seed(cfg.seed, spec.seeds[0], epoch, cls)
    y = torch.as_tensor(splits.repair.y)
    return model, feats, split, method(RepairTask(model.head, feats, y, split, cls, seed), cfg)


def untrained_cnn(
    seed: int = 7,
) -> tuple[Repairable, torch.Tensor, torch.Tensor, torch.Tensor, TargetSplit]:
    """A freshly initialised small CNN on the digits repair set: many negatives per class.

    Returns the model, the repair images, labels, penultimate features and the split.
    """
    splits = load_digits(DatasetSpec(name="digits"), 0.2)
    torch.manual_seed(seed)
    model = small_cnn(in_channels=1, num_classes=10, image_size=8).eval()
    x = torch.as_tensor(splits.repair.x)
    y = torch.as_tensor(splits.repair.y)
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
        feats = model.penultimate(x)
    return model, x, y, feats, TargetSplit(y=y.numpy(), pred=pred)


def weakest(split: TargetSplit, classes: int = 10) -> int:
    """The class with the most negatives."""
    return int(np.argmax([split.negatives(k).size for k in range(classes)]))
