"""Config blocks of the repair methods beyond Arachne's PSO: defaults are the
published ones, the shared fields are ArachneSpec's own, bad fields are refused by name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.spec import (
    ArachneDERepairSpec,
    ArachneSpec,
    FinetuneRepairSpec,
    describe_error,
)

SHARED = ("classes", "seed", "n_positives", "grad_factor", "max_batch_bytes")
METHODS = (ArachneDERepairSpec, FinetuneRepairSpec)


def test_de_defaults_are_tosems() -> None:
    de = ArachneDERepairSpec()
    assert de.method == "arachne-de"
    assert (de.population, de.generations, de.patience) == (100, 100, 10)
    assert de.mutation == (0.5, 1.0) and de.recombination == 0.7 and de.patch_aggr == 10.0
    assert de.update == "batched"  # for speed; "asynchronous" is TOSEM's order


def test_finetune_defaults() -> None:
    ft = FinetuneRepairSpec()
    assert ft.method == "finetune" and ft.weights == "all"
    assert (ft.steps, ft.lr, ft.neg_weight, ft.pos_weight, ft.l2) == (100, 1.0, 1.0, 1.0, 0.01)


@pytest.mark.parametrize("kind", METHODS)
def test_shared_fields_are_repair_specs_own(kind) -> None:
    mine, arachne = kind.model_fields, ArachneSpec.model_fields
    for name in SHARED:
        assert mine[name].description == arachne[name].description
        assert mine[name].metadata == arachne[name].metadata
        assert getattr(kind(), name) == getattr(ArachneSpec(), name)
    # The same validation: n_positives must be > 0 in every method.
    with pytest.raises(ValidationError):
        kind(n_positives=0)
    # The same ways to draw positives, the same default, and kept in dumps (no legacy key).
    assert kind().positives == ArachneSpec().positives == "uniform"
    for how in ("uniform", "with-replacement-dedup", "balanced"):
        ArachneSpec(positives=how)
        block = kind(positives=how)
        assert kind.model_validate(block.model_dump()).positives == how
    with pytest.raises(ValidationError):
        kind(positives="stratified")


@pytest.mark.parametrize("kind", METHODS)
def test_every_field_is_described_and_the_block_is_strict(kind) -> None:
    schema = kind.model_json_schema()
    assert all(p.get("description") for p in schema["properties"].values()), kind
    with pytest.raises(ValidationError, match="Extra inputs"):
        kind(particles=10)  # a PSO field: not this method's
    block = kind()
    with pytest.raises(ValidationError, match="frozen"):
        block.seed = 3  # frozen, like every spec block


@pytest.mark.parametrize(
    ("kind", "field", "value", "words"),
    [
        (ArachneDERepairSpec, "mutation", (1.0, 0.5), "mutation: need 0 < low <= high"),
        (ArachneDERepairSpec, "mutation", (0.0, 0.5), "mutation: need 0 < low <= high"),
        (ArachneDERepairSpec, "population", 3, "population: Input should be greater"),
        (ArachneDERepairSpec, "recombination", 1.5, "recombination: Input should be less"),
        (ArachneDERepairSpec, "update", "parallel", "update: Input should be 'batched'"),
        (FinetuneRepairSpec, "weights", "some", "weights: Input should be 'all'"),
        (FinetuneRepairSpec, "lr", 0, "lr: Input should be greater"),
        (FinetuneRepairSpec, "method", "arachne", "method: Input should be 'finetune'"),
    ],
)
def test_bad_fields_are_named_in_one_line(kind, field: str, value, words: str) -> None:
    with pytest.raises(ValidationError) as e:
        kind(**{field: value})
    line = describe_error(e.value, "spec.yaml")
    assert line.startswith(f"spec.yaml: {words}") and "\n" not in line
