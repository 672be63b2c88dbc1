"""Spec fields of online repair, readiness and resume: off by default, so the
paper's procedure and checkpoint set are unchanged; every new field documented."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.catalog import READINESS_POLICIES
from orchestrator.errors import BadInput
from orchestrator.spec import (
    ReadinessSpec,
    TrainingSpec,
    json_schema,
    parse_spec,
)

OLD_HASH = "de25baf4cd6c283e71b8eac412d9698d9a29f7c16520fb3448ea6af8b6fdc6f1"
BASE: dict[str, Any] = {
    "name": "online",
    "datasets": ["digits"],
    "models": ["small_cnn"],
    "seeds": [1],
    "repair": {"classes": [3, 8]},
}


def with_training(**training: Any) -> dict[str, Any]:
    return {**BASE, "training": training}


def test_off_by_default_and_state_every_epoch() -> None:
    t = TrainingSpec()
    assert (t.repair_every, t.readiness, t.state_every) == (None, None, 1)
    r = ReadinessSpec()
    assert (r.policy, r.alpha, r.repair_class, r.method) == ("repaired-val-qual", 0.5, None, None)
    assert (r.patience, r.min_delta, r.action) == (5, 0.0, "record")
    assert TrainingSpec(state_every=None).state_every is None  # resume can be turned off


def test_a_valid_online_spec_parses() -> None:
    spec = parse_spec(
        with_training(repair_every=1, readiness={"repair_class": 8, "alpha": 0.2, "action": "stop"})
    )
    run = spec.runs()[0]
    assert run.training.readiness is not None and run.training.readiness.repair_class == 8
    # The baseline needs no online repair and no repaired class.
    parse_spec({**BASE, "repair": {}, "training": {"readiness": {"policy": "val-loss"}}})
    parse_spec(
        with_training(readiness={"policy": "early_repair_testing.custom_policy:ValAccuracy"})
    )


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        (with_training(repair_every=0), ["training.repair_every", "greater than or equal to 1"]),
        (with_training(readiness={"policy": "oracle"}), ["unknown readiness policy 'oracle'"]),
        (
            with_training(repair_every=1, readiness={"repair_class": 5}),
            ["training.readiness.repair_class: class 5 is not repaired", "[3, 8]"],
        ),
        (
            {**with_training(repair_every=1, readiness={}), "repair": {}},
            ["dataset 'digits' repairs no class"],
        ),
        (
            {
                **with_training(repair_every=1, readiness={"repair_class": 8}),
                "datasets": ["digits", {"name": "digits", "label": "d2", "repair_classes": [3]}],
            },
            ["class 8 is not repaired for dataset 'digits' (repair classes [3])"],
        ),
        (
            with_training(repair_every=1, readiness={"method": "finetune"}),
            ["training.readiness.method: 'finetune' is not a configured repair method"],
        ),
        (with_training(readiness={}), ["set training.repair_every"]),
        (with_training(readiness={"alpha": 1.5}), ["training.readiness.alpha"]),
        (with_training(readiness={"action": "halt"}), ["training.readiness.action"]),
    ],
)
def test_bad_online_fields_are_one_line(spec: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(BadInput) as err:
        parse_spec(spec, "sweep.yaml")
    line = str(err.value)
    assert "\n" not in line
    for needle in needles:
        assert needle in line, (needle, line)


def test_every_new_field_is_documented_in_the_schema() -> None:
    defs = json_schema()["$defs"]
    training = defs["TrainingSpec"]["properties"]
    for name in ("state_every", "repair_every", "readiness"):
        assert training[name].get("description"), name
    for name, prop in defs["ReadinessSpec"]["properties"].items():
        assert prop.get("description"), name
    assert all(
        p in defs["ReadinessSpec"]["properties"]["policy"]["description"]
        for p in READINESS_POLICIES
    )


def test_a_spec_without_the_new_fields_dumps_and_hashes_as_before() -> None:
    plain = parse_spec(BASE)
    assert not {"state_every", "repair_every", "readiness"} & set(
        plain.model_dump(mode="json")["training"]
    )
    # spec_hash of BASE computed before these fields existed (main at commit 3444f91).
    assert plain.spec_hash() == OLD_HASH
    used = parse_spec(with_training(state_every=None, repair_every=2, readiness={}))
    dumped = used.model_dump(mode="json")
    assert dumped["training"]["state_every"] is None and dumped["training"]["repair_every"] == 2
    assert dumped["training"]["readiness"]["policy"] == "repaired-val-qual"
    assert parse_spec(dumped) == used and parse_spec(plain.model_dump(mode="json")) == plain
    assert used.spec_hash() != plain.spec_hash()
