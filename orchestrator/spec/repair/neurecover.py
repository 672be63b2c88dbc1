"""NeuRecover's config: weights localised from the training history, searched by PSO."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ByteSize, ConfigDict, Field

from orchestrator.spec.fields import Float
from orchestrator.spec.repair.common import _method_required, _RepairCommon
from orchestrator.spec.repair.last_layer import _ARACHNE, _LastLayerCommon


class NeurecoverRepairSpec(_RepairCommon):
    """NeuRecover: weights localised from the training history, searched by Arachne's PSO."""

    model_config = ConfigDict(json_schema_extra=_method_required)
    # The trainer keeps the initial weights and hands the method the training history.
    uses_history: ClassVar[bool] = True

    method: Literal["neurecover"] = Field(
        "neurecover",
        description="NeuRecover (SANER 2022): repair localised by the training history.",
    )
    compare_with: Literal["previous", "first", "initial"] = Field(
        "previous",
        description="The earlier weights it compares with: previous (the latest kept"
        " checkpoint before this one), first (the first kept checkpoint) or initial (the"
        " weights before training). At the first checkpoint: the initial weights, which the"
        " trainer keeps (checkpoints/epoch_000.pt) whenever a run repairs with neurecover.",
    )
    top_fraction: Float = Field(
        0.25,
        gt=0,
        le=1,
        description="Size k of each top-k list (gradient, forward impact, training change)"
        " as a fraction of the final layer's weights.",
    )
    alpha: Float = Field(
        1.0, ge=0, description="Weight of the positives' term in the fitness (regressions)."
    )
    n_positives: int = _ARACHNE["n_positives"]
    positives: Literal["uniform", "with-replacement-dedup", "balanced"] = (
        _LastLayerCommon.model_fields["positives"]
    )
    particles: int = _ARACHNE["particles"]
    iterations: int = _ARACHNE["iterations"]
    patience: int = _ARACHNE["patience"]
    phi: float = _ARACHNE["phi"]
    variant: Literal["v1", "textbook"] = _ARACHNE["variant"]
    update_order: Literal["velocity-first", "position-first"] = _ARACHNE["update_order"]
    stagnation_start: int = _ARACHNE["stagnation_start"]
    max_batch_bytes: ByteSize = _ARACHNE["max_batch_bytes"]
