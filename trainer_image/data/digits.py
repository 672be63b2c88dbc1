"""scikit-learn's bundled 8x8 digits: real data that ships with the package (no download).

Split in the spirit of PAPER.md: 20% test, the rest 70% train / 30% repair, all
stratified with the dataset's split seed; then 20% of train is validation. ``paper_splits``
is that split for any in-memory dataset (mnist5k uses it too).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.datasets import load_digits

from orchestrator.spec import DatasetSpec
from trainer_image.data import Split, Splits, hold_out_validation, stratified_split

TEST_FRACTION = 0.2
REPAIR_FRACTION = 0.3


def paper_splits(
    x: np.ndarray, y: np.ndarray, spec: DatasetSpec, validation_split: float, name: str
) -> Splits:
    """Test, then train/repair, then validation out of train: stratified, seeded by the spec."""
    rest, test = stratified_split(y, TEST_FRACTION, spec.split_seed)
    train_idx, repair_idx = stratified_split(y[rest], REPAIR_FRACTION, spec.split_seed)
    full_train = Split(x[rest][train_idx], y[rest][train_idx])
    train, val = hold_out_validation(full_train, validation_split, spec.split_seed)
    return Splits(
        train=train,
        val=val,
        repair=Split(x[rest][repair_idx], y[rest][repair_idx]),
        test=Split(x[test], y[test]),
        num_classes=int(y.max()) + 1,
        meta={"dataset": name, "split_seed": spec.split_seed, "image_shape": list(x.shape[1:])},
    )


def load(spec: DatasetSpec, validation_split: float, **_: Any) -> Splits:
    bunch = load_digits()
    # Pixel values are 0..16; one channel of 8x8.
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    return paper_splits(x, y, spec, validation_split, "digits")
