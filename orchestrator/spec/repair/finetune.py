"""Fine-tuning's config: gradient descent on the final layer, the baseline."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from orchestrator.spec.fields import Float, Int
from orchestrator.spec.repair.common import _method_required
from orchestrator.spec.repair.last_layer import _LastLayerCommon


class FinetuneRepairSpec(_LastLayerCommon):
    """Baseline: gradient descent on the final Linear layer only, near its original weights."""

    model_config = ConfigDict(json_schema_extra=_method_required)

    method: Literal["finetune"] = Field(
        "finetune", description="Fine-tune the final layer on the negatives and positives."
    )
    steps: Int = Field(100, gt=0, description="Full-batch gradient-descent steps.")
    lr: Float = Field(
        1.0,
        gt=0,
        description="Step size in units of 1/L, L a bound on the loss's curvature that"
        " scales with the squared feature norm; below 2 every step lowers the loss.",
    )
    neg_weight: Float = Field(
        1.0, ge=0, description="Weight of the negatives' mean cross-entropy in the loss."
    )
    pos_weight: Float = Field(
        1.0, ge=0, description="Weight of the sampled positives' mean cross-entropy."
    )
    l2: Float = Field(
        0.01, ge=0, description="Penalty l2 x sum (w - w_original)^2 toward the original layer."
    )
    weights: Literal["all", "localised"] = Field(
        "all",
        description="all: every weight of the final layer moves. localised: only those"
        " Arachne's fault localisation picks (grad_factor), the others stay fixed.",
    )
