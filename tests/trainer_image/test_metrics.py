"""Test-set metrics from logits: hand-checked values, absent classes, the two-class AUC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer_image.metrics import classification_metrics, softmax


def onehot_logits(pred: list[int], num_classes: int, scale: float = 5.0) -> np.ndarray:
    z = np.zeros((len(pred), num_classes), dtype=np.float32)
    z[np.arange(len(pred)), pred] = scale
    return z


def test_hand_computed_three_class_example() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = [0, 1, 1, 1, 2, 0]
    m = classification_metrics(onehot_logits(pred, 3), y, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_accuracy"] == pytest.approx([0.5, 1.0, 0.5])
    # precision: c0 1/2, c1 2/3, c2 1/1; recall: 1/2, 1, 1/2
    f1 = [2 * p * r / (p + r) for p, r in ((0.5, 0.5), (2 / 3, 1.0), (1.0, 0.5))]
    assert m["f1_macro"] == pytest.approx(np.mean(f1))
    assert m["recall_macro"] == pytest.approx(np.mean([0.5, 1.0, 0.5]))
    assert 0.5 < m["auc_macro"] <= 1.0


def test_auc_is_the_unweighted_mean_of_one_vs_rest_aucs() -> None:
    # docs/science.md: macro one-vs-rest. Each class's AUC by counting (positive, negative) pairs
    # (Mann-Whitney); unequal supports make a weighted average or one-vs-one differ.
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), [5, 9, 14, 22])
    logits = rng.normal(size=(len(y), 4))
    logits[np.arange(len(y)), y] += 1.0
    probs = softmax(logits)
    per_class = []
    for c in range(4):
        pos, neg = probs[y == c, c], probs[y != c, c]
        per_class.append(float(np.mean(pos[:, None] > neg[None, :])))
    m = classification_metrics(logits, y, 4)
    assert m["auc_macro"] == pytest.approx(np.mean(per_class), abs=1e-12)
    assert abs(np.mean(per_class) - np.average(per_class, weights=[5, 9, 14, 22])) > 1e-3


def test_absent_class_gives_none_accuracy_and_undefined_auc() -> None:
    y = np.array([0, 0, 1, 1])
    m = classification_metrics(onehot_logits([0, 1, 1, 1], 3), y, 3)
    assert m["per_class_accuracy"] == [0.5, 1.0, None]
    assert m["auc_macro"] is None
    # Averages still run over all three classes (labels=range(C), zero_division=0).
    assert m["recall_macro"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_two_classes_use_the_auc_of_class_one() -> None:
    y = np.array([0, 0, 1, 1])
    # Scores for class 1 rank one negative above one positive: AUC = 3/4.
    logits = np.array([[0.0, -1.0], [0.0, 0.5], [0.0, 0.2], [0.0, 2.0]], dtype=np.float32)
    m = classification_metrics(torch.from_numpy(logits), torch.from_numpy(y), 2)
    assert m["auc_macro"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75)


def test_perfect_and_float32_probabilities_are_accepted() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 5)
    logits = rng.normal(size=(50, 10)).astype(np.float32) * 30
    logits[np.arange(50), y] += 200  # extreme logits: float32 softmax would not sum to 1
    m = classification_metrics(logits, y, 10)
    assert m["accuracy"] == 1.0 and m["auc_macro"] == pytest.approx(1.0)
    assert np.allclose(softmax(logits).sum(axis=1), 1.0, atol=1e-12)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="classes"):
        classification_metrics(np.zeros((3, 4)), np.zeros(3), 5)
