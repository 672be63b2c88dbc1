"""The raw-file toolkit GTSRB and RSNA share: read a folder of images into uint8 arrays.

Why this exists: both raw datasets arrive as tens of thousands of small files with a CSV of
labels, and reading them has the same concerns whatever the format - a CSV whose columns and
integers are checked with a message naming the file and line, images decoded by a few
threads into one preallocated array (so peak memory stays near the size of the result), a
bad file skipped and reported rather than fatal up to ``max_bad_fraction``, the dataset's
``options`` validated, and stratified splits that name the dataset when it is too small. A
dataset module (``gtsrb.py``, ``rsna.py``) lists its files as :class:`Item` s and decodes
one; :mod:`~trainer_image.data.prepared` stores and reads back what they produce. numpy,
pandas and the standard library only (no torch), so ``prepare`` runs on install-light
machines.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from orchestrator.errors import BadInput
from orchestrator.spec import DatasetSpec
from trainer_image.data import split_indices

log = logging.getLogger(__name__)

# How many names of skipped files a report keeps: enough to find the pattern, short enough
# for one log line.
FIRST_NAMES = 5

Progress = Callable[[int, int], None]
OptionsT = TypeVar("OptionsT", bound=BaseModel)


class Unreadable(Exception):
    """One raw file could not be decoded; the file is skipped and reported, not fatal."""


@dataclass(frozen=True)
class Item:
    """One raw image to read: a reported name, its path, its label and reader extras."""

    name: str
    path: Path
    label: int
    extra: Any = None


@dataclass
class Skipped:
    """Raw files left out, by reason (unreadable, unlabelled, missing), for log and manifest."""

    names: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, name: str) -> None:
        self.names.setdefault(kind, []).append(name)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.names.values())

    def report(self) -> dict[str, dict[str, Any]]:
        return {
            kind: {"count": len(names), "first": names[:FIRST_NAMES]}
            for kind, names in sorted(self.names.items())
        }

    def summary(self) -> str:
        return "; ".join(
            f"{len(names)} {kind} ({', '.join(names[:FIRST_NAMES])}"
            f"{', ...' if len(names) > FIRST_NAMES else ''})"
            for kind, names in sorted(self.names.items())
        )


def check_skipped(
    dataset: str, skipped: Skipped, total: int, max_bad_fraction: float, kept: int
) -> None:
    """Log what was left out; fail when it is more than the spec tolerates."""
    if skipped.count:
        log.warning(
            "%s: skipped %d of %d raw files: %s", dataset, skipped.count, total, skipped.summary()
        )
    if kept == 0:
        raise BadInput(
            f"{dataset}: none of the {total} raw images could be used: "
            f"{skipped.summary() or 'no images listed'}"
        )
    if total and skipped.count / total > max_bad_fraction:
        raise BadInput(
            f"{dataset}: {skipped.count} of {total} raw files are unusable"
            f" ({skipped.count / total:.1%}), more than max_bad_fraction"
            f" {max_bad_fraction:g} (datasets[].max_bad_fraction or --max-bad-fraction):"
            f" {skipped.summary()}"
        )


def _decode_one(decode: Callable[[Item], np.ndarray], item: Item) -> np.ndarray | Unreadable:
    try:
        return decode(item)
    except Unreadable as e:
        return e


def _decoded(
    items: Sequence[Item], decode: Callable[[Item], np.ndarray], workers: int
) -> Iterator[tuple[Item, np.ndarray | Unreadable]]:
    """(item, image or Unreadable) in the order of ``items``, decoded by ``workers`` threads.

    Threads suffice: Pillow's decoders and resize and numpy's array maths release the GIL.
    At most ``4 x workers`` images are in flight, so memory does not grow with the dataset.
    """
    if workers <= 1:
        for item in items:
            yield item, _decode_one(decode, item)
        return
    pending = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        window: deque[tuple[Item, Future[np.ndarray | Unreadable]]] = deque(
            (item, pool.submit(_decode_one, decode, item))
            for item in itertools.islice(pending, 4 * workers)
        )
        while window:
            item, future = window.popleft()
            nxt = next(pending, None)
            if nxt is not None:
                window.append((nxt, pool.submit(_decode_one, decode, nxt)))
            yield item, future.result()


def read_images(
    items: Sequence[Item],
    decode: Callable[[Item], np.ndarray],
    shape: tuple[int, int, int],
    skipped: Skipped,
    progress: Progress | None = None,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode ``items`` one by one into one preallocated uint8 array.

    Returns (x, y, kept) where ``kept`` are the positions in ``items`` of the rows of x.
    Good images are packed to the front as they come, so no second copy is ever made; a
    failed decode raises ``Unreadable`` and the item is recorded in ``skipped``. The result
    does not depend on ``workers``.
    """
    x = np.empty((len(items), *shape), dtype=np.uint8)
    y = np.empty(len(items), dtype=np.int64)
    kept = np.empty(len(items), dtype=np.int64)
    k = 0
    for i, (item, image) in enumerate(_decoded(items, decode, workers)):
        if isinstance(image, Unreadable):
            skipped.add("unreadable", f"{item.name} [{image}]")
        else:
            x[k] = image
            y[k] = item.label
            kept[k] = i
            k += 1
        if progress is not None:
            progress(i + 1, len(items))
    return x[:k], y[:k], kept[:k]


def read_table(path: Path, columns: Sequence[str], sep: str, layout: str) -> pd.DataFrame:
    """Read a raw CSV and check it has ``columns``; a BadInput names the file otherwise."""
    want = sep.join(columns)
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except FileNotFoundError as e:
        raise BadInput(f"{path}: missing; {layout}") from e
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: not a readable CSV ({e}); expected columns {want}") from e
    found = [str(c).strip() for c in df.columns]
    if any(c not in found for c in columns):
        raise BadInput(
            f"{path}: expected columns {want} (separated by {sep!r}), found {sep.join(found)}"
        )
    df.columns = found
    return df


def int_column(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """Parse one CSV column as integers, naming the file and line of the first bad value."""
    parsed = pd.to_numeric(df[column].str.strip(), errors="coerce")
    bad = parsed.isna() | (parsed != parsed.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise BadInput(
            f"{path}: line {row + 2}: {column} {df[column].iloc[row]!r} is not an integer"
        )
    return parsed.astype(np.int64).to_numpy()


def parse_options(model: type[OptionsT], spec: DatasetSpec) -> OptionsT:
    """Validate a built-in dataset's ``options`` (unknown keys are an error, not ignored)."""
    try:
        return model.model_validate(spec.options)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        allowed = ", ".join(model.model_fields) or "none"
        raise BadInput(
            f"datasets[{spec.name}].options.{loc}: {first['msg']}"
            f" (options for {spec.name}: {allowed})"
        ) from e


def stratified(
    y: np.ndarray, fraction: float, seed: int, what: str, stratify: bool = True
) -> tuple[np.ndarray, ...]:
    """``split_indices`` with a BadInput when the data are too few to (stratify and) split."""
    try:
        return split_indices(y, fraction, seed, stratify=stratify)
    except ValueError as e:
        raise BadInput(
            f"{what}: cannot split {len(y)} images stratified ({e});"
            " the dataset has too few images per class"
        ) from e
