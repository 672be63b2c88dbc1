"""One Backend protocol for every place a sweep can run (TorchX-style).

``local`` runs the trainer as processes on this machine; ``kubernetes`` renders an Indexed
Job. Both take the same ``SweepSpec``: ``plan(spec)`` decides what would be done and
returns it as a printable ``Plan`` (TorchX's ``submit_dryrun``), ``submit(plan)`` does it
(``schedule``). Both report the same ``RunStatus`` rows and a ``CancelResult`` that says
what was stopped in the backend's own words, so the CLI renders every backend the same
way without knowing which one it talks to.
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


@dataclass
class CancelResult:
    """What ``cancel`` stopped, and how the CLI shows it (one line, a document, a table)."""

    sweep: str
    stopped: list[str]  # what was deleted or signalled: job/NAME, configmap/NAME, pid/N
    message: str  # one line for stderr
    document: dict[str, Any]  # for -o json / yaml
    title: str  # the table's title
    rows: list[list[str]]  # the table's (object, action) rows


class Plan(Protocol):
    """What ``submit`` will do for one sweep, decided before anything is done."""

    @property
    def spec(self) -> SweepSpec:
        """The sweep as it will run (the backend's options applied)."""
        ...

    @property
    def where(self) -> str:
        """Where it will run: ``local``, or the namespace on a cluster."""
        ...

    def render(self) -> str:
        """The plan as text (for a cluster: the objects' manifests as YAML)."""
        ...

    def summary(self) -> str:
        """One line saying what ``render()`` holds."""
        ...

    def details(self) -> dict[str, Any]:
        """The plan's own fields, for ``-o json``/``yaml``."""
        ...


class Backend(Protocol):
    """What the CLI asks of every backend; ``orchestrator.backends.open_backend`` makes one."""

    name: str
    # The CLI options this backend takes (``open_backend`` refuses the others).
    options: tuple[str, ...]

    @property
    def where(self) -> str:
        """Where this backend runs sweeps: ``local``, or the namespace on a cluster."""
        ...

    def plan(self, spec: SweepSpec) -> Plan:
        """Decide what ``submit`` will do for ``spec``, doing nothing yet."""
        ...

    def submit(self, plan: Plan, *, dry_run: bool = False, replace: bool = False) -> SubmitResult:
        """Start (or resume) the planned sweep; idempotent for the same spec. ``replace``
        (a cluster) first removes a running sweep of the same name but another spec."""
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

    def cancel(self, sweep: str) -> CancelResult:
        """Stop the sweep, keep its results; what was stopped or deleted."""
        ...
