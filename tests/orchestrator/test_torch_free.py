"""The control plane never imports torch: ``early-repair --help`` stays fast and light.
Checked in fresh interpreters, since this test process has torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "torchvision", "sklearn", "pandas", "matplotlib", "boto3", "kubernetes")

PROBE = """
import json, sys
from orchestrator.cli import app, main
import orchestrator.backends.local, orchestrator.results, orchestrator.spec, orchestrator.store
import orchestrator.catalog, orchestrator.results.events
commands = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
for argv in (["--help"], *([c, "--help"] for c in commands)):
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 0, (argv, e.code)
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps({"commands": commands, "heavy": heavy}))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def test_cli_and_every_command_help_import_no_heavy_module(repo: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=repo,
        env=_env(),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"run", "trainer", "schema"} <= set(report["commands"])
    assert report["heavy"] == []


def test_console_script_help_does_not_import_torch(repo: Path) -> None:
    exe = shutil.which("early-repair", path=str(Path(sys.executable).parent))
    assert exe, "the early-repair console script is not installed in this environment"
    # -X importtime lists every module the interpreter imports, on stderr.
    r = subprocess.run(
        [exe, "--help"],
        capture_output=True,
        text=True,
        cwd=repo,
        env={**_env(), "PYTHONPROFILEIMPORTTIME": "1"},
        timeout=120,
    )
    assert r.returncode == 0 and "Usage" in r.stdout
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in r.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "typer" in imported  # the probe sees imports at all
    assert not imported & {"torch", "torchvision", "sklearn", "pandas"}
