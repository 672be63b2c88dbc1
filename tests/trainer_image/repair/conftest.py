"""One real training shared by the repair tests (it takes seconds): the quickstart's spec
and the checkpoints of its first run (``early_repair_testing.digits_checkpoints``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from early_repair_testing.digits_checkpoints import quickstart_spec, train_checkpoints

from orchestrator.spec import SweepSpec
from trainer_image.data import Splits


@pytest.fixture(scope="session")
def quickstart() -> SweepSpec:
    return quickstart_spec()


@pytest.fixture(scope="session")
def trained(
    quickstart: SweepSpec, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Splits, dict[int, Path]]:
    """Checkpoints (epoch -> saved state file) of the quickstart's first run."""
    return train_checkpoints(quickstart, tmp_path_factory.mktemp("checkpoints"))
