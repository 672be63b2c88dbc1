"""The shared test helpers are one package, ``early_repair_testing``, alone on the path.

pytest puts ``tests/support`` on ``sys.path`` (pyproject's ``pythonpath``) and subprocesses
get it on ``PYTHONPATH``; whatever that folder holds becomes a top-level import. These
tests check that it holds the package and nothing else, that the product packages still
resolve to the product with it on the path (``tests/orchestrator`` and
``tests/trainer_image`` would shadow them as namespace packages if ``tests/`` itself were
put there), and that no installed distribution provides a module of the same name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import early_repair_testing
from early_repair_testing.paths import REPO, TESTS

SUPPORT = TESTS / "support"
NAME = "early_repair_testing"


def test_the_support_folder_holds_only_the_package() -> None:
    assert [p.name for p in SUPPORT.iterdir() if p.name != "__pycache__"] == [NAME]
    assert (SUPPORT / NAME / "__init__.py").is_file()
    pytest_options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]
    assert pytest_options["ini_options"]["pythonpath"] == ["tests/support"]


def test_with_the_support_folder_on_the_path_the_product_is_the_product(tmp_path: Path) -> None:
    # From a folder outside the checkout, so the working directory cannot stand in for it.
    probe = (
        "import json, orchestrator, trainer_image, early_repair_testing as t;"
        " print(json.dumps([orchestrator.__file__, trainer_image.__file__, t.__file__]))"
    )
    env = {**os.environ, "PYTHONPATH": str(SUPPORT)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found == [
        str(REPO / "orchestrator" / "__init__.py"),
        str(REPO / "trainer_image" / "__init__.py"),
        str(SUPPORT / NAME / "__init__.py"),
    ]


def test_no_installed_distribution_provides_the_name() -> None:
    assert NAME not in metadata.packages_distributions()
    assert early_repair_testing.__file__ == str(SUPPORT / NAME / "__init__.py")
