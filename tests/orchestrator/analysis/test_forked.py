"""Aggregation on a second core (forked.py): where fork is not used, and the cases that
need it (forked_cases.py) in a fresh pytest process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from orchestrator.analysis import forked

CASES = Path(__file__).with_name("forked_cases.py")
REPO = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: fork is never used")
def test_the_forking_cases_pass_in_a_process_without_threads(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != forked.PROCESSES_ENV}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(CASES),
            f"--basetemp={tmp_path / 'cases'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a hang (a child that never ends) fails here, not the whole suite
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "11 passed" in run.stdout, run.stdout[-2000:]  # none skipped


def test_no_child_when_told_not_to_or_when_a_thread_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(forked.PROCESSES_ENV, raising=False)
    parent = os.getpid()
    calls: list[int] = []

    def fn() -> int:
        calls.append(1)
        return os.getpid()

    with forked.start(fn, fork=False) as child:
        assert not child.forked and not calls  # nothing runs until the result is asked for
        assert child.result() == parent
    monkeypatch.setenv(forked.PROCESSES_ENV, "1")
    with forked.start(fn) as child:
        assert not child.forked and child.result() == parent
    monkeypatch.delenv(forked.PROCESSES_ENV)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with forked.start(fn) as child:  # a lock another thread holds would stay held
            assert not child.forked and child.result() == parent
    finally:
        stop.set()
        thread.join()


def test_no_child_to_be_had_means_the_call_runs_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process limit or no memory for a child: the same result, computed here."""
    monkeypatch.delenv(forked.PROCESSES_ENV, raising=False)
    monkeypatch.setattr(forked, "may_fork", lambda: True)

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(forked.os, "fork", no_fork)
    with forked.start(lambda: os.getpid()) as child:
        assert not child.forked
        assert child.result() == os.getpid()


def test_a_child_gives_back_the_free_memory_of_arrows_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The child lets go of the pages Arrow keeps for reuse (the parent's reuse of them
    would otherwise be copied first), and never imports Arrow itself to do so."""
    released: list[int] = []

    class Pool:
        def release_unused(self) -> None:
            released.append(1)

    class Arrow:
        @staticmethod
        def default_memory_pool() -> Pool:
            return Pool()

    monkeypatch.setitem(sys.modules, "pyarrow", Arrow)
    forked._release_free_heap()
    assert released == [1]
    monkeypatch.delitem(sys.modules, "pyarrow")
    forked._release_free_heap()  # a process that never loaded Arrow: nothing to give back
    assert released == [1] and "pyarrow" not in sys.modules
