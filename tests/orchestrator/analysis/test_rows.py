"""Row helpers the tables look records up with, against the lookup written out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.analysis.rows import base_rows


def test_base_rows_finds_the_base_record_of_the_same_run_and_epoch() -> None:
    records = pd.DataFrame(
        {
            "run": ["b", "a", "a", "b", "a", "a", "c", "b"],
            "kind": [
                "repaired",
                "base",
                "repaired",
                "base",
                "repaired",
                "base",
                "repaired",
                "base",
            ],
            "epoch": [3, 1, 1, 3, 2, 2, 1, 3],
        }
    )
    got = base_rows(records, np.array([0, 2, 4, 6, 1]))
    # b@3: the first of its two base records; a@1, a@2; c has no base; a base row is its own
    assert got.tolist() == [3, 1, 5, -1, 1]
    want = []
    for i in range(len(records)):
        same = (records["run"] == records["run"][i]) & (records["epoch"] == records["epoch"][i])
        hits = np.flatnonzero(same & (records["kind"] == "base"))
        want.append(int(hits[0]) if len(hits) else -1)
    assert base_rows(records, np.arange(len(records))).tolist() == want
    assert base_rows(records[records["kind"] != "base"], np.arange(3)).tolist() == [-1] * 3
