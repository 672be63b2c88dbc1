"""The README and the presets' own comments state the same measured setup figures, so a
new measurement cannot update one and leave the other saying something else."""

from __future__ import annotations

import re

import pytest
from early_repair_testing.paths import REPO

PRESETS = ("quickstart", "quickstart-online", "quickstart-mnist")


def comment(name: str) -> str:
    lines = (REPO / "settings" / f"{name}.yaml").read_text().splitlines()
    return " ".join(line.lstrip("# ") for line in lines if line.startswith("#"))


@pytest.mark.parametrize("name", PRESETS)
def test_readme_table_and_preset_comment_agree(name: str) -> None:
    said = re.search(r"Measured: (\d+) CPU-seconds in all, (.+?) wall", comment(name))
    assert said, f"settings/{name}.yaml: no 'Measured: N CPU-seconds in all, T wall' comment"
    readme = (REPO / "README.md").read_text()
    row = re.search(
        rf"^\| `settings/{name}\.yaml` \| (\d+) CPU-seconds \| ([^|]+) \|$", readme, re.M
    )
    assert row, f"README.md: no row for settings/{name}.yaml in the presets' timing table"
    assert (row.group(1), row.group(2).strip()) == said.groups()
