"""Row operations the tables repeat on frames of hundreds of thousands of rows.

Sorting and string handling on pandas' object columns is where a large sweep's aggregation
spends much of its time; these helpers sort by factorized codes (one per distinct value)
instead of by the strings, with the semantics of the pandas calls they replace.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def plain_strings(df: pd.DataFrame) -> pd.DataFrame:
    """String columns as Python objects, not pandas' Arrow-backed ``str``: the tables take,
    merge and group rows many times, and each of those converts Arrow strings again."""
    for col in df.columns:
        if pd.api.types.is_string_dtype(df[col].dtype) and df[col].dtype != object:
            df[col] = df[col].astype(object)
    return df


def sort_keys(frame: pd.DataFrame, by: list[str]) -> list[np.ndarray]:
    """One numeric array per column of ``by`` that sorts as the column does (missing
    values first; strings in code point order): sorting by string columns directly is
    what makes large sweeps slow."""
    keys = []
    for col in by:
        values = frame[col]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            keys.append(values.to_numpy(dtype=float, na_value=-np.inf))
        else:
            keys.append(pd.factorize(values, sort=True)[0])  # missing -> -1, first
    return keys


def sorted_rows(frame: pd.DataFrame, by: list[str]) -> np.ndarray:
    """The row order that sorts ``frame`` by ``by`` (see ``sort_keys``). Stable, so equal
    keys keep their order."""
    keys = sort_keys(frame, by)
    return np.lexsort(keys[::-1]) if keys else np.arange(len(frame))


def base_rows(records: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """For each records row of ``rows``, the row of its checkpoint's base model: the base
    record of the same run and epoch (the first, were there several), or -1."""
    run = pd.factorize(records["run"])[0]
    epochs, rank = np.unique(records["epoch"].to_numpy(dtype=np.int64), return_inverse=True)
    key = run * max(len(epochs), 1) + rank  # (run, epoch) as one integer
    base = np.flatnonzero((records["kind"] == "base").to_numpy(dtype=bool))
    base = base[np.argsort(key[base], kind="stable")]
    if not len(base):
        return np.full(len(rows), -1, dtype=np.int64)
    want = key[np.asarray(rows, dtype=np.int64)]
    at = np.minimum(np.searchsorted(key[base], want), len(base) - 1)
    return np.where(key[base][at] == want, base[at], -1)
