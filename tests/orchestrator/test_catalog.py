"""The catalog: every built-in name resolves to real code, the spec accepts exactly the
catalog's names (or import paths), and the repair config union follows the catalog."""

from __future__ import annotations

import inspect
import typing

import jsonschema
import pytest

from orchestrator import catalog
from orchestrator.errors import BadInput
from orchestrator.spec import (
    IMPORTED,
    ArachneSpec,
    ImportedRepairSpec,
    RepairConfig,
    json_schema,
    member_class,
    parse_spec,
)

BASE = {"name": "s", "datasets": ["digits"], "models": ["small_cnn"], "seeds": [1]}


def spec(**fields: object):
    return parse_spec({**BASE, **fields})


def union_members() -> dict[str, type]:
    """tag -> config class of ``RepairConfig``, read from its type, not restated here."""
    union = typing.get_args(RepairConfig)[0]
    members = {}
    for member in typing.get_args(union):
        cls, tag = typing.get_args(member)
        members[tag.tag] = cls
    return members


def test_every_catalog_entry_imports_a_function_of_the_documented_shape() -> None:
    for name, entry in catalog.DATASETS.items():
        load = catalog.resolve(entry.load)
        assert list(inspect.signature(load).parameters)[:2] == ["spec", "validation_split"], name
        if entry.prepare:
            assert "workers" in inspect.signature(catalog.resolve(entry.prepare)).parameters
    for name, path in catalog.MODELS.items():
        params = inspect.signature(catalog.resolve(path)).parameters
        assert {"in_channels", "num_classes", "image_size"} <= set(params), name
    for name, path in catalog.REPAIR_METHODS.items():
        params = list(inspect.signature(catalog.resolve(path)).parameters)
        assert params == ["task", "cfg"], name


def test_class_counts_come_from_the_catalog() -> None:
    for name, entry in catalog.DATASETS.items():
        ds = spec(datasets=[name]).datasets[0]
        assert ds.classes == entry.num_classes
        top = entry.num_classes - 1
        spec(datasets=[name], repair={"classes": [top]})
        with pytest.raises(BadInput, match=rf"repair class {top + 1} is out of range"):
            spec(datasets=[name], repair={"classes": [top + 1]})


@pytest.mark.parametrize(
    ("field", "value", "kind", "table"),
    [
        ("datasets", ["mnist"], "dataset", catalog.DATASETS),
        ("models", ["resnet50"], "model", catalog.MODELS),
        ("repair", {"method": "ga"}, "repair method", catalog.REPAIR_METHODS),
    ],
)
def test_unknown_names_are_refused_naming_the_catalogs_choices(
    field: str, value: object, kind: str, table: dict
) -> None:
    with pytest.raises(BadInput) as e:
        spec(**{field: value})
    msg = str(e.value)
    assert f"unknown {kind}" in msg and "import path" in msg
    assert all(name in msg for name in table)


def test_import_paths_bypass_the_catalog() -> None:
    s = spec(
        datasets=[{"name": "pkg.data:load", "num_classes": 4}],
        models=["pkg.nets:tiny"],
        repair={"method": "pkg.fix:repair", "classes": [3], "options": {"step": 2}},
    )
    assert s.datasets[0].classes == 4
    assert isinstance(s.repair, ImportedRepairSpec)
    assert (s.repair.method, s.repair.options, s.repair.classes) == (
        "pkg.fix:repair",
        {"step": 2},
        [3],
    )
    assert isinstance(s.runs()[0].repair, ImportedRepairSpec)
    # Arachne's fields belong to Arachne: an import-path method does not take them.
    with pytest.raises(BadInput, match=r"repair\.particles: Extra inputs"):
        spec(repair={"method": "pkg.fix:repair", "particles": 3})
    with pytest.raises(BadInput, match=r"repair\.method: String should match"):
        spec(repair={"method": "pkg.fix:"})


def test_the_repair_union_has_one_member_per_catalog_method() -> None:
    members = union_members()
    assert set(members) == {*catalog.REPAIR_METHODS, IMPORTED}
    for tag, cls in members.items():
        # `methods:` entries are validated by the class each config class registered, so
        # the registry and the union must name the same class for every method.
        assert member_class("pkg.fix:repair" if tag == IMPORTED else tag) is cls
        if tag != IMPORTED:
            assert cls.model_fields["method"].default == tag
            assert parse_spec({**BASE, "repair": {"method": tag}}).repair.__class__ is cls


def test_no_method_means_arachne_and_dumps_as_before_the_union() -> None:
    for repair in (None, {"classes": [3]}, {"method": "arachne", "classes": [3]}):
        s = spec(**({} if repair is None else {"repair": repair}))
        assert isinstance(s.repair, ArachneSpec)
    dump = spec(repair={"classes": [3]}).model_dump(mode="json")["repair"]
    # Key order and values of the one repair config that existed before methods were a union.
    assert list(dump) == [
        "method",
        "classes",
        "seed",
        "particles",
        "iterations",
        "patience",
        "phi",
        "variant",
        "n_positives",
        "dedup_positives",
        "grad_factor",
        "max_batch_bytes",
    ]
    # spec_hash of this spec computed by the version before the union (commit cdb6e33).
    assert (
        spec(repair={"classes": [3]}).spec_hash()
        == "96a238c8790290413a849fc7125c427c155964fe0bb732976006a7721dfd66a9"
    )


def test_a_repair_field_error_names_the_field_as_the_user_wrote_it() -> None:
    with pytest.raises(BadInput, match=r"spec: repair\.particles: Input should be greater than 0"):
        spec(repair={"particles": 0})


def test_the_json_schema_shows_the_repair_union() -> None:
    schema = json_schema()
    refs = {m["$ref"].rsplit("/", 1)[-1] for m in schema["properties"]["repair"]["oneOf"]}
    assert refs == {
        "ArachneSpec",
        "ArachneDERepairSpec",
        "FinetuneRepairSpec",
        "NeurecoverRepairSpec",
        "ProvableRepairSpec",
        "ImportedRepairSpec",
    }
    for repair in ({"classes": [3]}, {"method": "pkg.fix:repair", "options": {"k": 1}}):
        jsonschema.validate({**BASE, "repair": repair}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**BASE, "repair": {"method": "arachne", "options": {}}}, schema)


def test_resolve_names_the_path_that_fails() -> None:
    assert catalog.resolve("orchestrator.catalog:resolve") is catalog.resolve
    assert catalog.resolve("orchestrator.errors:BadInput.exit_code") == 2  # dotted attributes
    for path, needle in (
        ("no_colon", "write it as 'package.module:attribute'"),
        ("no_such_module_xyz:f", "No module named 'no_such_module_xyz'"),
        ("orchestrator.catalog:nope", "has no attribute 'nope'"),
    ):
        with pytest.raises(BadInput, match="cannot import") as e:
            catalog.resolve(path)
        assert needle in str(e.value) and repr(path) in str(e.value)


def test_only_catalog_datasets_with_a_preparer_can_be_prepared() -> None:
    assert set(catalog.preparable()) == {"gtsrb", "rsna"}
    with pytest.raises(
        BadInput, match=r"no preparation for dataset 'digits'; use one of \['gtsrb', 'rsna'\]"
    ):
        catalog.dataset_preparer("digits")
