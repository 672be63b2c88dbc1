"""The ``repair:`` block: one config class per repair method, as a discriminated union.

Each method's config lives in its own module (``arachne``, ``arachne_de``, ``finetune``,
``neurecover``, ``provable``, ``imported`` for import paths); ``common`` holds what they
share and turns a block that lists several ``methods`` into one config per method. A new
method adds its module and one member below (the catalog names its code).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Discriminator, Tag

from orchestrator.spec.repair.arachne import ArachneSpec
from orchestrator.spec.repair.arachne_de import ArachneDERepairSpec
from orchestrator.spec.repair.common import (
    IMPORTED,
    REPAIR_TAGS,
    _known_method,
    _repair_tag,
    member_class,
    method_configs,
    method_key,
)
from orchestrator.spec.repair.finetune import FinetuneRepairSpec
from orchestrator.spec.repair.imported import ImportedRepairSpec
from orchestrator.spec.repair.neurecover import NeurecoverRepairSpec
from orchestrator.spec.repair.provable import ProvableRepairSpec

# One member per method in the catalog (a new method adds its config class here), plus
# user methods by import path. Dumps are those of the member: arachne's equals the
# config of before there was a union, so spec hashes did not change.
RepairConfig = Annotated[
    Annotated[ArachneSpec, Tag("arachne")]
    | Annotated[ArachneDERepairSpec, Tag("arachne-de")]
    | Annotated[FinetuneRepairSpec, Tag("finetune")]
    | Annotated[NeurecoverRepairSpec, Tag("neurecover")]
    | Annotated[ProvableRepairSpec, Tag("provable")]
    | Annotated[ImportedRepairSpec, Tag(IMPORTED)],
    Discriminator(_repair_tag),
    # Names are checked against the catalog first, for an error that names the method.
    BeforeValidator(_known_method),
]
RepairMethodConfig = (
    ArachneSpec
    | ArachneDERepairSpec
    | FinetuneRepairSpec
    | NeurecoverRepairSpec
    | ProvableRepairSpec
    | ImportedRepairSpec
)

__all__ = [
    "IMPORTED",
    "REPAIR_TAGS",
    "ArachneDERepairSpec",
    "ArachneSpec",
    "FinetuneRepairSpec",
    "ImportedRepairSpec",
    "NeurecoverRepairSpec",
    "ProvableRepairSpec",
    "RepairConfig",
    "RepairMethodConfig",
    "member_class",
    "method_configs",
    "method_key",
]
