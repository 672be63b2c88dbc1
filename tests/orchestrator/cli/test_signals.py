"""Stopping ``early-repair run`` from outside: Ctrl-C exits 130, and trainers whose
``run`` was killed stop quietly - one log line, the log archived, no BrokenPipeError traceback.

Real processes: ``run`` starts real trainers on the digits quickstart; each test waits until
the trainer has written its run.json (it is past start-up and training) and then signals.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from early_repair_testing.paths import REPO

from orchestrator.results import layout as keys

SPEC = """\
name: signals
datasets: [digits]
models: [small_cnn]
seeds: [1]
training: {max_epochs: 500, early_stopping: false, num_threads: 1, device: cpu}
"""
RUN = "digits-small-cnn-s1"
SAFETY_S = 240  # a safety net against a hung test, not a speed target

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


def start_run(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC)
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--results", str(results)],
        cwd=REPO,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a shell job
    )
    return proc, results


def wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"run ended ({proc.returncode}) before {what}")
        assert time.monotonic() < deadline, f"no {what} after {SAFETY_S} s"
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def ended(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie has ended; init reaps it (or not, in a container)


def trainer_log(results: Path) -> str:
    return (results / keys.log("signals", RUN)).read_text()


@pytest.mark.slow
def test_ctrl_c_exits_130_and_trainers_stop_cleanly(tmp_path: Path) -> None:
    proc, results = start_run(tmp_path)
    try:
        wait_for("run.json", (results / keys.run_json("signals", RUN)).exists, proc)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole job
        _out, err = proc.communicate(timeout=SAFETY_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    log = trainer_log(results)
    assert "Traceback" not in log and "KeyboardInterrupt" not in log
    # The trainer got Ctrl-C's SIGINT and `run`'s SIGTERM; whichever came first stopped it.
    assert re.search(rf"run {RUN} stopped \(exit 1(30|43)\); run it again to resume", log), log


@pytest.mark.slow
def test_trainers_stop_quietly_when_run_is_killed(tmp_path: Path) -> None:
    proc, results = start_run(tmp_path)
    try:
        wait_for("run.json", (results / keys.run_json("signals", RUN)).exists, proc)
        trainers = children(proc.pid)
        assert len(trainers) == 1
        proc.kill()  # only `run`, with no chance to clean up
        proc.wait(timeout=SAFETY_S)
        deadline = time.monotonic() + SAFETY_S
        while not ended(trainers[0]):
            assert time.monotonic() < deadline, "the trainer outlived its run by minutes"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the job's group: a trainer left over
            os.killpg(proc.pid, signal.SIGKILL)
    log = trainer_log(results)
    assert "Traceback" not in log and "BrokenPipeError" not in log
    # SIGTERM from the kernel when the parent died (PR_SET_PDEATHSIG), or - when the
    # trainer was writing a progress event at that moment - the closed pipe's SIGPIPE,
    # whichever the kernel delivers first: either way a clean stop, never a traceback.
    assert re.search(rf"run {RUN} stopped \(exit 14[13]\); run it again to resume", log), log
