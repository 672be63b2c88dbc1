"""``die_with_parent``: a trainer stops when the run that started it is gone, but not when
a wrapper (the backend's ``python`` may be a script) sits between them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from early_repair_testing.paths import REPO

from orchestrator.backends.local.parent import PARENT_ENV

CHILD = "from orchestrator.backends.local.parent import die_with_parent; die_with_parent()"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux")


def _run(parent: str, *, wrapped: bool) -> int:
    argv = [sys.executable, "-c", CHILD]
    if wrapped:  # sh stays as the child's parent (no exec), like a wrapper script would
        argv = ["sh", "-c", '"$@"; exit $?', "sh", *argv]
    env = {**os.environ, PARENT_ENV: parent, "PYTHONPATH": str(REPO)}
    return subprocess.run(argv, env=env, timeout=60).returncode


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no process has this pid until the kernel reuses it


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_live_run_keeps_its_trainer(wrapped: bool) -> None:
    assert _run(str(os.getpid()), wrapped=wrapped) == 0


def test_a_trainer_whose_run_is_gone_stops() -> None:
    code = _run(str(_dead_pid()), wrapped=False)
    assert code == -signal.SIGTERM
