"""Per-example test predictions of a sweep's models, checked against their records.

Every record a run writes has the predicted label of every test example beside it
(``predictions.npy``, or a row of the ``predictions`` column of ``records.arrow``), and the
run its true labels (``test_labels.npy``). Paired tests compare two models example by
example (``noise.py``); before any of that, each record's predictions must reproduce the
accuracy and per-class accuracy it states (within ``TOLERANCE``): one that does not is a
problem, never a result. Trees written before predictions were stored simply have none:
their records stay results, and the per-example columns stay empty.

The work is done per *test set*, not per run: the runs of one dataset share their true
labels, so their records form one rows x examples matrix compared with one label vector
(in blocks of ``BLOCK`` values, so that temporaries stay a few MB at any sweep size). The
per-class correct counts the check computes (``Examples.hits``) are kept: a paired
comparison needs only the examples where two models disagree on top of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

TOLERANCE = 1e-9
BLOCK = 1 << 20  # predictions per block of rows (2 MB of uint16: temporaries stay in cache)


@dataclass(frozen=True)
class LabelSet:
    """One distinct vector of true test labels, with its examples ordered by class."""

    labels: np.ndarray  # in the runs' test order
    order: np.ndarray  # example indices, class by class (stable)
    starts: np.ndarray  # where each class present begins in ``order``
    classes: np.ndarray  # the class of each of those blocks
    width: int  # largest label + 1
    in_order: bool  # stored class by class already (``order`` is the identity)

    @classmethod
    def of(cls, labels: np.ndarray) -> LabelSet:
        order = np.argsort(labels, kind="stable")
        ordered = labels[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(labels) else order
        width = int(labels.max()) + 1 if len(labels) else 0
        in_order = bool((order == np.arange(len(order))).all())
        return cls(labels, order, starts, ordered[starts].astype(np.int64), width, in_order)

    def by_class(self, mask: np.ndarray, width: int) -> np.ndarray:
        """Per class, how many examples of each row of ``mask`` (rows x examples, test
        order) are True: rows x ``width`` (``width`` >= ``self.width``)."""
        out = np.zeros((len(mask), width), dtype=np.int64)
        if len(mask) and len(self.labels):
            # np.take along an axis is several times faster than fancy indexing a column
            # set; a test set stored class by class needs neither
            ordered = mask if self.in_order else np.take(mask, self.order, axis=1)
            # counted as bytes into int32: four times faster than into int64
            counts = np.add.reduceat(ordered.view(np.uint8), self.starts, axis=1, dtype=np.int32)
            out[:, self.classes] = counts
        return out

    def sizes(self, width: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=width)[:width]


def blocks(rows: np.ndarray, n: int) -> Iterator[np.ndarray]:
    """``rows`` in consecutive blocks of at most ``BLOCK`` predictions of ``n`` examples."""
    step = max(1, BLOCK // max(n, 1))
    for start in range(0, len(rows), step):
        yield rows[start : start + step]


@dataclass
class Examples:
    """The predictions of the records frame's rows: row ``i``'s labels are
    ``values[offsets[j]:offsets[j + 1]]`` with ``j = row_of[i]`` (-1: none). ``hits[j]``:
    its correct predictions per class, once ``check`` has run (else -1)."""

    values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint16))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    row_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # run -> true test labels
    hits: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    _sets: dict[bytes, LabelSet] = field(default_factory=dict, repr=False)

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

    def class_hits(self, rows: np.ndarray) -> np.ndarray:
        """Correct predictions per class of ``rows`` (checked rows only)."""
        return self.hits[self.row_of[np.asarray(rows, dtype=np.int64)]]

    def test_sets(self, runs: np.ndarray) -> list[tuple[np.ndarray, LabelSet]]:
        """Positions in ``runs`` (the run of each row considered) grouped by their run's
        test set, in ascending order within each; runs without labels are left out."""
        codes, names = pd.factorize(np.asarray(runs, dtype=object))
        found: dict[bytes, int] = {}  # a test set's labels -> its group, in order of first use
        group = np.full(len(names), -1, dtype=np.int64)
        for i, name in enumerate(names):
            labels = self.labels.get(name)
            if labels is not None:
                key = labels.tobytes()
                if key not in self._sets:
                    self._sets[key] = LabelSet.of(labels)
                group[i] = found.setdefault(key, len(found))
        of_row = group[codes] if len(codes) else np.zeros(0, dtype=np.int64)
        order = np.argsort(of_row, kind="stable")
        bounds = np.searchsorted(of_row[order], np.arange(len(found) + 1))
        return [(order[bounds[g] : bounds[g + 1]], self._sets[key]) for key, g in found.items()]

    @classmethod
    def concat(cls, parts: list[Examples]) -> Examples:
        """The predictions of records frames put one after the other (their runs distinct).
        ``hits`` as one ``check`` of them all leaves them: as wide as the widest part's,
        the extra classes 0 in a checked row (it has no such example), -1 in an unchecked."""
        width = max(p.hits.shape[1] for p in parts)
        offsets, row_of, hits = [np.zeros(1, dtype=np.int64)], [], []
        values_before = rows_before = 0
        for p in parts:
            n = len(p.offsets) - 1
            offsets.append(p.offsets[1:] + values_before)
            row_of.append(np.where(p.row_of >= 0, p.row_of + rows_before, -1))
            wide = np.full((n, width), -1, dtype=np.int64)
            if p.hits.shape[0] == n and p.hits.shape[1]:
                w = p.hits.shape[1]
                wide[:, :w] = p.hits
                wide[:, w:] = np.where(p.hits[:, :1] >= 0, 0, -1)
            hits.append(wide)
            values_before += len(p.values)
            rows_before += n
        return cls(
            np.concatenate([p.values for p in parts]).astype(np.uint16, copy=False),
            np.concatenate(offsets),
            np.concatenate(row_of),
            {k: v for p in parts for k, v in p.labels.items()},
            np.concatenate(hits),
            {k: v for p in parts for k, v in p._sets.items()},
        )

    def select(self, keep: np.ndarray) -> Examples:
        """The same predictions for a records frame reduced to the rows ``keep`` (in order)."""
        return Examples(
            self.values, self.offsets, self.row_of[keep], self.labels, self.hits, self._sets
        )


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
    rows without predictions (or whose run has no labels) are not checked. Fills
    ``examples.hits`` for the rows it checks."""
    bad: dict[int, tuple[int, str]] = {}
    pos = np.flatnonzero(examples.row_of >= 0)
    k = len(acc_cols)
    sets = examples.test_sets(df["run"].to_numpy(dtype=object)[pos])
    width = max([k] + [ts.width for _, ts in sets])
    examples.hits = np.full((len(examples.offsets) - 1, width), -1, dtype=np.int64)
    accuracy = df["accuracy"].to_numpy(dtype=float)
    per_class = df[acc_cols].to_numpy(dtype=float) if acc_cols else np.zeros((len(df), 0))
    index = df.index.to_numpy()
    for group, ts in sets:
        rows = pos[group]
        n = len(ts.labels)
        lengths = examples.lengths(rows)
        for j in np.flatnonzero(lengths != n):
            bad[int(index[rows[j]])] = (n, f"its predictions.npy holds {lengths[j]} labels")
        rows = rows[lengths == n]
        if not len(rows) or not n:
            continue
        counts = ts.sizes(width)[:k]
        for block in blocks(rows, n):
            hits = ts.by_class(examples.matrix(block) == ts.labels, width)
            examples.hits[examples.row_of[block]] = hits
            acc = hits.sum(axis=1) / n
            with np.errstate(invalid="ignore", divide="ignore"):
                pc = np.where(counts > 0, hits[:, :k] / counts, np.nan)
            stated = per_class[block]
            off_acc = np.abs(acc - accuracy[block]) > TOLERANCE
            same_nan = np.isnan(pc) == np.isnan(stated)
            off_pc = ~same_nan | (np.abs(np.nan_to_num(pc) - np.nan_to_num(stated)) > TOLERANCE)
            off_pc |= ts.width > k  # a label the record has no class for
            for j in np.flatnonzero(off_acc | off_pc.any(axis=1)):
                what = (
                    f"accuracy {acc[j]:.6g}, not the recorded {accuracy[block[j]]:.6g}"
                    if off_acc[j]
                    else "per-class accuracies other than the recorded ones"
                )
                bad[int(index[block[j]])] = (n, f"its predictions.npy gives {what}")
    return bad
