"""The whole experiment (``SweepSpec``) and its expansion into runs (``RunSpec``).

``expand`` turns a sweep into one run per dataset x model x seed, in a fixed order, so
that run index N means the same run on a laptop and in a Kubernetes Indexed Job.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from pydantic import BeforeValidator, Field, model_validator

from orchestrator.spec.cluster import KubernetesSpec, ResourcesSpec, StorageSpec
from orchestrator.spec.dataset import DatasetSpec, ModelSpec
from orchestrator.spec.fields import (
    MAX_RUN_NAME,
    MAX_RUNS,
    MAX_SWEEP_NAME,
    Int,
    PathText,
    Seed,
    SweepName,
    _as_list,
    _as_named,
    _Strict,
)
from orchestrator.spec.repair import ArachneSpec, RepairConfig
from orchestrator.spec.training import TrainingSpec


class SweepSpec(_Strict):
    """A whole experiment."""

    name: SweepName = Field(
        description=f"Sweep name: lower-case letters, digits and '-', at most {MAX_SWEEP_NAME}"
        " characters; names the results folder <results>/<name> and the Kubernetes objects."
    )
    description: str = Field(
        "",
        description="Free text shown in the report under 'What was run'; the runs ignore it,"
        " but it is part of the spec hash.",
    )
    datasets: Annotated[
        # The schema must admit the name-only shorthand that _as_named accepts.
        list[
            Annotated[
                DatasetSpec, BeforeValidator(_as_named, json_schema_input_type=str | DatasetSpec)
            ]
        ],
        BeforeValidator(_as_list),
        Field(
            min_length=1,
            description="Datasets of the grid (at least one): entries, or built-in names alone.",
        ),
    ]
    models: Annotated[
        # The schema must admit the name-only shorthand that _as_named accepts.
        list[
            Annotated[ModelSpec, BeforeValidator(_as_named, json_schema_input_type=str | ModelSpec)]
        ],
        BeforeValidator(_as_list),
        Field(
            min_length=1,
            description="Models of the grid (at least one): entries, or built-in names alone.",
        ),
    ]
    seeds: Annotated[
        list[Seed],
        Field(
            min_length=1,
            description="Training seeds, each once: one run per dataset x model x seed, its"
            " initial weights, batch order and repairs drawn from it.",
        ),
    ]
    training: TrainingSpec = Field(
        default_factory=TrainingSpec,
        description="How every model is trained and which checkpoints are kept.",
    )
    repair: RepairConfig = Field(
        default_factory=ArachneSpec, description="The repair method and its settings."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec,
        description="What each run needs (CPU, memory, GPUs) and how long it waits for GPUs.",
    )
    kubernetes: KubernetesSpec = Field(
        default_factory=KubernetesSpec,
        description="The Kubernetes Job that `submit` creates; `run` (local) ignores it.",
    )
    storage: StorageSpec = Field(
        default_factory=StorageSpec,
        description="How an s3:// `results` (or `prepared`) location is reached.",
    )
    results: PathText = Field("results", description="Where results go: path, file:// or s3://.")
    image: str = Field("ghcr.io/early-repair/trainer:0.1.0", description="Trainer image.")

    @model_validator(mode="after")
    def _grid(self) -> SweepSpec:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: each seed may appear once")
        for field, items in (("datasets", self.datasets), ("models", self.models)):
            keys = [i.key for i in items]
            if len(set(keys)) != len(keys):
                raise ValueError(f"{field}: two entries share the name; give one a `label`")
        for i, ds in enumerate(self.datasets):
            classes = self.classes_for(ds)
            if len(set(classes)) != len(classes):
                raise ValueError(f"datasets.{i}.repair_classes: a class appears twice")
            n = ds.classes
            bad = [c for c in classes if c < 0 or (n is not None and c >= n)]
            if bad:
                raise ValueError(
                    f"repair class {bad[0]} is out of range for dataset {ds.name!r}"
                    f" (classes 0..{(n or 1) - 1})"
                )
        n_runs = len(self.datasets) * len(self.models) * len(self.seeds)
        if n_runs > MAX_RUNS:
            raise ValueError(
                f"{n_runs} runs ({len(self.datasets)} datasets x {len(self.models)} models x"
                f" {len(self.seeds)} seeds) is more than {MAX_RUNS:,} (an Indexed Job's limit);"
                " split the sweep"
            )
        # The longest run name is the longest dataset, model and seed put together.
        longest = _run_name(
            max(self.datasets, key=lambda d: len(d.key)),
            max(self.models, key=lambda m: len(m.key)),
            max(self.seeds, key=lambda s: len(str(s))),
        )
        if len(longest) > MAX_RUN_NAME:
            raise ValueError(f"run name {longest!r} is too long: shorten the labels")
        return self

    @model_validator(mode="after")
    def _readiness(self) -> SweepSpec:
        policy = self.training.readiness
        if policy is None or policy.policy != "repaired-val-qual":
            return self
        configured = [c.method for c in self.repair.configs()]
        if policy.method is not None and policy.method not in configured:
            raise ValueError(
                f"training.readiness.method: {policy.method!r} is not a configured repair"
                f" method (configured: {', '.join(configured)})"
            )
        for ds in self.datasets:
            classes = self.classes_for(ds)
            if not classes:
                raise ValueError(
                    f"training.readiness: dataset {ds.name!r} repairs no class; set"
                    " repair.classes (or the dataset's repair_classes)"
                )
            if policy.repair_class is not None and policy.repair_class not in classes:
                raise ValueError(
                    f"training.readiness.repair_class: class {policy.repair_class} is not"
                    f" repaired for dataset {ds.name!r} (repair classes {classes})"
                )
        return self

    def classes_for(self, ds: DatasetSpec) -> list[int]:
        return list(ds.repair_classes if ds.repair_classes is not None else self.repair.classes)

    def runs(self) -> list[RunSpec]:
        return expand(self)

    def spec_hash(self) -> str:
        """Stable hash of everything that changes what the runs compute or where they go."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


class RunSpec(_Strict):
    """One run = dataset x model x seed; index N is the Nth run of ``expand``."""

    sweep: str
    index: Int
    name: str
    dataset: DatasetSpec
    model: ModelSpec
    seed: Seed
    repair_classes: list[Int]
    training: TrainingSpec
    repair: RepairConfig
    resources: ResourcesSpec
    storage: StorageSpec
    results: str


def _run_name(ds: DatasetSpec, model: ModelSpec, seed: int) -> str:
    return f"{ds.key}-{model.key}-s{seed}"


def expand(spec: SweepSpec) -> list[RunSpec]:
    """Datasets, then models, then seeds - the order is part of the contract."""
    runs: list[RunSpec] = []
    for ds in spec.datasets:
        for model in spec.models:
            for seed in spec.seeds:
                runs.append(
                    # Every part comes from the validated spec; validating each of up to
                    # 100,000 runs again would only cost seconds.
                    RunSpec.model_construct(
                        sweep=spec.name,
                        index=len(runs),
                        name=_run_name(ds, model, seed),
                        dataset=ds,
                        model=model,
                        seed=seed,
                        repair_classes=spec.classes_for(ds),
                        training=spec.training,
                        repair=spec.repair,
                        resources=spec.resources,
                        storage=spec.storage,
                        results=spec.results,
                    )
                )
    return runs
