"""scikit-learn's bundled 8x8 digits: real data that ships with the package (no download).

Split in the spirit of the paper (docs/science.md): 20% test (seeded with the test split
seed), the rest 70% train / 30% repair (the split seed), stratified unless the spec says
``stratify: false``; then the validation split is held out of train (``Holdout``).
``paper_splits`` is that split for any in-memory dataset (mnist5k uses it too).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.datasets import load_digits

from orchestrator.spec import DatasetSpec
from trainer_image.data import Holdout, Split, Splits, hold_out_validation, split_indices

TEST_FRACTION = 0.2
REPAIR_FRACTION = 0.3


def paper_splits(
    x: np.ndarray,
    y: np.ndarray,
    spec: DatasetSpec,
    validation_split: float,
    name: str,
    holdout: Holdout | None = None,
) -> Splits:
    """Test, then train/repair, then validation out of train, seeded by the spec."""
    strat = spec.stratify
    rest, test = split_indices(y, TEST_FRACTION, spec.test_seed, stratify=strat)
    train_idx, repair_idx = split_indices(y[rest], REPAIR_FRACTION, spec.split_seed, stratify=strat)
    full_train = Split(x[rest][train_idx], y[rest][train_idx])
    holdout = holdout or Holdout("fixed", spec.split_seed)
    train, val = hold_out_validation(full_train, validation_split, holdout)
    return Splits(
        train=train,
        val=val,
        repair=Split(x[rest][repair_idx], y[rest][repair_idx]),
        test=Split(x[test], y[test]),
        num_classes=int(y.max()) + 1,
        meta={
            "dataset": name,
            "split_seed": spec.split_seed,
            "test_split_seed": spec.test_seed,
            "stratify": strat,
            "image_shape": list(x.shape[1:]),
        },
    )


def load(
    spec: DatasetSpec, validation_split: float, *, holdout: Holdout | None = None, **_: Any
) -> Splits:
    bunch = load_digits()
    # Pixel values are 0..16; one channel of 8x8.
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    return paper_splits(x, y, spec, validation_split, "digits", holdout)
