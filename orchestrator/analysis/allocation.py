"""How aggregation allocates memory: settings that keep its time steady, not just short.

Aggregating 100,000 records makes millions of short-lived Python objects and hundreds of
arrays of tens of megabytes, each used once. Three defaults cost more than that work:

* **The cycle collector** walks every live object on each pass; the tables make no
  cycles worth finding meanwhile (plain reference counting frees them), so it is paused
  until the end (5-15 % of the time at 100,000 records).
* **Huge pages.** numpy advises the kernel to back every array of 4 MB or more with
  transparent huge pages. Where the kernel then compacts memory to find a 2 MB page at
  the first touch (``defrag`` of ``madvise``, the common setting), one fresh 67 MB array
  took anything from 0.02 to 0.4 s on the same machine minutes apart; whole aggregations
  of 100,000 records, alternating in fresh processes, took a median 2.00 s (1.95-2.12)
  without the advice against 2.60 s (2.29-3.15) with it. Ordinary pages cost a little
  more each time and never that. The advice is switched off for the duration only
  (``NUMPY_MADVISE_HUGEPAGE=0`` does the same for a whole process).
* **Arrow's allocator.** pyarrow's default, mimalloc, reserves a 1 GiB region advised for
  huge pages and keeps freed pages in it. Each page fault there can compact memory, and
  after the fork of a second process (``forked.py``) the kept pages are copied on the
  first write. The system allocator is used instead for the duration (what
  ``ARROW_DEFAULT_MEMORY_POOL=system`` does for a whole process). In two rounds of 8
  alternating fresh processes, a first aggregation took a median 2.04-2.05 s against
  2.24-2.36 s with mimalloc, a second 2.09-2.11 s against 2.22-2.26 s, with a fifth
  less time in the kernel. Arrow's buffers remember their pool, so those made inside are
  freed correctly after it.

Each setting is put back as it was when the block ends, whatever happens in it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def settled() -> Iterator[None]:
    """The cycle collector paused, numpy's huge-page advice off and Arrow allocating with
    the system's allocator, for one aggregation."""
    with _collector_paused(), _ordinary_pages(), _system_allocator():
        yield


@contextmanager
def _collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _ordinary_pages() -> Iterator[None]:
    import numpy as np

    # numpy's own switch for the advice (what its import does with the variable); absent
    # from a numpy that lacks it, and then nothing is changed.
    advise = getattr(getattr(np, "_core", None), "multiarray", None)
    advise = getattr(advise, "_set_madvise_hugepage", None)
    if advise is None:
        yield
        return
    advised = advise(False)
    try:
        yield
    finally:
        advise(advised)


@contextmanager
def _system_allocator() -> Iterator[None]:
    import pyarrow as pa

    before = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(before)
