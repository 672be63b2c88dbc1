"""What every evaluated model predicted on the test set, and the true labels, as ``.npy``.

A ``metrics.json`` holds summaries (accuracy, per-class accuracy, ...). Whether one
model beats another by more than the test set can resolve is a per-example question:
the two were evaluated on the *same* images, so the comparison is paired. So beside every
``metrics.json`` lies a ``predictions.npy`` (the predicted label of every test example, in
the run's test order) and once per run ``test_labels.npy`` (the true labels, same order):
every metric and every paired test can be recomputed from them.

Format: NumPy's ``.npy``, one dimension, unsigned integers of the smallest width that holds
the class count (1 byte up to 256 classes, else 2); never pickled objects. Readers treat the
bytes as untrusted: ``parse`` refuses anything else with ``ValueError``.
"""

from __future__ import annotations

import io

import numpy as np

# Labels of at most two bytes: the widest class count any dataset here has is 43.
MAX_CLASSES = 2**16
NPY_NAME = "predictions.npy"
LABELS_NAME = "test_labels.npy"


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned integer type that holds labels 0..num_classes-1."""
    if not 0 < num_classes <= MAX_CLASSES:
        raise ValueError(f"{num_classes} classes: labels must fit in two bytes")
    return np.dtype(np.uint8 if num_classes <= 256 else np.uint16)


def dump(labels: np.ndarray, num_classes: int) -> bytes:
    """The ``.npy`` bytes of one vector of labels (predicted or true)."""
    values = np.asarray(labels)
    if values.ndim != 1 or (values.size and (values.min() < 0 or values.max() >= num_classes)):
        raise ValueError(f"labels must be one vector of values 0..{num_classes - 1}")
    buf = io.BytesIO()
    np.save(buf, values.astype(label_dtype(num_classes)), allow_pickle=False)
    return buf.getvalue()


def parse(data: bytes) -> np.ndarray:
    """The label vector of ``.npy`` bytes; ValueError (one line) for anything else."""
    try:
        values = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"not a NumPy .npy file ({' '.join(str(e).split())[:100]})") from e
    if not isinstance(values, np.ndarray) or values.ndim != 1:
        raise ValueError("not one vector of labels")
    if values.dtype.kind != "u" or values.dtype.itemsize > 2:
        raise ValueError(f"labels of type {values.dtype}; expected unsigned integers of <= 2 bytes")
    return values


def sibling(metrics_key: str) -> str:
    """The ``predictions.npy`` key beside a ``metrics.json`` key."""
    folder, sep, name = metrics_key.rpartition("/")
    if name != "metrics.json":
        raise ValueError(f"{metrics_key!r} is not a metrics.json key")
    return f"{folder}{sep}{NPY_NAME}"
