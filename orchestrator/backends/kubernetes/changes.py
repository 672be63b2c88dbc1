"""What ``submit`` must change on the cluster, decided before any write (TorchX's dry run).

``plan_changes`` is pure: from the objects a sweep renders to and the objects of that sweep
found in the namespace, it decides which to create, which already stand as they should,
and which belong to another spec of the same sweep (to delete with ``--replace``, else an
error). The backend lists, calls this, then applies the result; so deciding and doing
stay apart and the decision is tested on plain dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.backends.kubernetes.manifests import SPEC_HASH_ANNOTATION
from orchestrator.errors import BadInput


def kind_of(obj: dict[str, Any]) -> str:
    return str(obj["kind"]).lower()


def name_of(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name"))


def hash_of(obj: dict[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)


def ref(obj: dict[str, Any]) -> str:
    return f"{kind_of(obj)}/{name_of(obj)}"


@dataclass
class Changes:
    """Objects to delete (jobs before configmaps), to create, and those already in place
    (as found on the cluster, so they carry their uid)."""

    delete: list[dict[str, Any]] = field(default_factory=list)
    create: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[dict[str, Any]] = field(default_factory=list)


def plan_changes(
    desired: list[dict[str, Any]],
    found: list[dict[str, Any]],
    *,
    digest: str,
    sweep: str,
    namespace: str,
    replace: bool = False,
) -> Changes:
    """Decide the changes that make ``found`` (the sweep's objects) equal ``desired``.

    An object counts as in place when its kind and name match a desired one and it carries
    the same spec hash; any other object of the sweep is stale: deleted with ``replace``,
    otherwise a ``BadInput`` that names it.
    """
    wanted = {(kind_of(o), name_of(o)) for o in desired}
    current = [o for o in found if (kind_of(o), name_of(o)) in wanted and hash_of(o) == digest]
    stale = [o for o in found if o not in current]
    if stale and not replace:
        obj = stale[0]
        raise BadInput(
            f"sweep {sweep!r} already runs in namespace {namespace!r} with another spec"
            f" ({ref(obj)}, spec hash {(hash_of(obj) or '?')[:8]} vs {digest[:8]}): pass"
            " --replace to delete it and submit this one, or rename the sweep"
        )
    in_place = {(kind_of(o), name_of(o)) for o in current}
    return Changes(
        delete=sorted(stale, key=lambda o: kind_of(o) == "configmap"),  # jobs first
        create=[o for o in desired if (kind_of(o), name_of(o)) not in in_place],
        unchanged=current,
    )
