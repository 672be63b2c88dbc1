"""Per-example test predictions of a sweep's models, checked against their records.

Every record a run writes has the predicted label of every test example beside it
(``predictions.npy``, or a row of the ``predictions`` column of ``records.arrow``), and the
run its true labels (``test_labels.npy``). Paired tests compare two models example by
example (``noise.py``); before any of that, each record's predictions must reproduce the
accuracy and per-class accuracy it states (within ``TOLERANCE``): one that does not is a
problem, never a result. Trees written before predictions were stored simply have none:
their records stay results, and the per-example columns stay empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

TOLERANCE = 1e-9


@dataclass
class Examples:
    """The predictions of the records frame's rows: row ``i``'s labels are
    ``values[offsets[j]:offsets[j + 1]]`` with ``j = row_of[i]`` (-1: none)."""

    values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint16))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    row_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # run -> true test labels

    def vector(self, row: int) -> np.ndarray | None:
        j = int(self.row_of[row])
        return None if j < 0 else self.values[self.offsets[j] : self.offsets[j + 1]]

    def has(self, rows: np.ndarray) -> np.ndarray:
        """Which of the records frame's ``rows`` have predictions and their run labels."""
        return self.row_of[rows] >= 0

    def matrix(self, rows: np.ndarray) -> np.ndarray:
        """The predictions of ``rows`` (all present, all of one length) as rows x examples,
        gathered in one indexing step."""
        j = self.row_of[np.asarray(rows, dtype=np.int64)]
        if not len(j):
            return np.zeros((0, 0), dtype=self.values.dtype)
        length = int(self.offsets[j[0] + 1] - self.offsets[j[0]])
        start = self.offsets[j]
        if length and self.values.size % length == 0 and not (start % length).any():
            # Every row starts on a multiple of its length (the common case: all records
            # of a sweep have one test set): whole rows of a 2-D view, not single values.
            return self.values.reshape(-1, length)[start // length]
        return self.values[start[:, None] + np.arange(length)]

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        """How many predictions each of ``rows`` has (0 for none)."""
        j = self.row_of[np.asarray(rows, dtype=np.int64)]
        return np.where(j >= 0, self.offsets[j + 1] - self.offsets[np.maximum(j, 0)], 0)

    def select(self, keep: np.ndarray) -> Examples:
        """The same predictions for a records frame reduced to the rows ``keep`` (in order)."""
        return Examples(self.values, self.offsets, self.row_of[keep], self.labels)


def from_arrow(column: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, offsets, present) of an Arrow ``list<uint16>`` column; ``present`` False for
    null rows (records without predictions)."""
    col = column.combine_chunks()  # type: ignore[attr-defined]
    if len(col) == 0:
        return np.zeros(0, dtype=np.uint16), np.zeros(1, dtype=np.int64), np.zeros(0, dtype=bool)
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    offsets = offsets - offsets[0]
    present = ~col.is_null().to_numpy(zero_copy_only=False)
    return values.astype(np.uint16, copy=False), offsets, present


def check(df: pd.DataFrame, examples: Examples, acc_cols: list[str]) -> dict[int, tuple[int, str]]:
    """Rows (index labels of ``df``) whose predictions do not reproduce their record:
    index -> (test examples, why). ``df`` holds ``run``, ``accuracy`` and ``acc_cols``;
    rows without predictions (or whose run has no labels) are not checked."""
    bad: dict[int, tuple[int, str]] = {}
    pos = np.flatnonzero(examples.row_of >= 0)
    if not len(pos):
        return bad
    runs = df["run"].to_numpy(dtype=object)[pos]
    codes, names = pd.factorize(runs)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    accuracy = df["accuracy"].to_numpy(dtype=float)
    per_class = df[acc_cols].to_numpy(dtype=float) if acc_cols else np.zeros((len(df), 0))
    index = df.index.to_numpy()
    for r, name in enumerate(names):
        rows = pos[order[bounds[r] : bounds[r + 1]]]
        labels = examples.labels.get(name)
        if labels is None:
            continue  # no test_labels: the predictions cannot be checked, so are not used
        # this run's rows only: the offsets of every record differenced once per run
        # would cost seconds in a sweep of thousands of runs
        lengths = examples.lengths(rows)
        n = len(labels)
        for j in np.flatnonzero(lengths != n):
            bad[int(index[rows[j]])] = (n, f"its predictions.npy holds {lengths[j]} labels")
        rows = rows[lengths == n]
        if not len(rows) or not n:
            continue
        correct = examples.matrix(rows) == labels[None, :]
        acc = correct.mean(axis=1)
        k = per_class.shape[1]
        onehot = np.zeros((n, max(k, int(labels.max()) + 1)), dtype=np.float64)
        onehot[np.arange(n), labels] = 1.0
        counts = onehot.sum(axis=0)[:k]
        hits = (correct.astype(np.float64) @ onehot)[:, :k]
        with np.errstate(invalid="ignore", divide="ignore"):
            pc = np.where(counts > 0, hits / counts, np.nan)
        stated = per_class[rows]
        off_acc = np.abs(acc - accuracy[rows]) > TOLERANCE
        same_nan = np.isnan(pc) == np.isnan(stated)
        off_pc = ~same_nan | (np.abs(np.nan_to_num(pc) - np.nan_to_num(stated)) > TOLERANCE)
        off_pc |= int(labels.max()) >= k  # a label the record has no class for
        for j in np.flatnonzero(off_acc | off_pc.any(axis=1)):
            what = (
                f"accuracy {acc[j]:.6g}, not the recorded {accuracy[rows[j]]:.6g}"
                if off_acc[j]
                else "per-class accuracies other than the recorded ones"
            )
            bad[int(index[rows[j]])] = (n, f"its predictions.npy gives {what}")
    return bad
