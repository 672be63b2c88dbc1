"""What ``run`` will do for a sweep on this machine, before any process starts.

``LocalBackend.plan(spec)`` returns a ``LocalPlan``: the sweep, where its results go, and
its runs - each one a trainer process, ``early-repair trainer --sweep FILE --run-index N``,
exactly what a pod of the Kubernetes Job runs. ``submit(plan)`` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from orchestrator.spec import SweepSpec


@dataclass(frozen=True)
class LocalPlan:
    """The runs of one sweep as processes here."""

    spec: SweepSpec

    @property
    def where(self) -> str:
        return "local"

    def render(self) -> str:
        """The sweep's runs, one trainer process each, as YAML."""
        return yaml.safe_dump(self.details(), sort_keys=False)

    def summary(self) -> str:
        n = len(self.spec.runs())
        return f"{n} trainer process(es) for sweep {self.spec.name} into {self.spec.results}"

    def details(self) -> dict[str, Any]:
        return {
            "sweep": self.spec.name,
            "results": self.spec.results,
            "runs": [
                {"index": r.index, "name": r.name, "command": f"trainer --run-index {r.index}"}
                for r in self.spec.runs()
            ],
        }

    def __str__(self) -> str:
        return self.render()
