"""The cases of test_forked.py that need fork allowed: run by it in a fresh pytest process
(the suite's own holds a moto server thread, and fork is rightly refused beside a thread).
Not named test_*: collected only when named. A forked child's result is the call's own, a
failed child is redone here, a child whose result is not wanted is ended, and a sweep
parsed and tabulated in two processes gives exactly the aggregation of one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from early_repair_testing.prediction_tree import (
    PredictedRun,
    coin_flips,
    fixed,
    write_predicted_run,
    write_predicted_tree,
)

from orchestrator.analysis import aggregate as ag
from orchestrator.analysis import forked
from orchestrator.analysis import load as loading
from orchestrator.results import layout
from orchestrator.store.file import FileStore


@pytest.fixture(autouse=True)
def processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(forked.PROCESSES_ENV, raising=False)
    assert forked.may_fork(), "run by test_forked.py in a process where fork is allowed"


def test_the_result_comes_from_a_child() -> None:
    parent = os.getpid()
    with forked.start(lambda: (os.getpid(), np.arange(5) * 2)) as child:
        assert child.forked
        pid, values = child.result()
    assert pid != parent
    np.testing.assert_array_equal(values, [0, 2, 4, 6, 8])


def test_a_failed_child_is_redone_here() -> None:
    parent = os.getpid()

    def only_here() -> int:
        if os.getpid() != parent:
            os._exit(3)  # killed, out of memory: no result at all
        return 7

    def raises_there() -> int:
        if os.getpid() != parent:
            raise RuntimeError("in the child")
        return 8

    with forked.start(only_here) as a, forked.start(raises_there) as b:
        assert a.forked and b.forked
        assert (a.result(), b.result()) == (7, 8)

    def always() -> None:
        raise ValueError("bad input")

    with forked.start(always) as c, pytest.raises(ValueError, match="bad input"):
        c.result()  # the error surfaces here, with this process's traceback


class _OnlyThere:
    """Pickles in the child, but cannot be unpickled here."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_refuse, ())


def _refuse() -> None:
    raise RuntimeError("a result that cannot be unpickled")


def test_a_result_that_does_not_unpickle_here_is_redone_here() -> None:
    parent = os.getpid()
    with forked.start(lambda: 9 if os.getpid() == parent else _OnlyThere()) as child:
        assert child.forked
        assert child.result() == 9


def test_a_child_reaped_by_someone_else_is_redone_here() -> None:
    with forked.start(lambda: 5) as child:
        assert child.forked
        os.waitpid(child._pid, 0)  # as a stray waitpid(-1) elsewhere in the process would
        assert child.result() == 5


def test_a_child_whose_result_is_not_wanted_is_ended() -> None:
    gate_read, gate_write = os.pipe()  # the child blocks reading it: never done by itself
    with forked.start(lambda: os.read(gate_read, 1)) as child:
        pid = child._pid
        assert pid
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left behind
    os.close(gate_read)
    os.close(gate_write)


def test_a_staged_childs_first_step_comes_before_its_second_ends() -> None:
    gate_read, gate_write = os.pipe()  # the second step waits for this process to say so
    parent = os.getpid()

    def second(first: tuple[int, int]) -> tuple[int, int, bytes]:
        return (*first, os.read(gate_read, 1))

    with forked.staged(lambda: (os.getpid(), 21), second) as child:
        assert child.forked
        pid, value = child.first()  # while the child still waits in its second step
        assert pid not in (0, parent) and value == 21
        os.write(gate_write, b"x")
        assert child.result() == (pid, 21, b"x")
    os.close(gate_read)
    os.close(gate_write)


def test_a_staged_child_that_fails_is_redone_here_from_the_step_it_reached() -> None:
    parent = os.getpid()

    def second(first: int) -> tuple[int, int]:
        if os.getpid() != parent:
            os._exit(3)  # as if killed in its second step
        return first, os.getpid()

    with forked.staged(lambda: os.getpid(), second) as child:
        assert child.forked
        # the first step's result is the child's; the second is done here with it
        first, here = child.result()
        assert first not in (0, parent) and here == parent

    def first_fails() -> int:
        if os.getpid() != parent:
            os._exit(3)
        return 4

    with forked.staged(first_fails, lambda v: v * 2) as child:
        assert child.forked
        assert (child.first(), child.result()) == (4, 8)


def test_staged_steps_run_here_without_a_child() -> None:
    steps: list[str] = []

    def first() -> int:
        steps.append("first")
        return 2

    def second(v: int) -> int:
        steps.append("second")
        return v + 1

    with forked.staged(first, second, fork=False) as child:
        assert not child.forked
        assert (child.result(), child.first()) == (3, 2)
    assert steps == ["first", "second"]


LABELS_A = np.repeat(np.arange(10), 20)
LABELS_B = np.repeat(np.arange(6), 15)  # another test set: other length, fewer classes


def _run(rng: np.random.Generator, i: int, **kw: object) -> PredictedRun:
    labels = LABELS_A if i % 3 else LABELS_B
    ref = labels.copy()
    wrong = rng.random(len(ref)) < 0.2
    ref[wrong] = (labels[wrong] + 1) % (labels.max() + 1)
    base = {e: coin_flips(ref, labels, rng, 3) for e in (1, 5)} | {10: ref}
    repaired = {(e, c): fixed(base[e], labels, c, 2 + e % 3) for e in (1, 5, 10) for c in (2, 4)}
    return PredictedRun(
        f"run-{i:02d}", 100 + i, labels, 10, base, repaired, int(labels.max()) + 1, **kw
    )


def _tree(root: Path, kind: str) -> FileStore:
    """``mixed``: finished runs on two test sets, one unpacked, one whose records contradict
    their predictions, one whose records.arrow is damaged (read record by record instead),
    one unfinished; ``clean``: finished, packed runs only; ``two-datasets``: those of two
    datasets (each share of runs then holds both: its frame interleaves the other's)."""
    rng = np.random.default_rng(4)
    store = FileStore(root)
    if kind != "mixed":
        datasets = ["digits", "another"] if kind == "two-datasets" else ["digits"]
        runs = [_run(rng, i, dataset=datasets[i % len(datasets)]) for i in range(8)]
        write_predicted_tree(store, "sw", runs)
        return store
    runs = [_run(rng, i) for i in range(7)]
    runs.append(_run(rng, 7, packed=False))
    runs.append(_run(rng, 8, tamper={(5, 2): 0.01}))
    write_predicted_tree(store, "sw", runs)
    store.write_bytes(layout.records("sw", "run-05"), b"ARROW1 but not really")
    unfinished = _run(rng, 9)
    write_predicted_run(store, "sw", unfinished)
    (store.root / layout.success("sw", unfinished.run)).unlink()
    return store


@pytest.mark.parametrize("kind", ["mixed", "clean", "two-datasets"])
def test_two_processes_give_exactly_the_aggregation_of_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    store = _tree(tmp_path / "results", kind)
    monkeypatch.setenv(forked.PROCESSES_ENV, "1")
    one = ag.aggregate(store)
    monkeypatch.delenv(forked.PROCESSES_ENV)
    monkeypatch.setattr(forked, "MIN_RECORDS", 0)  # a small tree split all the same
    started: list[forked.Started] = []
    real, real_staged = forked.start, forked.staged

    def counted(*a: object, **kw: object) -> forked.Started:
        started.append(real(*a, **kw))  # type: ignore[arg-type]
        return started[-1]

    def counted_staged(*a: object, **kw: object) -> forked.Started:
        started.append(real_staged(*a, **kw))  # type: ignore[arg-type]
        return started[-1]

    sorted_sizes: list[int] = []
    real_sort = loading.sorted_rows

    def spied(frame: pd.DataFrame, by: list[str]) -> np.ndarray:
        sorted_sizes.append(len(frame))
        return real_sort(frame, by)

    readers = tmp_path / "readers"  # who read records.arrow files: a child writes here too
    real_read = loading.read_many_bounded

    def read(store: FileStore, keys: list[str]) -> dict[str, bytes | Exception]:
        if any(k.endswith("records.arrow") for k in keys):
            with readers.open("a") as f:
                f.write(f"{os.getpid()}\n")
        return real_read(store, keys)

    monkeypatch.setattr(forked, "start", counted)
    monkeypatch.setattr(forked, "staged", counted_staged)
    monkeypatch.setattr(loading, "sorted_rows", spied)
    monkeypatch.setattr(loading, "read_many_bounded", read)
    two = ag.aggregate(store)
    assert sum(s.forked for s in started) == 2  # half of the runs parsed, the switch points
    # From a folder the child read its share's files itself, this process the others.
    pids = readers.read_text().split()
    assert len(pids) == 2 and str(os.getpid()) in pids, pids
    assert one.loaded.objects_read == two.loaded.objects_read
    # The shares' frames follow each other in order only when nothing interleaves them.
    # (the check looks at the rows either side of each seam: 2 or 4 rows)
    assert sorted_sizes and (max(sorted_sizes) > 4) == (kind != "clean"), sorted_sizes
    assert two.loaded.packed_runs == one.loaded.packed_runs == (7 if kind == "mixed" else 8)
    for name in ("records", "runs"):
        pd.testing.assert_frame_equal(getattr(one.loaded, name), getattr(two.loaded, name))
    tables = ("quality", "switch_points", "patterns", "effects", "methods", "headline")
    for name in (*tables, "readiness_runs", "readiness", "readiness_stops"):
        pd.testing.assert_frame_equal(getattr(one, name), getattr(two, name), check_exact=True)
    pd.testing.assert_frame_equal(one.problems, two.problems)
    pd.testing.assert_frame_equal(one.regressions, two.regressions)
    assert one.sentences == two.sentences
    if kind != "mixed":
        assert one.problems.empty
        return
    kinds = set(one.problems["kind"])
    assert {"damaged", "inconsistent", "unfinished-run"} <= kinds, kinds
    a, b = one.loaded.examples, two.loaded.examples
    rows = np.arange(len(one.loaded.records))
    np.testing.assert_array_equal(a.has(rows), b.has(rows))
    for r in rows[a.has(rows)]:
        np.testing.assert_array_equal(a.vector(r), b.vector(r))
    np.testing.assert_array_equal(a.class_hits(rows[a.has(rows)]), b.class_hits(rows[b.has(rows)]))
