"""Config blocks of the repair methods beyond Arachne's PSO: defaults are the
published ones, the shared fields are ArachneSpec's own, bad fields are refused by name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.spec import (
    ArachneDERepairSpec,
    ArachneSpec,
    FinetuneRepairSpec,
    NeurecoverRepairSpec,
    ProvableRepairSpec,
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


def test_neurecover_and_provable_defaults() -> None:
    nr, pr = NeurecoverRepairSpec(), ProvableRepairSpec()
    assert nr.method == "neurecover" and nr.compare_with == "previous" and nr.uses_history
    assert (nr.top_fraction, nr.alpha, nr.particles, nr.iterations) == (0.25, 1.0, 100, 50)
    assert pr.method == "provable" and not getattr(pr, "uses_history", False)
    assert (pr.norm, pr.margin, pr.keep_positives, pr.rows) == ("l1", 0.1, True, "target")
    for kind in (NeurecoverRepairSpec, ProvableRepairSpec):
        schema = kind.model_json_schema()
        assert all(p.get("description") for p in schema["properties"].values()), kind


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
        (NeurecoverRepairSpec, "compare_with", "last", "compare_with: Input should be"),
        (NeurecoverRepairSpec, "top_fraction", 0, "top_fraction: Input should be greater"),
        (NeurecoverRepairSpec, "alpha", -1, "alpha: Input should be greater"),
        (NeurecoverRepairSpec, "particles", 0, "particles: Input should be greater"),
        (NeurecoverRepairSpec, "grad_factor", 3, "grad_factor: Extra inputs"),
        (ProvableRepairSpec, "norm", "l2", "norm: Input should be 'l1' or 'linf'"),
        (ProvableRepairSpec, "margin", 0, "margin: Input should be greater"),
        (ProvableRepairSpec, "time_limit", 0, "time_limit: Input should be greater"),
        (ProvableRepairSpec, "rows", "some", "rows: Input should be 'target' or 'all'"),
        (ProvableRepairSpec, "keep_positives", "yes", "keep_positives: Input should be"),
        (ProvableRepairSpec, "particles", 10, "particles: Extra inputs"),
    ],
)
def test_bad_fields_are_named_in_one_line(kind, field: str, value, words: str) -> None:
    with pytest.raises(ValidationError) as e:
        kind(**{field: value})
    line = describe_error(e.value, "spec.yaml")
    assert line.startswith(f"spec.yaml: {words}") and "\n" not in line
