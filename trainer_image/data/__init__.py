"""Datasets as prepared splits: train / val / repair / test arrays, one shape for all.

Every dataset (built-in or by import path) ends up as ``Splits``: images N x C x H x W
(float32 in [0, 1] or uint8 in [0, 255]) and int64 labels. The validation split is carved
out of the training split here (``Holdout``), so every dataset does it the same way: by
default stratified and seeded with the dataset's split seed; ``training.validation:
per-seed`` reproduces the released code instead (docs/science.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

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


def split_indices(
    y: np.ndarray, fraction: float, seed: int, *, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with ``fraction`` held out, seeded, stratified by label
    unless ``stratify`` is false (then a plain random split, as the released GTSRB code)."""
    idx = np.arange(len(y))
    keep, held = train_test_split(
        idx, test_size=fraction, random_state=seed, stratify=y if stratify else None
    )
    return np.sort(keep), np.sort(held)


@dataclass(frozen=True)
class Holdout:
    """Which training images are held out for validation (``training.validation``).

    ``fixed``: stratified, seeded with the dataset's split seed, so every training seed
    validates on the same images. ``per-seed``: the released code's rule - the first
    floor(fraction x n) of a permutation drawn by numpy's legacy ``RandomState(training
    seed)``, not stratified. (The released code permuted batches of consecutive images; its
    file order was shuffled, so a batch was a random handful of images: per image here.)
    """

    rule: Literal["fixed", "per-seed"] = "fixed"
    seed: int = 42

    @classmethod
    def for_run(cls, rule: Literal["fixed", "per-seed"], split_seed: int, run_seed: int) -> Holdout:
        return cls(rule, run_seed if rule == "per-seed" else split_seed)

    def split(self, y: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Sorted indices (keep, held_out) into ``y``."""
        if self.rule == "fixed":
            return split_indices(y, fraction, self.seed)
        n = len(y)
        held = np.random.RandomState(self.seed).permutation(n)[: math.floor(fraction * n)]
        mask = np.zeros(n, dtype=bool)
        mask[held] = True
        return np.flatnonzero(~mask), np.flatnonzero(mask)


def hold_out_validation(train: Split, fraction: float, holdout: Holdout) -> tuple[Split, Split]:
    keep, held = holdout.split(train.y, fraction)
    return train.subset(keep), train.subset(held)


def load_splits(
    spec: DatasetSpec, validation_split: float, *, holdout: Holdout | None = None, **kwargs: Any
) -> Splits:
    """Load (or prepare on the fly) the splits a dataset entry names (see the catalog).

    ``holdout`` (default: fixed, the dataset's split seed) says which training images
    become the validation split; loaders receive it as the keyword ``holdout``.
    """
    fn = resolve(catalog.dataset_loader(spec.name))
    holdout = holdout or Holdout("fixed", spec.split_seed)
    splits = fn(spec, validation_split, holdout=holdout, **kwargs)
    if not isinstance(splits, Splits):
        raise BadInput(f"dataset {spec.name!r} returned {type(splits).__name__}, not Splits")
    return splits
