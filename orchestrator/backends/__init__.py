"""Backends run a sweep somewhere: ``local`` (processes) or ``kubernetes`` (Indexed Jobs).

One registry maps a backend's name to its class (TorchX's scheduler registry), so the CLI
asks for a backend by name and then talks to it through the ``Backend`` protocol alone:
``plan(spec)`` gives a printable plan, ``submit(plan)`` carries it out, and ``status``,
``watch``, ``logs`` and ``cancel`` follow the sweep. Classes load on first use: naming a
backend never imports another's client library. This package is all the CLI imports of
the backends (an import-linter contract): what else it needs is re-exported here.
"""

from __future__ import annotations

import importlib
from typing import Any

from orchestrator.backends.base import Backend, CancelResult, Plan, RunState, RunStatus
from orchestrator.backends.local.parent import die_with_parent
from orchestrator.backends.progress import describe
from orchestrator.errors import BadInput

__all__ = [
    "BACKENDS",
    "Backend",
    "CancelResult",
    "Plan",
    "RunState",
    "RunStatus",
    "describe",
    "die_with_parent",
    "open_backend",
]

BACKENDS: dict[str, str] = {
    "local": "orchestrator.backends.local.backend:LocalBackend",
    "kubernetes": "orchestrator.backends.kubernetes.backend:KubernetesBackend",
}


def open_backend(name: str, **options: Any) -> Backend:
    """The backend called ``name``, built from the CLI's options (None = not given).

    A given option the backend does not take is refused rather than silently ignored.
    """
    if name not in BACKENDS:
        raise BadInput(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    module, _, attr = BACKENDS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    given = {k: v for k, v in options.items() if v is not None}
    for option in given:
        if option not in cls.options:
            flag = "--" + option.replace("_", "-")
            raise BadInput(f"{flag} does not apply to the {name} backend; leave it out")
    return cls(**given)
