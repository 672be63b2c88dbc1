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


def joint_codes(left: list[np.ndarray], right: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One integer per distinct tuple of values (a column per array, the same columns on
    both sides), alike on both sides: joining or grouping by them costs a fraction of doing
    it by the values themselves, strings most of all. Missing values equal each other, as
    in pandas' joins."""
    n = len(left[0]) if left else 0
    code = np.zeros(n + (len(right[0]) if right else 0), dtype=np.int64)
    for mine, theirs in zip(left, right, strict=True):
        codes, uniques = pd.factorize(np.concatenate([mine, theirs]))
        code = pd.factorize(code * (len(uniques) + 1) + codes + 1)[0]  # stays small
    return code[:n], code[n:]


def find_rows(table: list[np.ndarray], query: list[np.ndarray]) -> np.ndarray:
    """For each tuple of ``query`` (a column per array), the first position in ``table``
    with the same values, or -1."""
    mine, wanted = joint_codes(table, query)
    if not len(mine):
        return np.full(len(wanted), -1, dtype=np.int64)
    order = np.argsort(mine, kind="stable")
    at = np.minimum(np.searchsorted(mine[order], wanted), len(order) - 1)
    return np.where(mine[order][at] == wanted, order[at], -1)


def base_rows(records: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """For each records row of ``rows``, the row of its checkpoint's base model: the base
    record of the same run and epoch (the first, were there several), or -1."""
    rows = np.asarray(rows, dtype=np.int64)
    run, epoch = records["run"].to_numpy(), records["epoch"].to_numpy(dtype=np.int64)
    return base_rows_at(records, run[rows], epoch[rows])


def base_rows_at(records: pd.DataFrame, runs: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """For each (run, epoch) of ``runs`` and ``epochs``, the row of the base record of that
    run and epoch (the first, were there several), or -1."""
    base = np.flatnonzero((records["kind"] == "base").to_numpy(dtype=bool))
    if not len(base):
        return np.full(len(runs), -1, dtype=np.int64)
    run, epoch = records["run"].to_numpy(), records["epoch"].to_numpy(dtype=np.int64)
    found = find_rows([run[base], epoch[base]], [runs, epochs])
    return np.where(found >= 0, base[np.maximum(found, 0)], -1)
