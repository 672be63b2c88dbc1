"""The sweep spec: expansion order, paper defaults, Kubernetes names, byte sizes, schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator.errors import BadInput
from orchestrator.spec import (
    MAX_SWEEP_NAME,
    RepairSpec,
    ResourcesSpec,
    SweepSpec,
    TrainingSpec,
    load_spec,
    parse_spec,
)

BASE = {"name": "s", "datasets": ["digits"], "models": ["small_cnn"], "seeds": [1]}


def spec(**fields: object) -> SweepSpec:
    return parse_spec({**BASE, **fields})


def test_runs_expand_datasets_then_models_then_seeds() -> None:
    s = spec(
        datasets=["digits", {"name": "pkg.mod:load", "num_classes": 5, "label": "mine"}],
        models=["small_cnn", {"name": "pkg.nets:tiny", "label": "tiny"}],
        seeds=[3, 1],
    )
    runs = s.runs()
    assert [r.name for r in runs] == [
        "digits-small-cnn-s3",
        "digits-small-cnn-s1",
        "digits-tiny-s3",
        "digits-tiny-s1",
        "mine-small-cnn-s3",
        "mine-small-cnn-s1",
        "mine-tiny-s3",
        "mine-tiny-s1",
    ]
    assert [r.index for r in runs] == list(range(8))
    assert all(r.sweep == "s" and r.training == s.training for r in runs)


def test_repair_classes_per_dataset_override_the_sweep_default() -> None:
    s = spec(
        datasets=["digits", {"name": "rsna", "repair_classes": [1]}],
        repair={"classes": [3, 8]},
    )
    assert [r.repair_classes for r in s.runs()] == [[3, 8], [1]]


def test_defaults_are_the_papers() -> None:
    t = TrainingSpec()
    assert (t.optimizer, t.lr, t.momentum, t.weight_decay) == ("sgd", 1e-2, 0.9, 0.0)
    assert (t.lr_schedule, t.lr_step_epochs, t.lr_gamma) == ("step", 10, 0.1)
    assert (t.batch_size, t.max_epochs, t.validation_split) == (128, 30, 0.2)
    assert (t.early_stopping, t.patience, t.min_delta) == (True, 5, 0.0)
    assert (t.checkpoint_every, t.checkpoint_first, t.checkpoint_convergence) == (5, True, True)
    r = RepairSpec()
    assert (r.method, r.particles, r.iterations, r.patience, r.phi) == (
        "arachne",
        100,
        50,
        10,
        4.1,
    )
    assert (r.variant, r.n_positives, r.positives, r.grad_factor) == ("v1", 200, "uniform", 20)
    assert (r.update_order, r.stagnation_start, r.dedup_positives) == ("velocity-first", 1, False)
    assert (t.validation, t.shuffle_each_epoch) == ("fixed", True)
    assert spec().datasets[0].split_seed == 42


@pytest.mark.parametrize(
    "name",
    ["Upper", "under_score", "-lead", "trail-", "dot.ted", "", "x" * (MAX_SWEEP_NAME + 1)],
)
def test_sweep_names_must_be_kubernetes_names(name: str) -> None:
    with pytest.raises(BadInput, match=r"^spec: name: "):
        spec(name=name)


def test_valid_names_and_labels_pass_and_long_run_names_are_refused() -> None:
    assert spec(name="a-1").name == "a-1"
    with pytest.raises(BadInput, match=r"datasets\.0\.label"):
        spec(datasets=[{"name": "digits", "label": "Bad_Label"}])
    with pytest.raises(BadInput, match="too long"):
        spec(models=[{"name": "small_cnn", "label": "m" * 60}])


def test_byte_sizes_accept_units_and_refuse_nonsense() -> None:
    r = ResourcesSpec(min_free_vram="10GiB", max_used_vram="1.5GB", vram_estimate=1024)
    assert (r.min_free_vram, r.max_used_vram, r.vram_estimate) == (10 * 2**30, 1_500_000_000, 1024)
    assert RepairSpec(max_batch_bytes="64MiB").max_batch_bytes == 64 * 2**20
    with pytest.raises(BadInput, match=r"resources\.min_free_vram"):
        spec(resources={"min_free_vram": "ten gigs"})


def test_grid_mistakes_name_the_field() -> None:
    with pytest.raises(BadInput, match="seeds: each seed may appear once"):
        spec(seeds=[1, 1])
    with pytest.raises(BadInput, match="a class appears twice"):
        spec(repair={"classes": [3, 3]})
    with pytest.raises(BadInput, match="set num_classes"):
        spec(datasets=["pkg.mod:load"])
    with pytest.raises(BadInput, match="unknown model"):
        spec(models=["resnet"])


def test_json_and_yaml_files_load_the_same(tmp_path: Path) -> None:
    s = spec(training={"max_epochs": 3}, repair={"classes": [2]})
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(s.model_dump(mode="json")))
    (tmp_path / "a.json").write_text(s.model_dump_json())
    assert load_spec(tmp_path / "a.yaml") == load_spec(tmp_path / "a.json") == s
    assert load_spec(tmp_path / "a.json").spec_hash() == s.spec_hash()
    assert load_spec(tmp_path / "a.json", results="/x").results == "/x"


def test_schema_command_prints_a_schema_the_quickstart_satisfies(cli, repo: Path) -> None:
    r = cli("schema")
    assert r.code == 0 and r.err == ""
    schema = json.loads(r.out)
    assert {"name", "datasets", "models", "seeds", "training", "repair"} <= set(
        schema["properties"]
    )
    assert set(schema["required"]) == {"name", "datasets", "models", "seeds"}
    quickstart = yaml.safe_load((repo / "settings/quickstart.yaml").read_text())
    jsonschema.validate(quickstart, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**quickstart, "seeds": "many"}, schema)


# --- fields that reproduce the released code (docs/science.md) ---------------------------

RELEASED = {
    "datasets": ("stratify", "test_split_seed", "preprocess"),
    "models": ("normalise",),
    "training": ("validation", "shuffle_each_epoch"),
    "repair": ("positives", "update_order", "stagnation_start"),
}


def test_released_code_fields_stay_out_of_dumps_at_their_defaults() -> None:
    """Specs that never set them keep their sweep.json and spec hash (plan is unchanged)."""
    dump = spec().model_dump(mode="json")
    for part, fields in RELEASED.items():
        section = dump[part][0] if part in ("datasets", "models") else dump[part]
        assert not set(fields) & set(section), part
    assert dump["repair"]["dedup_positives"] is False  # as the first release wrote it
    released = spec(
        datasets=[{"name": "rsna", "test_split_seed": 43, "stratify": False}],
        models=[{"name": "vgg16", "normalise": "none"}],
        training={"validation": "per-seed", "shuffle_each_epoch": False},
        repair={"positives": "balanced", "update_order": "position-first", "stagnation_start": 12},
    )
    dump = released.model_dump(mode="json")
    assert dump["datasets"][0]["test_split_seed"] == 43 and dump["datasets"][0]["stratify"] is False
    assert dump["models"][0]["normalise"] == "none"
    assert (dump["training"]["validation"], dump["training"]["shuffle_each_epoch"]) == (
        "per-seed",
        False,
    )
    assert dump["repair"]["positives"] == "balanced" and dump["repair"]["stagnation_start"] == 12
    assert parse_spec(dump) == released and parse_spec(dump).spec_hash() == released.spec_hash()
    assert released.spec_hash() != spec().spec_hash()


def test_legacy_dedup_positives_still_reads_and_writes() -> None:
    old = spec(repair={"dedup_positives": True})
    assert old.repair.positives == "with-replacement-dedup"
    dump = old.model_dump(mode="json")["repair"]
    assert dump["dedup_positives"] is True and "positives" not in dump  # the old bytes
    assert spec(repair={"positives": "with-replacement-dedup"}) == old
    assert spec(repair={"dedup_positives": False}).repair.positives == "uniform"
    with pytest.raises(BadInput, match=r"repair: .*dedup_positives: true contradicts positives"):
        spec(repair={"dedup_positives": True, "positives": "balanced"})


def test_every_released_code_field_is_described_in_the_schema(cli, repo: Path) -> None:
    schema = json.loads(cli("schema").out)
    defs = schema["$defs"]
    names = {"datasets": "DatasetSpec", "models": "ModelSpec", "training": "TrainingSpec"}
    names["repair"] = "ArachneSpec"  # the released-code fields belong to the arachne method
    for part, fields in RELEASED.items():
        props = defs[names[part]]["properties"]
        for field in fields:
            assert len(props[field]["description"]) > 40, (part, field)
    assert defs["ArachneSpec"]["properties"]["dedup_positives"]["deprecated"] is True
    for preset in ("paper-gtsrb-released", "paper-rsna-released"):
        jsonschema.validate(yaml.safe_load((repo / f"settings/{preset}.yaml").read_text()), schema)
    old = yaml.safe_load((repo / "settings/quickstart.yaml").read_text())
    old["repair"]["dedup_positives"] = True
    jsonschema.validate(old, schema)
