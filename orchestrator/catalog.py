"""The catalog: every built-in name a spec may use, and where its code lives.

A spec names datasets, models and repair methods by short names (``digits``, ``vgg16``,
``arachne``); this table maps each to ``"module:attr"``, as TorchX's scheduler registry
maps scheduler names to factories. It is strings only, so the control plane validates
names without importing torch or the trainer; the trainer imports the code through
``resolve`` when a run needs it (a digits run never imports pydicom). Any name with a
``:`` is an import path of the user's own code and bypasses the table.

Adding a built-in is one line here plus its module; a repair method also adds its config
class to ``orchestrator.spec.RepairConfig`` (its fields are its own).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import BadInput


@dataclass(frozen=True)
class DatasetEntry:
    """A built-in dataset: its loader, its class count (checked at spec time), its preparer."""

    load: str  # load(spec, validation_split, *, holdout, storage, **kw) -> Splits
    num_classes: int
    prepare: str | None = None  # prepare(spec, *, progress, workers) -> Prepared


DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry("trainer_image.data.digits:load", 10),
    "mnist5k": DatasetEntry("trainer_image.data.mnist5k:load", 10),
    "gtsrb": DatasetEntry("trainer_image.data.gtsrb:load", 43, "trainer_image.data.gtsrb:prepare"),
    "rsna": DatasetEntry("trainer_image.data.rsna:load", 2, "trainer_image.data.rsna:prepare"),
}

# factory(in_channels, num_classes, image_size, pretrained=..., weights=...,
# normalise=... (ImageNet models, or any model when it is not the default), **options)
MODELS: dict[str, str] = {
    "small_cnn": "trainer_image.models:small_cnn",
    "vgg16": "trainer_image.zoo:vgg16",
    "densenet121": "trainer_image.zoo:densenet121",
}

# A trainer_image.repair.base.RepairMethod:
# repair(head, features, y, split, target_class, cfg, seed, device) -> RepairResult
REPAIR_METHODS: dict[str, str] = {
    "arachne": "trainer_image.repair.arachne:repair",
    "arachne-de": "trainer_image.repair.arachne_de:repair",
    "finetune": "trainer_image.repair.finetune:repair",
    "neurecover": "trainer_image.repair.neurecover:repair",
    "provable": "trainer_image.repair.provable:repair",
}


# A trainer_image.readiness.ReadinessPolicy subclass: policy(spec, tracks)
READINESS_POLICIES: dict[str, str] = {
    "repaired-val-qual": "trainer_image.readiness:RepairedValQual",
    "val-loss": "trainer_image.readiness:ValLoss",
}


def is_import_path(name: str) -> bool:
    """``'package.module:attr'``: the user's own code rather than a catalog name."""
    return ":" in name


def unknown(kind: str, names: Iterable[str], name: str) -> str | None:
    """Why ``name`` names nothing (for a spec error), or None when it is fine."""
    names = list(names)
    if is_import_path(name) or name in names:
        return None
    return (
        f"unknown {kind} {name!r}: use one of {', '.join(names)}"
        " or an import path 'package.module:function'"
    )


def _target(kind: str, table: dict[str, str], name: str) -> str:
    if why := unknown(kind, table, name):
        raise BadInput(why)
    return table.get(name, name)


def dataset_loader(name: str) -> str:
    """``"module:attr"`` of the loader for a dataset name (built-in or import path)."""
    return _target("dataset", {k: v.load for k, v in DATASETS.items()}, name)


def preparable() -> dict[str, str]:
    """Datasets that ``early-repair prepare`` can read from raw files -> their preparer."""
    return {k: v.prepare for k, v in DATASETS.items() if v.prepare is not None}


def dataset_preparer(name: str) -> str:
    table = preparable()
    if name not in table:
        raise BadInput(f"prepare: no preparation for dataset {name!r}; use one of {sorted(table)}")
    return table[name]


def model_factory(name: str) -> str:
    return _target("model", MODELS, name)


def repair_method(name: str) -> str:
    return _target("repair method", REPAIR_METHODS, name)


def readiness_policy(name: str) -> str:
    return _target("readiness policy", READINESS_POLICIES, name)


def resolve(path: str) -> Any:
    """Import ``'package.module:attr'``; a BadInput names the path when that fails."""
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise BadInput(f"cannot import {path!r}: write it as 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise BadInput(f"cannot import {path!r}: {e}; check the import path") from e
    return obj
