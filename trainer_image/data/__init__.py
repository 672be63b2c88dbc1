"""Datasets as prepared splits: train / val / repair / test arrays, one shape for all.

Every dataset (built-in or by import path) ends up as ``Splits``: images N x C x H x W
(float32 in [0, 1] or uint8 in [0, 255]) and int64 labels. The validation split is carved
out of the training split here, stratified and seeded, so every dataset does it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from orchestrator import catalog
from orchestrator.catalog import resolve
from orchestrator.errors import BadInput
from orchestrator.spec import DatasetSpec


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> Split:
        return Split(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    repair: Split
    test: Split
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, list[int]]:
        return {
            name: np.bincount(s.y, minlength=self.num_classes).tolist()
            for name, s in (
                ("train", self.train),
                ("val", self.val),
                ("repair", self.repair),
                ("test", self.test),
            )
        }


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with ``fraction`` held out, stratified by label."""
    idx = np.arange(len(y))
    keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=y)
    return np.sort(keep), np.sort(held)


def hold_out_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    keep, held = stratified_split(train.y, fraction, seed)
    return train.subset(keep), train.subset(held)


def load_splits(spec: DatasetSpec, validation_split: float, **kwargs: Any) -> Splits:
    """Load (or prepare on the fly) the splits a dataset entry names (see the catalog)."""
    fn = resolve(catalog.dataset_loader(spec.name))
    splits = fn(spec, validation_split, **kwargs)
    if not isinstance(splits, Splits):
        raise BadInput(f"dataset {spec.name!r} returned {type(splits).__name__}, not Splits")
    return splits
