"""Shared fixtures: run the CLI in-process exactly as the console script does."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from paths import REPO

# The moto S3 server fixtures (moto_endpoint, s3_env, s3_bucket) for every test module.
pytest_plugins = ["s3_server"]

# Tests share two cores; keep BLAS/torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


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
