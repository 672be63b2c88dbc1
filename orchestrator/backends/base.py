"""One Backend protocol for every place a sweep can run (TorchX-style).

``local`` runs the trainer as processes on this machine; ``kubernetes`` renders an Indexed
Job. Both take the same ``SweepSpec`` and report the same ``RunStatus`` rows, so the CLI
renders them the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from orchestrator.spec import SweepSpec


class RunState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


@dataclass
class RunStatus:
    index: int
    run: str
    state: RunState
    restarts: int = 0
    node: str | None = None
    message: str = ""
    progress: dict[str, Any] = field(default_factory=dict)


@dataclass
class SubmitResult:
    sweep: str
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    dry_run: bool = False


class Backend(Protocol):
    """What the CLI asks of every backend; ``orchestrator.backends.open_backend`` makes one."""

    def submit(self, spec: SweepSpec, *, dry_run: bool = False) -> SubmitResult:
        """Start (or resume) the sweep; idempotent for the same spec."""
        ...

    def status(self, sweep: str) -> list[RunStatus]:
        """One row per run, in run order."""
        ...

    def watch(self, sweep: str) -> Iterator[list[RunStatus]]:
        """``status`` again whenever it changes, until every run has ended."""
        ...

    def logs(self, sweep: str, run: str | None = None, *, follow: bool = False) -> Iterator[str]:
        """A run's log lines (every run's, prefixed, when ``run`` is None)."""
        ...

    def cancel(self, sweep: str) -> list[str]:
        """Stop the sweep, keep its results; what was stopped or deleted."""
        ...
