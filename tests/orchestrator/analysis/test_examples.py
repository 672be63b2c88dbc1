"""Per-example predictions handled test set by test set: per-class counts against a plain
loop (labels stored in and out of class order, classes absent), runs grouped by their true
labels, and the consistency check against a record-by-record loop across two test sets of
different lengths, split into many blocks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis import examples as ex
from orchestrator.analysis.examples import Examples, LabelSet, check


def plain_by_class(mask: np.ndarray, labels: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(mask), width), dtype=np.int64)
    for r in range(len(mask)):
        for i, y in enumerate(labels):
            out[r, y] += int(mask[r, i])
    return out


@pytest.mark.parametrize("in_order", [True, False])
def test_per_class_counts_equal_a_plain_loop(in_order: bool) -> None:
    rng = np.random.default_rng(3)
    labels = rng.choice([0, 1, 2, 4, 7], size=41).astype(np.uint16)  # 3, 5, 6 absent
    if in_order:
        labels = np.sort(labels)
    mask = rng.random((9, len(labels))) < 0.6
    ls = LabelSet.of(labels)
    assert ls.in_order is in_order
    assert ls.width == 8
    got = ls.by_class(mask, 10)
    np.testing.assert_array_equal(got, plain_by_class(mask, labels, 10))
    np.testing.assert_array_equal(ls.sizes(10), np.bincount(labels, minlength=10))


def test_runs_are_grouped_by_their_true_labels() -> None:
    a = np.array([0, 1, 2, 1], dtype=np.uint16)
    other = np.array([2, 2, 0], dtype=np.uint16)
    examples = Examples(labels={"r1": a, "r2": a.copy(), "r3": other})
    groups = examples.test_sets(np.array(["r1", "r3", "r2", "no-labels", "r1"], dtype=object))
    found = {tuple(ls.labels.tolist()): pos.tolist() for pos, ls in groups}
    assert found == {(0, 1, 2, 1): [0, 2, 4], (2, 2, 0): [1]}


def _tree(rng: np.random.Generator) -> tuple[pd.DataFrame, Examples, dict[int, str]]:
    """Records of four runs on two test sets (30 and 17 examples, 4 classes), each record's
    stated accuracies right unless broken on purpose; returns what a loop calls bad."""
    labels = {
        "a1": rng.integers(0, 4, 30).astype(np.uint16),
        "b1": rng.integers(0, 3, 17).astype(np.uint16),  # class 3 absent
    }
    labels["a2"] = labels["a1"].copy()
    labels["b2"] = labels["b1"].copy()
    rows, vectors, expected = [], [], {}
    for i in range(40):
        run = ["a1", "b1", "a2", "b2"][i % 4]
        y = labels[run]
        pred = np.where(rng.random(len(y)) < 0.7, y, (y + 1) % 4).astype(np.uint16)
        right = pred == y
        acc = [float(right[y == c].mean()) if (y == c).any() else np.nan for c in range(4)]
        row = {
            "run": run,
            "accuracy": float(right.mean()),
            **{f"acc_class_{c}": acc[c] for c in range(4)},
        }
        if i % 7 == 3:
            row["accuracy"] += 0.01
            expected[i] = "accuracy"
        elif i % 11 == 5:
            row["acc_class_0"] = 1.0 - row["acc_class_0"] if row["acc_class_0"] != 0.5 else 0.0
            expected[i] = "per-class"
        elif i == 37:
            pred = pred[:-1]
            expected[i] = "holds"
        rows.append(row)
        vectors.append(pred)
    lengths = np.array([len(v) for v in vectors])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    df = pd.DataFrame(rows, index=np.arange(100, 140))  # index labels, not positions
    examples = Examples(np.concatenate(vectors), offsets, np.arange(40), labels)
    return df, examples, expected


@pytest.mark.parametrize("block", [ex.BLOCK, 40, 1])
def test_check_flags_what_a_record_by_record_loop_flags(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ex, "BLOCK", block)  # many blocks per test set, or one
    df, examples, expected = _tree(np.random.default_rng(11))
    bad = check(df, examples, [f"acc_class_{c}" for c in range(4)])
    assert sorted(bad) == sorted(100 + i for i in expected)
    for i, why in expected.items():
        assert why in bad[100 + i][1]
    for i in range(40):  # per-class hits kept for every record of the right length
        if expected.get(i) == "holds":
            continue
        y = examples.labels[df["run"].iloc[i]]
        right = examples.vector(i) == y
        np.testing.assert_array_equal(
            examples.class_hits(np.array([i]))[0], plain_by_class(right[None], y, 4)[0]
        )
