"""What the methods over Arachne's last-layer problem share with Arachne's config."""

from __future__ import annotations

from typing import Literal

from pydantic import ByteSize, Field

from orchestrator.spec.repair.arachne import ArachneSpec
from orchestrator.spec.repair.common import _RepairCommon

# The fields they share with Arachne take Arachne's definition (default, bounds,
# description), so the methods cannot drift apart on them.
_ARACHNE = ArachneSpec.model_fields


class _LastLayerCommon(_RepairCommon):
    """What the methods over Arachne's problem share with it: the positives, the fault
    localisation and the memory bound of a batch of scores."""

    n_positives: int = _ARACHNE["n_positives"]  # Arachne's field: its Int type included
    positives: Literal["uniform", "with-replacement-dedup", "balanced"] = Field(
        "uniform",
        description="How the positives are drawn, as Arachne's `positives`: uniform,"
        " with-replacement-dedup or balanced. The same seed draws the same positives for"
        " every method.",
    )
    grad_factor: int = _ARACHNE["grad_factor"]
    max_batch_bytes: ByteSize = _ARACHNE["max_batch_bytes"]
