"""The records of local sweeps on this machine: one folder per (sweep, results location).

``<state dir>/<sweep>/<16 hex of the results URI>/`` holds ``state.json``, the sweep file
the trainers read and their logs, so that ``cancel``, ``status`` and ``logs`` work from
another shell. The state dir is ``$EARLY_REPAIR_STATE_DIR``, else
``$XDG_CACHE_HOME/early-repair/local`` (``~/.cache/...``), so the same sweep name in two
results folders never shares a record. Sweep names are checked (DNS labels, as in a spec)
before they become paths; a record of another version, or a damaged one, is not ours to
act on.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from orchestrator.backends.local.processes import _ours
from orchestrator.backends.local.state_file import read_state
from orchestrator.errors import BadInput
from orchestrator.spec import check_sweep_name
from orchestrator.store import open_store

STATE_VERSION = 2
STATE_DIR_ENV = "EARLY_REPAIR_STATE_DIR"
STATE_FILE = "state.json"
SPEC_FILE = "sweep.json"
LOCK_FILE = "run.lock"
KEY_CHARS = 16


def state_dir() -> Path:
    """Where local sweeps keep their records and per-run logs: ``$EARLY_REPAIR_STATE_DIR``,
    else per user (not per project) in the XDG cache folder."""
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "early-repair" / "local"


def results_key(results: str) -> str:
    """The record folder's name for a results location (its canonical URI)."""
    return hashlib.sha256(results.encode()).hexdigest()[:KEY_CHARS]


def canonical_results(uri: str, source: str = "--results") -> str:
    """The URI a store reports for ``uri``: an absolute path, or s3://bucket/prefix."""
    try:
        return open_store(uri).uri
    except BadInput as e:
        raise BadInput(f"{source}: {e}") from e


class Records:
    """Finds and reads the records of sweeps run on this machine (under ``state_root``);
    ``results`` (a canonical URI), when given, picks the record of that location."""

    def __init__(self, state_root: Path, results: str | None) -> None:
        self.state_root = state_root
        self.results = results

    def record_dir(self, sweep: str, results: str) -> Path:
        """The record of ``sweep`` run into ``results`` (a store's canonical URI)."""
        return self.state_root / check_sweep_name(sweep) / results_key(results)

    def state_file(self, sweep: str, results: str) -> Path:
        return self.record_dir(sweep, results) / STATE_FILE

    def log_dir(self, sweep: str, results: str) -> Path:
        return self.record_dir(sweep, results)

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        # Another version's record is not ours to act on (None); a damaged one is BadInput.
        return read_state(path, STATE_VERSION)

    def read_state(self, sweep: str, results: str) -> dict[str, Any] | None:
        return self._read(self.state_file(sweep, results))

    def records(self, sweep: str) -> list[dict[str, Any]]:
        """Every record of ``sweep`` on this machine (one per results location)."""
        folder = self.state_root / check_sweep_name(sweep)
        found = []
        for path in sorted(folder.glob(f"*/{STATE_FILE}")):
            state = self._read(path)
            if (
                state
                and state.get("sweep") == sweep
                and isinstance(state.get("results"), str)
                and path.parent.name == results_key(state["results"])
            ):
                found.append(state)
        return sorted(found, key=lambda st: st["results"])

    def _candidates(self, sweep: str) -> list[dict[str, Any]]:
        if self.results is None:
            return self.records(sweep)
        state = self.read_state(sweep, self.results)
        return [state] if state and state.get("results") == self.results else []

    @staticmethod
    def _one(sweep: str, found: list[dict[str, Any]]) -> dict[str, Any] | None:
        if len(found) > 1:
            shown = ", ".join(s["results"] for s in found[:3]) + (", ..." if len(found) > 3 else "")
            raise BadInput(
                f"sweep {sweep!r} was run on this machine into {len(found)} results locations"
                f" ({shown}): pass --results URI to pick one"
            )
        return found[0] if found else None

    def find_state(self, sweep: str) -> dict[str, Any] | None:
        """The one record ``sweep`` (and ``results``, if given) names, None if there is
        none; BadInput when several results locations hold that sweep and none is picked."""
        return self._one(sweep, self._candidates(sweep))

    def live_state(self, sweep: str, results: str) -> dict[str, Any] | None:
        """The record of a sweep whose ``run`` process is still alive, else None."""
        state = self.read_state(sweep, results)
        return state if state and _ours(state) else None
