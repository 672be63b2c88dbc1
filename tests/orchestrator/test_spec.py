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
    ArachneSpec,
    ResourcesSpec,
    RunSpec,
    SweepSpec,
    TrainingSpec,
    load_spec,
    parse_spec,
)
from orchestrator.spec import yaml_file as yaml_module

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
    r = ArachneSpec()
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
    assert ArachneSpec(max_batch_bytes="64MiB").max_batch_bytes == 64 * 2**20
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


# -- what validation lets through: nothing a run would only fail on later -------------------


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"training": {"lr": float("inf")}}, "training.lr"),
        ({"training": {"lr": "1.0e400"}}, "training.lr"),  # YAML 1.1 reads it as a string
        ({"training": {"min_delta": float("nan")}}, "training.min_delta"),
        ({"repair": {"phi": float("inf")}}, "repair.phi"),
        ({"resources": {"guard_timeout_s": float("inf")}}, "resources.guard_timeout_s"),
        ({"resources": {"guard_poll_s": "nan"}}, "resources.guard_poll_s"),
        ({"datasets": [{"name": "digits", "max_bad_fraction": float("nan")}]}, "datasets.0"),
    ],
)
def test_non_finite_numbers_are_refused(fields: dict, where: str) -> None:
    with pytest.raises(BadInput, match=rf"^spec: {where}.*finite number"):
        spec(**fields)


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"seeds": [True]}, "seeds.0"),
        ({"seeds": [1, False]}, "seeds.1"),
        ({"training": {"max_epochs": True}}, "training.max_epochs"),
        ({"training": {"lr": True}}, "training.lr"),
        ({"resources": {"min_free_vram": True}}, "resources.min_free_vram"),
        ({"repair": {"classes": [True]}}, "repair.classes.0"),
    ],
)
def test_booleans_are_not_numbers(fields: dict, where: str) -> None:
    with pytest.raises(BadInput, match=rf"^spec: {where}: expected a number, not a boolean"):
        spec(**fields)


def test_numbers_and_strings_are_not_booleans_or_integers() -> None:
    with pytest.raises(BadInput, match=r"training\.early_stopping: .*boolean"):
        spec(training={"early_stopping": 1})
    with pytest.raises(BadInput, match=r"seeds\.0: .*integer"):
        spec(seeds=["7"])
    with pytest.raises(BadInput, match=r"training\.max_epochs: .*integer"):
        spec(training={"max_epochs": 2.0})
    # Floats stay lax about strings: YAML reads 1e-4 (no dot) as one.
    assert spec(training={"lr": "1e-4"}).training.lr == 1e-4


def test_integers_stay_within_what_numpy_torch_and_kubernetes_hold() -> None:
    assert spec(seeds=[2**63 - 1]).seeds == [2**63 - 1]
    assert spec(repair={"seed": 2**63 - 1}).repair.seed == 2**63 - 1
    for bad in (2**63, 10**30):
        with pytest.raises(BadInput, match=r"^spec: seeds\.0: .*less than or equal to"):
            spec(seeds=[bad])
    with pytest.raises(BadInput, match=r"datasets\.0\.split_seed: .*4294967295"):
        spec(datasets=[{"name": "digits", "split_seed": 2**32}])  # scikit-learn's limit
    with pytest.raises(BadInput, match=r"kubernetes\.parallelism: .*2147483647"):
        spec(kubernetes={"parallelism": 2**31})  # an int32 in the Job API
    with pytest.raises(BadInput, match=r"repair\.max_batch_bytes"):
        spec(repair={"max_batch_bytes": "100000000PiB"})


def test_free_form_options_hold_plain_finite_data() -> None:
    nested = {"depth": 3, "widths": [8, 16], "act": {"name": "relu", "slope": 0.1}}
    assert spec(models=[{"name": "pkg.nets:tiny", "options": nested}]).models[0].options == nested
    with pytest.raises(BadInput, match=r"models\.0\.options: act\.slope: inf is not a finite"):
        spec(models=[{"name": "pkg.nets:tiny", "options": {"act": {"slope": float("inf")}}}])
    with pytest.raises(BadInput, match=r"kubernetes\.tolerations\.0: .*64 bits"):
        spec(kubernetes={"tolerations": [{"tolerationSeconds": 2**64}]})


def test_endpoint_urls_are_checked_and_never_carry_credentials() -> None:
    ok = spec(storage={"endpoint_url": "http://minio.minio.svc:9000/"})
    assert ok.storage.endpoint_url == "http://minio.minio.svc:9000"
    secret = "wJalrXUtnFEMI/K7MDENG"
    with pytest.raises(BadInput) as info:
        spec(storage={"endpoint_url": f"http://AKIAEXAMPLE:{secret}@minio:9000"})
    text = str(info.value)
    assert text.startswith("spec: storage.endpoint_url: credentials do not belong in a URL")
    assert secret not in text and "AKIAEXAMPLE" not in text and "\n" not in text
    with pytest.raises(BadInput, match=r"storage\.endpoint_url: endpoint URL 'minio:9000'"):
        spec(storage={"endpoint_url": "minio:9000"})


def test_paths_with_a_nul_character_are_refused() -> None:
    with pytest.raises(BadInput, match=r"^spec: results: a path may not contain a NUL"):
        spec(results="res\x00ults")
    with pytest.raises(BadInput, match=r"^spec: results: credentials do not belong") as info:
        spec(results="s3://AKIAEXAMPLE:se/cret@bucket/x")
    assert "se/cret" not in str(info.value) and "AKIA" not in str(info.value)
    assert spec(results="runs@2024/results").results == "runs@2024/results"  # a plain path


def test_more_runs_than_an_indexed_job_holds_are_refused() -> None:
    many = list(range(50_000))
    two = [{"name": "digits", "label": "a"}, {"name": "digits", "label": "b"}]
    assert len(spec(datasets=two, seeds=many).seeds) == 50_000  # 100,000 runs: the limit
    three = [*two, {"name": "digits", "label": "c"}]
    with pytest.raises(BadInput, match=r"^spec: 150000 runs \(3 datasets x 1 models x 50000"):
        spec(datasets=three, seeds=many)


def test_expanded_runs_equal_validated_ones() -> None:
    s = spec(seeds=[3, 1], repair={"classes": [2]})
    for run in s.runs():
        assert RunSpec.model_validate(run.model_dump(mode="json")) == run


# -- bounded YAML: size, nesting, aliases - refused before anything is built ----------------

ALIAS_BOMB = """\
name: bomb
datasets:
  - name: pkg.mod:load
    num_classes: 2
    options:
      a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
      b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
      c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
      d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
      e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
      f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
      g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
      h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
      i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
models: [small_cnn]
seeds: [1]
"""


@pytest.fixture(params=["c", "python"])
def yaml_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both parsers: libyaml's when PyYAML has it, and the pure-Python fallback."""
    if request.param == "c":
        if not hasattr(yaml, "CSafeLoader"):
            pytest.skip("PyYAML without libyaml")
        monkeypatch.setattr(yaml_module, "_YAML_LOADER", yaml.CSafeLoader)
    else:
        monkeypatch.setattr(yaml_module, "_YAML_LOADER", yaml.SafeLoader)
    return request.param


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_an_alias_bomb_is_refused(tmp_path: Path, yaml_loader: str) -> None:
    path = write(tmp_path, ALIAS_BOMB)
    assert path.stat().st_size < 1024
    with pytest.raises(BadInput, match=r"more than 1,000,000 values once YAML aliases"):
        load_spec(path)


def test_aliases_within_bounds_still_work(tmp_path: Path, yaml_loader: str) -> None:
    text = "name: a\ndatasets: [&d digits]\nmodels: [small_cnn]\nseeds: &s [1, 2]\n"
    text += "training: &t {max_epochs: 3}\n"
    assert load_spec(write(tmp_path, text)).seeds == [1, 2]


def test_an_alias_to_itself_is_refused(tmp_path: Path, yaml_loader: str) -> None:
    path = write(tmp_path, "name: a\noptions: &o {self: *o}\n")
    with pytest.raises(BadInput, match=r"alias \*o refers to itself \(line 2\)"):
        load_spec(path)


@pytest.mark.parametrize("opener", ["[", "{a: "])
def test_deep_nesting_is_one_line(tmp_path: Path, yaml_loader: str, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    path = write(tmp_path, "name: deep\nx: " + opener * 50_000 + closer * 50_000 + "\n")
    with pytest.raises(BadInput) as info:
        load_spec(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    assert "nested deeper than 64" in text or "nesting depth" in text


def test_block_nesting_is_bounded_too(tmp_path: Path, yaml_loader: str) -> None:
    text = "".join(" " * i + "a:\n" for i in range(100)) + " " * 100 + "b: 1\n"
    with pytest.raises(BadInput, match=r"nested deeper than 64 levels \(line 6[45]\)"):
        load_spec(write(tmp_path, text))


def test_a_spec_file_is_read_only_up_to_its_limit(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"^/dev/zero: larger than 4096 KiB"):
        load_spec("/dev/zero")
    path = write(tmp_path, "name: big\ndescription: " + "x" * (4 << 20) + "\n")
    with pytest.raises(BadInput, match=r"larger than 4096 KiB"):
        load_spec(path)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a text file"),
        (b"name: x\x00\x01\x02\n", "not valid YAML"),
        (b"name: x\nseeds: [" + b"9" * 5000 + b"]\n", "a value cannot be read"),
        (b"name: x\nseeds: [2024-02-30]\n", "a value cannot be read"),
        (b"name: x\n---\nname: y\n", "not valid YAML"),
        (b"", "must be a mapping"),
    ],
)
def test_unreadable_content_is_one_line(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_bytes(content)
    with pytest.raises(BadInput) as info:
        load_spec(path)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(path))


def test_keys_with_newlines_still_give_one_line(tmp_path: Path) -> None:
    text = yaml.safe_dump(BASE) + '"evil\\nkey\\u2028more": 1\n'
    path = write(tmp_path, text)
    with pytest.raises(BadInput) as info:
        load_spec(path)
    assert "\n" not in str(info.value) and "\u2028" not in str(info.value)
    assert "evil" in str(info.value)


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in (Path(__file__).parents[2] / "settings").glob("*.yaml"))
)
def test_every_preset_is_a_valid_spec(cli, repo: Path, preset: str) -> None:
    data = yaml.safe_load((repo / f"settings/{preset}.yaml").read_text())
    jsonschema.validate(data, json.loads(cli("schema").out))
    assert parse_spec(data).name == preset
