"""The config of a repair method of the user's own, named by import path."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from orchestrator.spec.fields import PlainDict
from orchestrator.spec.repair.common import IMPORTED, _RepairCommon


class ImportedRepairSpec(_RepairCommon):
    """A repair method of your own, by import path; it validates its own `options`."""

    TAG: ClassVar[str | None] = IMPORTED  # its `method` is the path, not a fixed name

    method: str = Field(
        pattern=r"^[\w.]+:[\w.]+$",
        description="Import path 'package.module:function' of a RepairMethod"
        " (trainer_image.repair.base).",
    )
    options: PlainDict = Field(
        default_factory=dict, description="Keyword settings passed to the method as `cfg.options`."
    )
