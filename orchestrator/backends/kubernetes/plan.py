"""What ``submit`` will create for a sweep, decided and printable before anything is sent.

``KubernetesBackend.plan(spec)`` returns a ``KubernetesPlan`` (TorchX's dry-run info): the
sweep with the backend's namespace applied, and its ConfigMap and Job exactly as they will
be created, rendered on first use - ``render()`` is the multi-document YAML ``plan --out``
writes and ``kubectl apply -f`` takes. ``submit(plan)`` then creates those objects.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from orchestrator.backends.kubernetes.manifests import (
    check_configmap_size,
    object_name,
    render_sweep,
    to_yaml,
)
from orchestrator.spec import SweepSpec


@dataclass(frozen=True)
class KubernetesPlan:
    """The objects of one sweep in one namespace (``spec.kubernetes.namespace``)."""

    spec: SweepSpec

    def __post_init__(self) -> None:
        # What submit could not create is no plan either: refused here, rendered or not.
        check_configmap_size(self.spec)

    @property
    def where(self) -> str:
        """The namespace the objects go to."""
        return self.spec.kubernetes.namespace

    @property
    def name(self) -> str:
        """The ConfigMap's and the Job's name: ``<sweep>-<8 hex of the spec hash>``."""
        return object_name(self.spec)

    @functools.cached_property
    def objects(self) -> list[dict[str, Any]]:
        """``[ConfigMap, Job]``; BadInput when the sweep cannot run as a Job."""
        return render_sweep(self.spec)

    def render(self) -> str:
        """The objects as multi-document YAML, for a file or ``kubectl apply -f -``."""
        return to_yaml(self.objects)

    def summary(self) -> str:
        """One line saying what ``render()`` holds."""
        return f"{len(self.objects)} objects ({self.name})"

    def details(self) -> dict[str, Any]:
        """The plan's own fields for ``-o json``/``yaml``: namespace and objects."""
        return {
            "namespace": self.where,
            "objects": [f"{o['kind'].lower()}/{o['metadata']['name']}" for o in self.objects],
        }

    def __str__(self) -> str:
        return self.render()
