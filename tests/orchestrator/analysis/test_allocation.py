"""allocation.settled: the cycle collector paused and numpy's huge-page advice off inside,
both put back as they were afterwards - also when the block fails."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from orchestrator.analysis import allocation

advise = np._core.multiarray._set_madvise_hugepage


def advised() -> bool:
    """numpy's current advice setting, left as it is."""
    now = advise(False)
    advise(now)
    return bool(now)


@pytest.mark.parametrize("before", [True, False])
def test_inside_paused_and_unadvised_afterwards_as_before(before: bool) -> None:
    was_enabled, was_advised = gc.isenabled(), advised()
    try:
        gc.enable()
        advise(before)
        with allocation.settled():
            assert not gc.isenabled()
            assert advised() is False
        assert gc.isenabled() and advised() is before
        with pytest.raises(RuntimeError), allocation.settled():
            raise RuntimeError("a failed aggregation")
        assert gc.isenabled() and advised() is before
        gc.disable()
        with allocation.settled():
            pass
        assert not gc.isenabled()  # a caller's paused collector stays paused
    finally:
        advise(was_advised)
        if was_enabled:
            gc.enable()
