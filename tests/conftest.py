"""Shared fixtures: run the CLI in-process exactly as the console script does."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from early_repair_testing.paths import REPO

# The moto S3 server fixtures (moto_endpoint, s3_env, s3_bucket) for every test module.
pytest_plugins = ["early_repair_testing.s3_server"]

# Tests share two cores; keep BLAS/torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

_SESSION_HOME: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    """The whole session - and every process it starts - keeps local sweep records and
    caches in a folder of its own, never in the user's: a quickstart the user runs at the
    same time cannot see the tests' sweeps, nor the tests the user's. Set here, before any
    test module is imported, and overriding what the user's shell exported."""
    global _SESSION_HOME
    _SESSION_HOME = Path(tempfile.mkdtemp(prefix="early-repair-tests-"))
    os.environ["EARLY_REPAIR_STATE_DIR"] = str(_SESSION_HOME / "state")
    os.environ["XDG_CACHE_HOME"] = str(_SESSION_HOME / "cache")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_HOME is not None:
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """``cli("run", "spec.yaml")`` -> CliResult(code, stdout, stderr)."""
    from orchestrator.cli import main

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


@pytest.fixture
def repo() -> Path:
    return REPO
