"""The sweep spec: what a researcher writes (YAML), validated by pydantic, expanded into runs.

Specs are data. One ``SweepSpec`` describes datasets x models x seeds (x repair classes,
which a run repairs one after another); ``expand`` turns it into ``RunSpec`` objects, one
per dataset x model x seed, in a fixed order so that run index N means the same run on a
laptop and in a Kubernetes Indexed Job. Defaults equal the paper's text (docs/science.md);
every place where the released code deviated is a documented field so either behaviour can
be reproduced. Fields added after the first release stay out of the stored spec while they
hold their default (``fields._added``), so the sweep.json and the spec hash of an existing
spec never change when a field is added. This package is imported by the control plane and
the trainer alike, so it must stay light (no torch).

One module per concern: ``fields`` (bounded types, names, limits), ``dataset`` (datasets
and models), ``training`` (training and readiness), ``repair`` (one config per repair
method, a union), ``cluster`` (resources, Kubernetes, storage), ``sweep`` (the sweep and
its runs), ``load`` (from a file or data to a spec, one-line errors, the JSON Schema) and
``yaml_file`` (the bounded YAML reader, which knows no schema). Import from here.
"""

from __future__ import annotations

from orchestrator.spec.cluster import KubernetesSpec, ResourcesSpec, StorageSpec
from orchestrator.spec.dataset import IMAGENET_MODELS, RAW_DATASETS, DatasetSpec, ModelSpec
from orchestrator.spec.fields import (
    DNS1123_LABEL,
    INT32_MAX,
    INT64_MAX,
    MAX_RUN_NAME,
    MAX_RUNS,
    MAX_SWEEP_NAME,
    SPLIT_SEED_MAX,
    Bool,
    Bytes,
    DnsLabel,
    Float,
    Int,
    Int32,
    PathText,
    PlainDict,
    Seed,
    SweepName,
    check_sweep_name,
    slug,
)
from orchestrator.spec.load import describe_error, json_schema, load_spec, parse_spec
from orchestrator.spec.repair import (
    IMPORTED,
    REPAIR_TAGS,
    ArachneDERepairSpec,
    ArachneSpec,
    FinetuneRepairSpec,
    ImportedRepairSpec,
    NeurecoverRepairSpec,
    ProvableRepairSpec,
    RepairConfig,
    RepairMethodConfig,
    member_class,
    method_configs,
    method_key,
)
from orchestrator.spec.sweep import RunSpec, SweepSpec, expand
from orchestrator.spec.training import TRAINING_ADDITIONS, ReadinessSpec, TrainingSpec
from orchestrator.spec.yaml_file import MAX_DEPTH, MAX_NODES, MAX_SPEC_BYTES, load_yaml

__all__ = [
    "DNS1123_LABEL",
    "IMAGENET_MODELS",
    "IMPORTED",
    "INT32_MAX",
    "INT64_MAX",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_RUNS",
    "MAX_RUN_NAME",
    "MAX_SPEC_BYTES",
    "MAX_SWEEP_NAME",
    "RAW_DATASETS",
    "REPAIR_TAGS",
    "SPLIT_SEED_MAX",
    "TRAINING_ADDITIONS",
    "ArachneDERepairSpec",
    "ArachneSpec",
    "Bool",
    "Bytes",
    "DatasetSpec",
    "DnsLabel",
    "FinetuneRepairSpec",
    "Float",
    "ImportedRepairSpec",
    "Int",
    "Int32",
    "KubernetesSpec",
    "ModelSpec",
    "NeurecoverRepairSpec",
    "PathText",
    "PlainDict",
    "ProvableRepairSpec",
    "ReadinessSpec",
    "RepairConfig",
    "RepairMethodConfig",
    "ResourcesSpec",
    "RunSpec",
    "Seed",
    "StorageSpec",
    "SweepName",
    "SweepSpec",
    "TrainingSpec",
    "check_sweep_name",
    "describe_error",
    "expand",
    "json_schema",
    "load_spec",
    "load_yaml",
    "member_class",
    "method_configs",
    "method_key",
    "parse_spec",
    "slug",
]
