"""Test-set metrics of one model, computed with scikit-learn from logits and labels.

These are the numbers a ``metrics.json`` record carries (docs/science.md, step 5). They are
defined here once, for base checkpoints and repaired models alike, so the two can be
compared; every average is over all ``num_classes`` classes, even those the test set lacks.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
    roc_auc_score,
)


def _numpy(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities in float64, so each row sums to 1 within scikit-learn's tolerance."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def auc_macro(y: np.ndarray, probs: np.ndarray, num_classes: int) -> float | None:
    """Macro one-vs-rest ROC AUC; the AUC of class 1 for two classes.

    None when it is undefined: a class without test samples (its one-vs-rest AUC has no
    positives) or a test set holding a single class.
    """
    present = np.unique(y)
    if len(present) < num_classes:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        try:
            if num_classes == 2:
                value = roc_auc_score(y, probs[:, 1])
            else:
                value = roc_auc_score(
                    y, probs, multi_class="ovr", average="macro", labels=list(range(num_classes))
                )
        except (ValueError, UndefinedMetricWarning):
            return None
    value = float(value)
    return value if np.isfinite(value) else None


def per_class_accuracy(y: np.ndarray, pred: np.ndarray, num_classes: int) -> list[float | None]:
    """Share of each class's samples predicted as that class; None for an absent class."""
    cm = confusion_matrix(y, pred, labels=list(range(num_classes)))
    support = cm.sum(axis=1)
    return [float(cm[c, c] / support[c]) if support[c] else None for c in range(num_classes)]


def predicted_labels(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """The label each row of ``logits`` predicts (its argmax), what ``predictions.npy`` holds."""
    return _numpy(logits).argmax(axis=1)


def classification_metrics(
    logits: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, num_classes: int
) -> dict[str, Any]:
    """accuracy, per_class_accuracy, f1_macro, recall_macro, auc_macro of one model."""
    z, yt = _numpy(logits), _numpy(y).astype(np.int64)
    if z.ndim != 2 or z.shape[1] != num_classes or len(z) != len(yt):
        raise ValueError(
            f"logits of shape {z.shape} do not match {len(yt)} labels and {num_classes} classes"
        )
    if len(yt) == 0:
        raise ValueError("cannot compute metrics on an empty test set")
    pred = z.argmax(axis=1)
    labels = list(range(num_classes))
    return {
        "accuracy": float(accuracy_score(yt, pred)),
        "per_class_accuracy": per_class_accuracy(yt, pred, num_classes),
        "f1_macro": float(f1_score(yt, pred, labels=labels, average="macro", zero_division=0)),
        "recall_macro": float(
            recall_score(yt, pred, labels=labels, average="macro", zero_division=0)
        ),
        "auc_macro": auc_macro(yt, softmax(z), num_classes),
    }
