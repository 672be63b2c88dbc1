"""Paths of the repository that tests read (presets, charts, golden files)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]  # tests/support/early_repair_testing/paths.py
TESTS = REPO / "tests"
GOLDEN = TESTS / "golden"
QUICKSTART = REPO / "settings" / "quickstart.yaml"
