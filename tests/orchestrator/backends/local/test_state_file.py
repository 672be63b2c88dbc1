"""A damaged or hostile local ``state.json`` is one line saying it is damaged: never a
traceback, a hang on a FIFO, a read of /dev/zero, or "was not run on this machine"."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

SWEEP = "dmg"


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EARLY_REPAIR_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def _write(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _dev_zero(p: Path) -> None:
    p.symlink_to("/dev/zero")


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_write(b'{"version": 1, "sweep": "dmg", "resu'), "not valid JSON"),
    "deeply-nested": (_write(b"[" * 200_000 + b"]" * 200_000), "nested too deeply"),
    "not-an-object": (_write(b"[1, 2, 3]"), "not a JSON object"),
    "binary": (_write(bytes(range(256)) * 4), "not valid JSON"),
    "huge": (_write(b'{"pad": "' + b"x" * (2 << 20) + b'"}'), "limit"),
    "fifo": (_fifo, "FIFO"),
    "dev-zero": (_dev_zero, "device"),
    "a-folder": (lambda p: p.mkdir(), "folder"),
}


@pytest.mark.parametrize("command", ["status", "logs", "cancel"])
@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_state_is_one_line_that_says_so(
    cli, state_dir: Path, name: str, command: str
) -> None:
    folder = state_dir / SWEEP / "some-results"
    folder.mkdir(parents=True)
    make, says = DAMAGE[name]
    make(folder / "state.json")
    r = cli(command, SWEEP, "--local")
    assert r.code == 2, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert "damaged" in lines[0] and says in lines[0] and "state.json" in lines[0]
    assert "Traceback" not in r.err and r.out == ""


def test_another_versions_state_is_not_ours_and_not_damage(cli, state_dir: Path) -> None:
    folder = state_dir / SWEEP / "some-results"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"version": 999, "sweep": SWEEP}))
    r = cli("status", SWEEP, "--local")
    assert r.code == 2 and "was not run on this machine" in r.err
