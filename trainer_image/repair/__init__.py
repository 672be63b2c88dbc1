"""Repair methods that change a trained model's final layer, found by name.

``method_for`` is the one way the trainer gets a method: a catalog name (``arachne``) or
the import path of a user's own ``RepairMethod`` (``mypkg.repair:nudge``). A built-in
method is a module here, one line in ``orchestrator.catalog.REPAIR_METHODS`` and one
config class in ``orchestrator.spec.RepairConfig``.
"""

from __future__ import annotations

from orchestrator import catalog
from orchestrator.errors import BadInput
from trainer_image.repair.base import RepairMethod


def method_for(name: str) -> RepairMethod:
    """The ``RepairMethod`` a spec's ``repair.method`` names (imported on first use)."""
    method = catalog.resolve(catalog.repair_method(name))
    if not callable(method):
        raise BadInput(f"repair method {name!r} is a {type(method).__name__}, not a function")
    return method
