"""atomic_write and replace_durably: whole files or none, file and folder fsynced."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.common.atomic import atomic_write, replace_durably


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What was fsynced, in order: 'file' or 'folder' (the real fsync still runs)."""
    seen: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append("folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_bytes_text_and_a_writer_land_whole(tmp_path: Path, fsyncs: list[str]) -> None:
    target = tmp_path / "deep" / "er" / "state.json"
    atomic_write(target, b"one")
    assert target.read_bytes() == b"one"
    atomic_write(target, "twö")
    assert target.read_text(encoding="utf-8") == "twö"
    atomic_write(target, lambda f: f.write(b"three"))
    assert target.read_bytes() == b"three"
    # Each write: the data, then the folder that holds the new name.
    assert fsyncs == ["file", "folder"] * 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"old")

    def half(f: Any) -> None:
        f.write(b"half of the ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, half)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_replace_durably_moves_a_finished_file_over_the_old(
    tmp_path: Path, fsyncs: list[str]
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.md").write_text("old")
    staged = tmp_path / "staging.md"
    staged.write_text("new")
    replace_durably(staged, tmp_path / "out" / "report.md")
    assert (tmp_path / "out" / "report.md").read_text() == "new"
    assert not staged.exists()
    assert fsyncs == ["file", "folder"]
