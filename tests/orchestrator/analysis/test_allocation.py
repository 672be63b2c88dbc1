"""allocation.settled: the cycle collector paused, numpy's huge-page advice off and Arrow on
the system allocator inside, all put back as they were afterwards - also when the block
fails."""

from __future__ import annotations

import gc

import numpy as np
import pyarrow as pa
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
        pool = pa.default_memory_pool().backend_name
        assert pool != "system"  # pyarrow's default (mimalloc or jemalloc)
        with allocation.settled():
            assert not gc.isenabled()
            assert advised() is False
            assert pa.default_memory_pool().backend_name == "system"
            assert pa.array(range(1000)).buffers()[1].size  # Arrow allocates there
        assert gc.isenabled() and advised() is before
        assert pa.default_memory_pool().backend_name == pool
        with pytest.raises(RuntimeError), allocation.settled():
            raise RuntimeError("a failed aggregation")
        assert gc.isenabled() and advised() is before
        assert pa.default_memory_pool().backend_name == pool
        gc.disable()
        with allocation.settled():
            pass
        assert not gc.isenabled()  # a caller's paused collector stays paused
    finally:
        advise(was_advised)
        if was_enabled:
            gc.enable()
