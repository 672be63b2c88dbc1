"""Arachne's config: the paper's search over the last layer, and the released code's ways."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ByteSize, Field, model_validator

from orchestrator.spec.fields import Bool, Bytes, Float, Int, _added
from orchestrator.spec.repair.common import _RepairCommon


class ArachneSpec(_RepairCommon):
    """Arachne as the paper describes it (docs/science.md); `variant` and the released-code
    block below expose the deviations of the released code."""

    method: Literal["arachne"] = Field(
        "arachne", description="arachne (the default): the paper's search over the last layer."
    )
    particles: Int = Field(100, gt=0, description="Swarm size: candidates per PSO iteration.")
    iterations: Int = Field(50, gt=0, description="Paper 50; released code default 100.")
    patience: Int = Field(10, gt=0, description="Stop after this many iterations w/o gain.")
    phi: Float = Field(
        4.1,
        gt=4,
        description="PSO constant (> 4): r1, r2 ~ U(0, phi), constriction"
        " chi = 2 / (phi - 2 + sqrt(phi^2 - 4 phi)).",
    )
    variant: Literal["v1", "textbook"] = Field(
        "v1",
        description="v1: one r1, r2 per particle and step, |v| clamped to [wb/5, 5wb]"
        " (paper's code). textbook: per-dimension r, |v| <= 5wb, no minimum speed.",
    )
    n_positives: Int = Field(200, gt=0, description="Positives sampled for the fitness.")
    dedup_positives: Bool = Field(
        False,
        json_schema_extra={"deprecated": True},
        description="Legacy spelling of `positives` (true = with-replacement-dedup), kept equal"
        " to it and written so that stored specs and their hashes stay those of the first"
        " release; set `positives` instead.",
    )
    grad_factor: Int = Field(20, gt=0, description="N_g = grad_factor x |negatives|.")
    max_batch_bytes: Bytes = Field(
        ByteSize(256 * 2**20), description="Memory bound for one batch of particle scores."
    )
    # --- Arachne as the released code ran it (docs/science.md, "Released code") ----------
    # `positives` replaces the boolean `dedup_positives`, which is still read and still
    # written (derived from `positives`, see `_legacy_dedup`), so stored specs keep their
    # bytes.
    positives: Literal["uniform", "with-replacement-dedup", "balanced"] = Field(
        "uniform",
        # Only "balanced" needs its own key: the other two are what `dedup_positives` says.
        exclude_if=lambda value: value != "balanced",
        description="How the fitness's positives are drawn. uniform: n_positives of them"
        " without replacement (all when fewer). with-replacement-dedup: n_positives draws with"
        " replacement, repeats and identical inputs removed (the Arachne code the paper built"
        " on; legacy `dedup_positives: true`). balanced: the released code - 2/3 of"
        " n_positives split equally across labels, 1/3 in proportion to label counts, each"
        " label capped at twice its count, the shortfall given to one random uncapped label,"
        " then duplicates removed (so fewer than n_positives may be used).",
    )
    update_order: Literal["velocity-first", "position-first"] = _added(
        "velocity-first",
        description="velocity-first: v <- chi (v + r1 (p - x) + r2 (g - x)), then x <- x + v"
        " (the paper's equations). position-first: the released code - x <- x + v with the"
        " old velocity, then the velocity update from the new x, so its first iteration"
        " re-scores the initial swarm.",
    )
    stagnation_start: Int = _added(
        1,
        ge=1,
        description="First iteration at which the early stop (patience iterations without a"
        " better global best) is checked. The released code checked from iteration 12.",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_dedup(cls, data: Any) -> Any:
        # Specs and stored run.json files from before `positives` say dedup_positives; the
        # two always agree afterwards (dedup_positives is derived from positives).
        if not isinstance(data, dict):
            return data
        data = dict(data)
        dedup = data.pop("dedup_positives", None)
        if dedup is not None:
            if not isinstance(dedup, bool):
                raise ValueError("dedup_positives: must be true or false (better: use positives)")
            implied = "with-replacement-dedup" if dedup else "uniform"
            given = data.setdefault("positives", implied)
            if (given == "with-replacement-dedup") != dedup:
                raise ValueError(
                    f"dedup_positives: {str(dedup).lower()} contradicts positives: {given!r};"
                    " keep positives only"
                )
        data["dedup_positives"] = data.get("positives") == "with-replacement-dedup"
        return data
