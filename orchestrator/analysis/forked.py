"""A second core for aggregation: a function run in a forked child while the caller goes on.

Aggregating 100,000 records is seconds of single-threaded numpy and pandas, and its two
halves - the runs read, and the tables built from them - each split into independent parts.
A forked child starts with the parent's memory as it was at the fork, so nothing is sent to
it; only its result comes back, pickled into an in-memory file. It runs the same code on the same
data, so the result is the one a call here would give, bit for bit. A call may come in two
steps (``staged``): the first step's result is handed over as soon as the child has it,
while the child goes on with the second.

fork is used only where it is safe and can help: a POSIX system, more than one CPU available
to this process, no other Python thread (one holding a lock at the fork would leave the
child's copy locked for ever), and ``EARLY_REPAIR_PROCESSES`` not set to 1. Otherwise - and
whenever no child can be started (a process limit, no memory) or it fails in any way
(killed, out of memory, an exception) - the function (or the step the child did not
finish) runs here when its result is asked for, so an error surfaces in this process with
its traceback.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from typing import BinaryIO, Generic, TypeVar

T = TypeVar("T")
A = TypeVar("A")

PROCESSES_ENV = "EARLY_REPAIR_PROCESSES"
# Below this many records a table or a share of the load is done in milliseconds, less
# than starting a process costs: callers do it here.
MIN_RECORDS = 20_000
_OK = b"ok"


def may_fork() -> bool:
    """Whether ``start`` runs its function in a child (see the module's docstring)."""
    if not hasattr(os, "fork") or os.environ.get(PROCESSES_ENV, "").strip() == "1":
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return cpus > 1 and threading.active_count() == 1


class Started(Generic[A, T]):
    """A call under way in a child (or deferred to ``result``), in two steps: ``first()``
    is the first step's result, handed over as soon as the child has it while the child
    goes on with the second, ``second(first())``, which ``result()`` gives."""

    def __init__(self, first: Callable[[], A], second: Callable[[A], T], fork: bool) -> None:
        self._first_fn, self._second_fn = first, second
        self._pid = 0
        self._outs: tuple[BinaryIO, BinaryIO] | None = None
        self._ready = -1  # the pipe the child writes a byte to once the first step is out
        self._first: tuple[A] | None = None
        self.forked = False  # whether a child was started
        if fork and may_fork():
            try:
                self._fork()
            except OSError:  # no process or no scratch file to be had (limits, sandbox)
                self._pid = 0

    def _fork(self) -> None:
        # Results go through unnamed in-memory files, not a pipe: tens of megabytes
        # through a pipe's 64 KiB take a context switch each, hundreds of milliseconds.
        outs = (_scratch_file(), _scratch_file())
        ready, done = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork beside any OS thread. No Python thread runs here
            # (may_fork); the native pools left (Arrow's, OpenBLAS's) are idle and made
            # anew in a child by their own at-fork handlers.
            warnings.filterwarnings("ignore", ".*multi-threaded.*fork", DeprecationWarning)
            try:
                pid = os.fork()
            except OSError:
                for f in outs:
                    f.close()
                os.close(ready)
                os.close(done)
                raise
        if pid == 0:  # the child: compute, write, and leave without running the parent's exit
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends it; the parent reports
            status = 1
            try:
                os.close(ready)
                _release_free_heap()
                first = self._first_fn()
                _write(outs[0], first)
                os.write(done, _OK[:1])
                _write(outs[1], self._second_fn(first))
                status = 0
            finally:
                os._exit(status)
        os.close(done)  # (the child's end: a child that dies closes it, and first() sees so)
        self._pid, self._outs, self._ready = pid, outs, ready
        self.forked = True

    def __enter__(self) -> Started[A, T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def cancel(self) -> None:
        """End the child if its result was never asked for (the caller failed meanwhile)."""
        if self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            self._reap()
        self._close_ready()
        for f in self._outs or ():
            f.close()
        self._outs = None

    def _close_ready(self) -> None:
        if self._ready >= 0:
            os.close(self._ready)
            self._ready = -1

    def _reap(self) -> int:
        """The child's wait status; -1 (a failure) if something else reaped it first."""
        try:
            status = os.waitpid(self._pid, 0)[1]
        except ChildProcessError:
            status = -1
        self._pid = 0
        return status

    def first(self) -> A:
        """The first step's result; computed here if no child could give it."""
        if self._first is None:
            got = b""
            if self._ready >= 0 and self._outs is not None:
                try:
                    got = os.read(self._ready, 1)  # until the child hands it over, or ends
                except BaseException:
                    self.cancel()
                    raise
                finally:
                    self._close_ready()
            value = _read(self._outs[0]) if got == _OK[:1] and self._outs else _FAILED
            self._first = (self._first_fn() if value is _FAILED else value,)
        return self._first[0]

    def result(self) -> T:
        """The result; computed here if no child could give it."""
        first = self.first()
        if self._pid:
            try:
                status = self._reap()
            except BaseException:
                self.cancel()
                raise
            if status == 0 and self._outs is not None:
                value = _read(self._outs[1])
                if value is not _FAILED:
                    return value
        return self._second_fn(first)  # the child failed: the same call here says why


_FAILED = object()


def _write(out: BinaryIO, value: object) -> None:
    out.write(_OK)
    pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)
    out.flush()


def _read(out: BinaryIO) -> object:
    """What a child wrote to ``out``, or ``_FAILED``: nothing complete there, or a result
    that does not unpickle here (then as if the child had failed)."""
    out.seek(0)
    if out.read(len(_OK)) != _OK:
        return _FAILED
    try:
        return pickle.load(out)
    except Exception:
        return _FAILED


def _release_free_heap() -> None:
    """Give the free memory this child inherited back to the system: glibc's free heap
    pages, and those Arrow's current pool keeps for reuse (mimalloc, pyarrow's default,
    keeps them; aggregation allocates with the system's allocator, allocation.py).

    After a fork every page is shared until one side writes to it; the parent goes on
    allocating in its free memory (hundreds of MB after a load), and each page it reuses is
    copied first while the child still maps it. Free pages the child lets go of are the
    parent's alone again: reusing them costs no copy. With mimalloc, letting its pages go
    too took a median 0.07-0.17 s off whole aggregations of 100,000 records (two rounds
    in fresh processes)."""
    arrow = sys.modules.get("pyarrow")  # loaded by whoever forked; never imported here
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # another C library: nothing to give back this way
        return
    trim(0)


def _scratch_file() -> BinaryIO:
    if hasattr(os, "memfd_create"):
        try:
            return os.fdopen(os.memfd_create("early-repair-result", os.MFD_CLOEXEC), "w+b")
        except OSError:  # refused (a sandbox): a temporary file does the same
            pass
    return tempfile.TemporaryFile()


def start(fn: Callable[[], T], *, fork: bool = True) -> Started[None, T]:
    """Start ``fn()`` in a child where that helps (and ``fork``: the caller's judgement that
    the work is worth a process); ``.result()`` waits for what it returns. Use it as a
    context manager, so that a child whose result is not wanted is ended."""
    return Started(_nothing, lambda _: fn(), fork)


def staged(first: Callable[[], A], second: Callable[[A], T], *, fork: bool = True) -> Started[A, T]:
    """``start`` of two steps: ``.first()`` gives ``first()`` as soon as the child has it,
    while the child goes on with ``second`` of it; ``.result()`` waits for that."""
    return Started(first, second, fork)


def _nothing() -> None:
    return None
