"""Arachne-DE's config: differential evolution over Arachne's localised weights."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from orchestrator.spec.fields import Float, Int
from orchestrator.spec.repair.common import _method_required
from orchestrator.spec.repair.last_layer import _LastLayerCommon


class ArachneDERepairSpec(_LastLayerCommon):
    """Arachne as in its TOSEM 2023 version: differential evolution over the same weights."""

    model_config = ConfigDict(json_schema_extra=_method_required)

    method: Literal["arachne-de"] = Field(
        "arachne-de", description="Arachne with differential evolution (TOSEM 2023)."
    )
    population: Int = Field(
        100, ge=4, description="Candidates per generation (TOSEM 100); DE/rand/1 needs >= 4."
    )
    generations: Int = Field(100, gt=0, description="At most this many generations (TOSEM 100).")
    patience: Int = Field(
        10, gt=0, description="Stop after this many generations without a better best."
    )
    mutation: tuple[Float, Float] = Field(
        (0.5, 1.0),
        description="The scale factor F is drawn from U(low, high) once per generation.",
    )
    recombination: Float = Field(
        0.7, ge=0, le=1, description="Binomial crossover rate (one dimension always crosses)."
    )
    patch_aggr: Float = Field(
        10.0,
        gt=0,
        description="Weight of the negatives in the fitness N_intact' + patch_aggr x N_patched'.",
    )
    update: Literal["batched", "asynchronous"] = Field(
        "batched",
        description="batched: the whole generation is built from the previous one and scored"
        " at once (classic synchronous DE, fast). asynchronous: TOSEM's order, each trial"
        " replaces its target at once and later trials of the generation see it (exact;"
        " about 2-3x the time on small layers).",
    )

    @field_validator("mutation")
    @classmethod
    def _mutation_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got [{low}, {high}]")
        return value
