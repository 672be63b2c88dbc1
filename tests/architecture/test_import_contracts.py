"""The architecture's import contracts (pyproject's [tool.importlinter]) hold, and they bite.

``lint-imports`` runs on the real tree; then on a copy of the packages with one offending
import added per contract, to show each contract reports a violation instead of passing
whatever the tree holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from early_repair_testing.paths import REPO

LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_tree_keeps_every_contract() -> None:
    done = lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for package in ("orchestrator", "trainer_image"):
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize(
    ("module", "offence", "contract"),
    [
        ("orchestrator/spec/fields.py", "import torch", "never imports torch"),
        (
            "orchestrator/results/layout.py",
            "import trainer_image.train",
            "reaches the trainer only",
        ),
        ("orchestrator/store/base.py", "import orchestrator.store.s3", "knows no implementation"),
        ("trainer_image/metrics.py", "import orchestrator.cli", "never imports the CLI"),
        ("orchestrator/spec/sweep.py", "import orchestrator.store", "Control-plane layers"),
        # The tables below what is said about them: a table reaching up into the headline
        # is the import circle the analysis layers exist to prevent.
        (
            "orchestrator/analysis/tables.py",
            "import orchestrator.analysis.headline",
            "Analysis layers",
        ),
        ("orchestrator/analysis/load.py", "import orchestrator.analysis.tables", "Analysis layers"),
        # The frames load builds sit below it: they never read a store or a sweep themselves.
        (
            "orchestrator/analysis/record_frame.py",
            "import orchestrator.analysis.load",
            "Analysis layers",
        ),
        ("orchestrator/common/retry.py", "import orchestrator.errors", "Control-plane layers"),
        (
            "orchestrator/cli/cluster.py",
            "from orchestrator.backends.kubernetes import manifests",
            "reaches the backends only through",
        ),
        (
            "orchestrator/cli/local.py",
            "import orchestrator.backends.base",
            "reaches the backends only through",
        ),
        # A method reusing another's code instead of the shared toolkit, and the toolkit
        # reaching into a method, both break the methods' independence.
        (
            "trainer_image/repair/finetune.py",
            "import trainer_image.repair.arachne",
            "Repair methods are independent",
        ),
        (
            "trainer_image/repair/last_layer.py",
            "from trainer_image.repair.arachne_de import DEFitness",
            "Repair methods are independent",
        ),
    ],
)
def test_an_offending_import_is_reported(
    copy: Path, module: str, offence: str, contract: str
) -> None:
    path = copy / module
    original = path.read_text()
    path.write_text(original + f"\n{offence}  # added by the test\n")
    try:
        done = lint(copy)
    finally:
        path.write_text(original)
    assert done.returncode != 0, done.stdout
    # The report lists each broken contract by name, then the offending import chain.
    _, sep, broken = done.stdout.partition("Broken contracts")
    assert sep, done.stdout
    assert contract in " ".join(broken.split()), done.stdout
    assert module.removesuffix(".py").replace("/", ".") in broken
