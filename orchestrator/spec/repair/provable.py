"""The provable repair's config: the least change of the final layer as a linear program."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from orchestrator.spec.fields import Bool, Float
from orchestrator.spec.repair.common import _method_required, _RepairCommon
from orchestrator.spec.repair.last_layer import _ARACHNE, _LastLayerCommon


class ProvableRepairSpec(_RepairCommon):
    """The least change of the final layer's weights meeting every repair constraint, as a
    linear program (HiGHS)."""

    model_config = ConfigDict(json_schema_extra=_method_required)

    method: Literal["provable"] = Field(
        "provable",
        description="Provable last-layer repair: the least weight change (a linear program)"
        " classifying every negative right and keeping every sampled positive, by a margin.",
    )
    norm: Literal["l1", "linf"] = Field(
        "l1", description="The change minimised: l1 (sum of |dw|) or linf (max |dw|)."
    )
    margin: Float = Field(
        0.1, gt=0, description="Each constraint's margin in logits (z_class - z_other >= it)."
    )
    keep_positives: Bool = Field(
        True, description="Constrain the sampled positives to keep their labels too."
    )
    rows: Literal["target", "all"] = Field(
        "target",
        description="Weights that may change: target (the repaired class's row only: one"
        " constraint per input, well under a second on a GTSRB-sized head) or all (every"
        " class's row: the least change of the whole layer, constraints against every class;"
        " a minute or more on a GTSRB-sized head, see bench_methods.py).",
    )
    time_limit: Float = Field(
        60.0,
        gt=0,
        description="Seconds the solver may take; past it (or when infeasible) the patch"
        " minimises the total violation and the record says certified: false.",
    )
    n_positives: int = _ARACHNE["n_positives"]
    positives: Literal["uniform", "with-replacement-dedup", "balanced"] = (
        _LastLayerCommon.model_fields["positives"]
    )
