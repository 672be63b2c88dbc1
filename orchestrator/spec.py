"""The sweep spec: what a researcher writes (YAML), validated by pydantic, expanded into runs.

Specs are data. One ``SweepSpec`` describes datasets x models x seeds (x repair classes,
which a run repairs one after another); ``expand`` turns it into ``RunSpec`` objects, one
per dataset x model x seed, in a fixed order so that run index N means the same run on a
laptop and in a Kubernetes Indexed Job. Defaults equal the paper's text (docs/science.md);
every place where the released code deviated is a documented field so either behaviour can
be reproduced. Fields added after the first release stay out of the stored spec while they
hold their default (``_added``), so the sweep.json and the spec hash of an existing spec
never change when a field is added. This module is imported by the control plane and the
trainer alike, so it must stay light (no torch).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    NodeEvent,
)

from orchestrator import catalog
from orchestrator.catalog import is_import_path
from orchestrator.errors import BadInput, one_line
from orchestrator.urls import endpoint_problem, uri_credentials_problem

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Sweep names become object names: "<name>-<8 hex>" plus the Job controller's pod
# suffix "-<index>-<5 random>" must stay within 63 characters.
MAX_SWEEP_NAME = 40
MAX_RUN_NAME = 63

# Built-in datasets that read raw files and so have a preprocessing choice.
RAW_DATASETS = ("gtsrb", "rsna")
# Built-in models with an ImageNet input layer when pretrained.
IMAGENET_MODELS = ("vgg16", "densenet121")

# Bounds that keep a hostile or mistyped spec from reaching the runs (or the memory) at all.
INT64_MAX = 2**63 - 1  # what JSON consumers, Kubernetes int64 fields and torch seeds hold
INT32_MAX = 2**31 - 1  # Kubernetes int32 fields (parallelism, backoffLimitPerIndex, ...)
SPLIT_SEED_MAX = 2**32 - 1  # scikit-learn's random_state goes to numpy's RandomState
MAX_RUNS = 100_000  # an Indexed Job allows at most 100,000 completions
MAX_SPEC_BYTES = 4 << 20  # 100,000 seeds fit, even as indented JSON (sweep.json)
MAX_DEPTH = 64  # YAML nesting (mappings and sequences); a spec needs fewer than 10
# Nodes of the spec with every YAML alias expanded: bounds the memory an alias bomb takes
# once validation and hashing walk it as a tree.
MAX_NODES = 1_000_000
# The C parser when PyYAML has it: ~30x faster, and it refuses absurd nesting by itself.
_YAML_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _not_bool(value: Any) -> Any:
    # YAML's `true`/`yes`/`on` are booleans; pydantic would take them as 1 (or 1.0).
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


def _finite(value: Any) -> Any:
    # Before range checks, so `.nan` is called what it is rather than "not >= 0".
    _not_bool(value)
    try:
        number = float(value) if isinstance(value, float | str) else None
    except ValueError:
        return value  # not a number at all: pydantic says so
    if number is not None and not math.isfinite(number):
        raise ValueError(f"expected a finite number, not {value!r}")
    return value


# Shared number types: integers in 64 bits and never a boolean or a string; floats finite
# (`.inf`/`.nan` would pass `gt=0` and fail only once a run started) and never a boolean.
# Floats stay lax about strings because YAML 1.1 reads `1e-4` (no dot) as a string.
Int = Annotated[int, Strict(), BeforeValidator(_not_bool), Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
Int32 = Annotated[int, Strict(), BeforeValidator(_not_bool), Field(ge=-(2**31), le=INT32_MAX)]
Seed = Annotated[int, Strict(), BeforeValidator(_not_bool), Field(ge=0, le=INT64_MAX)]
Float = Annotated[float, BeforeValidator(_finite), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]
Bytes = Annotated[ByteSize, BeforeValidator(_not_bool), Field(le=INT64_MAX)]


def _plain(value: Any, where: str = "") -> None:
    """Free-form data (options, tolerations): JSON-like, with finite numbers in 64 bits."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where or 'a'} key {k!r} is not a string")
            _plain(v, f"{where}.{k}" if where else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain(v, f"{where}.{i}" if where else str(i))
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where or 'value'}: {value} is not a finite number")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        raise ValueError(f"{where or 'value'}: {value} does not fit in 64 bits")
    elif not isinstance(value, str | int | float | type(None)):
        raise ValueError(f"{where or 'value'}: a {type(value).__name__} is not plain data")


def _plain_data(value: Any) -> Any:
    _plain(value)
    return value


def _endpoint(value: str | None) -> str | None:
    problem = endpoint_problem(value) if value is not None else None
    if problem:
        raise ValueError(problem)
    return value.rstrip("/") if value else value


def _path_text(value: str | None) -> str | None:
    if value is None:
        return value
    if "\x00" in value:
        raise ValueError("a path may not contain a NUL character")
    problem = uri_credentials_problem(value)
    if problem:  # s3://KEY:SECRET@bucket would be written to sweep.json and a ConfigMap
        raise ValueError(problem)
    return value


PlainDict = Annotated[dict[str, Any], AfterValidator(_plain_data)]
PathText = Annotated[str, AfterValidator(_path_text)]


def _added(default: Any, **kwargs: Any) -> Any:
    """A field added after the first release: left out of dumps while it holds ``default``.

    Dumps are what the spec hash, sweep.json and every run.json are made of; leaving a new
    field out at its default keeps them byte-identical for specs that never set it.
    """
    same: Callable[[Any], bool] = lambda value: value == default  # noqa: E731
    return Field(default, exclude_if=same, **kwargs)


def _dns_label(value: str) -> str:
    if not DNS1123_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a valid Kubernetes name: use lower-case letters, digits and '-',"
            " starting and ending with a letter or digit"
        )
    return value


def _sweep_name(value: str) -> str:
    _dns_label(value)
    if len(value) > MAX_SWEEP_NAME:
        raise ValueError(f"{value!r} is longer than {MAX_SWEEP_NAME} characters")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
SweepName = Annotated[str, AfterValidator(_sweep_name)]


def check_sweep_name(value: str, field: str | None = None) -> str:
    """``value`` if it can be a sweep's name (a spec's ``name``), else BadInput - before a
    name typed on the command line becomes a path, a label selector or an object name."""
    if not (
        isinstance(value, str) and len(value) <= MAX_SWEEP_NAME and DNS1123_LABEL.fullmatch(value)
    ):
        shown = repr(value) if len(value) <= 60 else repr(value[:57] + "...")
        where = f"{field}: " if field else ""
        raise BadInput(
            one_line(
                f"{where}{shown} is not a sweep name: sweep names are the spec's `name`,"
                f" lower-case letters, digits and '-', at most {MAX_SWEEP_NAME} characters"
            )
        )
    return value


@functools.lru_cache(maxsize=1024)  # run names of a 100,000-run sweep ask for the same few
def slug(value: str) -> str:
    """A DNS-1123 label derived from a registry key or an import path."""
    out = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")
    return out or "x"


def _as_named(value: Any) -> Any:
    # Lets YAML say `datasets: [digits]` as well as `datasets: [{name: digits, ...}]`.
    return {"name": value} if isinstance(value, str) else value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, (str, dict)) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    """One dataset of the grid."""

    name: str = Field(
        description=f"Built-in dataset ({', '.join(catalog.DATASETS)}) or an import path"
        " 'pkg.module:fn' returning prepared splits."
    )
    label: DnsLabel | None = Field(
        None, description="Short name used in run names; derived from `name` when omitted."
    )
    input: PathText | None = Field(
        None, description="Folder holding the raw dataset as distributed (see inputs/README.md)."
    )
    prepared: PathText | None = Field(
        None,
        description="URI (path, file:// or s3://) of splits written by `early-repair prepare`;"
        " preferred over `input` when both are set.",
    )
    num_classes: Int | None = Field(
        None, gt=1, description="Number of classes; required for import-path datasets."
    )
    image_size: Int | None = Field(
        None, gt=0, description="Side of the square input images (gtsrb 32, rsna 160)."
    )
    split_seed: Int = Field(
        42, ge=0, le=SPLIT_SEED_MAX, description="Seed of the train/repair/test split (32 bits)."
    )
    # Split and preprocessing choices of the released code (docs/science.md).
    stratify: Bool = _added(
        True,
        description="Split by label (train/repair, and test where the dataset has a test"
        " split), so every class keeps its share. false: a plain seeded random split, as the"
        " released GTSRB code (whose shuffle was also unseeded, so its split cannot be"
        " reproduced exactly).",
    )
    test_split_seed: Int | None = _added(
        None,
        ge=0,
        le=SPLIT_SEED_MAX,
        description="Seed of the test split of digits and rsna (default: split_seed); the"
        " train/repair split keeps split_seed. The released RSNA code used 43 with split_seed"
        " 42. Not for gtsrb, whose test set is the official one.",
    )
    preprocess: Literal["resize", "released"] = _added(
        "resize",
        description="gtsrb and rsna images. resize: the whole image resized with Pillow's"
        " bilinear filter (rsna: modality LUT, 0..255 rescale when outside it, MONOCHROME1"
        " inverted). released: the released code's scikit-image pipeline - gtsrb: histogram"
        " equalisation of the HSV V channel, centre square crop, anti-aliased resize; rsna: raw"
        " pixels, truncating 0..255 rescale when outside it, anti-aliased resize.",
    )
    max_bad_fraction: Float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of unreadable or unlabelled raw files tolerated before failing.",
    )
    repair_classes: list[Int] | None = Field(
        None, description="Classes to repair for this dataset; overrides `repair.classes`."
    )
    options: PlainDict = Field(
        default_factory=dict, description="Extra keyword arguments for import-path datasets."
    )

    @property
    def key(self) -> str:
        return self.label or slug(self.name)

    @property
    def classes(self) -> int | None:
        builtin = catalog.DATASETS.get(self.name)
        return self.num_classes or (builtin.num_classes if builtin else None)

    @model_validator(mode="after")
    def _known(self) -> DatasetSpec:
        if why := catalog.unknown("dataset", catalog.DATASETS, self.name):
            raise ValueError(why)
        if is_import_path(self.name) and self.num_classes is None:
            raise ValueError(f"dataset {self.name!r} is an import path: set num_classes")
        if self.preprocess != "resize" and self.name not in RAW_DATASETS:
            raise ValueError(
                f"preprocess: {self.preprocess!r} applies to {' and '.join(RAW_DATASETS)} only;"
                f" remove it for {self.name!r}"
            )
        if self.test_split_seed is not None and self.name == "gtsrb":
            raise ValueError(
                "test_split_seed: gtsrb's test set is the official one, it is not split;"
                " remove test_split_seed"
            )
        if is_import_path(self.name) and (not self.stratify or self.test_split_seed is not None):
            raise ValueError(
                f"dataset {self.name!r} is an import path and makes its own splits:"
                " stratify and test_split_seed apply to the built-in datasets only"
                " (pass your own choices in `options`)"
            )
        return self

    @property
    def test_seed(self) -> int:
        """The seed of the test split (digits, rsna): test_split_seed, else split_seed."""
        return self.split_seed if self.test_split_seed is None else self.test_split_seed


class ModelSpec(_Strict):
    """One model architecture of the grid."""

    name: str = Field(
        description=f"Built-in model ({', '.join(catalog.MODELS)}) or an import path"
        " 'pkg.module:fn' returning a torch module whose last layer is Linear."
    )
    label: DnsLabel | None = Field(None, description="Short name used in run names.")
    pretrained: Bool | None = Field(
        None, description="Start from ImageNet weights (vgg16 default true, others false)."
    )
    weights: PathText | None = Field(
        None, description="Local file with pretrained weights; never downloaded at run time."
    )
    normalise: Literal["imagenet", "none"] = _added(
        "imagenet",
        description="Input of a pretrained model (vgg16, densenet121). imagenet: the [0, 1]"
        " images are normalised with ImageNet's mean and std, as torchvision's weights expect."
        " none: fed [0, 1] RGB as they are, as the released code fed VGG16. Import-path models"
        " receive it as the keyword `normalise` when it is not the default.",
    )
    options: PlainDict = Field(
        default_factory=dict, description="Extra keyword arguments for the model factory."
    )

    @property
    def key(self) -> str:
        return self.label or slug(self.name)

    @property
    def is_pretrained(self) -> bool:
        """``pretrained``, or the model's own default (vgg16 true, others false)."""
        return self.pretrained if self.pretrained is not None else self.name == "vgg16"

    @model_validator(mode="before")
    @classmethod
    def _legacy_normalize(cls, data: Any) -> Any:
        # Before `normalise` existed, `options: {normalize: false}` switched it off.
        if not isinstance(data, dict) or not isinstance(data.get("options"), dict):
            return data
        options = dict(data["options"])
        if "normalize" not in options:
            return data
        legacy = "imagenet" if options.pop("normalize") else "none"
        if data.get("normalise", legacy) != legacy:
            raise ValueError("options.normalize contradicts normalise; keep normalise only")
        return {**data, "options": options, "normalise": legacy}

    @model_validator(mode="after")
    def _known(self) -> ModelSpec:
        if why := catalog.unknown("model", catalog.MODELS, self.name):
            raise ValueError(why)
        without_imagenet_input = self.name not in IMAGENET_MODELS or not self.is_pretrained
        builtin = self.name in catalog.MODELS
        if self.normalise != "imagenet" and builtin and without_imagenet_input:
            raise ValueError(
                f"normalise: {self.normalise!r} applies to pretrained"
                f" {' and '.join(IMAGENET_MODELS)} only (a model trained from scratch"
                " has no ImageNet input layer); remove it or set pretrained: true"
            )
        return self


class ReadinessSpec(_Strict):
    """When a model is ready for repair, decided while it trains from the validation split and
    the repair set only - never from the test set."""

    policy: str = Field(
        "repaired-val-qual",
        description=f"Built-in policy ({', '.join(catalog.READINESS_POLICIES)}) or an import"
        " path 'pkg.module:Class' of a trainer_image.readiness.ReadinessPolicy subclass."
        " repaired-val-qual: Qual(alpha, c) of the repaired model on the validation split,"
        " after every online repair (needs training.repair_every). val-loss: the unrepaired"
        " validation loss, every epoch (what early stopping watches).",
    )
    alpha: Float = Field(
        0.5,
        ge=0,
        le=1,
        description="Stakeholder weight of Qual = alpha x Acc_c + (1 - alpha) x Acc_total.",
    )
    repair_class: Int | None = Field(
        None,
        description="The repaired class whose Qual is watched; default: every repaired class,"
        " each decided on its own.",
    )
    method: str | None = Field(
        None,
        description="The repair method whose result is watched; default: every configured one.",
    )
    patience: Int = Field(
        5,
        gt=0,
        description="Fire after this many evaluations without improvement (one evaluation per"
        " online repair for repaired-val-qual, per epoch for val-loss).",
    )
    min_delta: Float = Field(
        0.0, ge=0, description="An improvement smaller than this does not reset the patience."
    )
    action: Literal["stop", "record"] = Field(
        "record",
        description="stop: end training once the policy has fired for everything it watches"
        " (the ready epochs' checkpoints are kept); record: only record in"
        " train/summary.json where it fired, to evaluate it against the full curve.",
    )

    @model_validator(mode="after")
    def _known(self) -> ReadinessSpec:
        if why := catalog.unknown("readiness policy", catalog.READINESS_POLICIES, self.policy):
            raise ValueError(why)
        return self


# TrainingSpec fields that came after the first sweeps (see TrainingSpec's serializer).
TRAINING_ADDITIONS = ("state_every", "repair_every", "readiness")


class TrainingSpec(_Strict):
    """The paper's training procedure; fields marked 'released code' reproduce its deviations."""

    optimizer: Literal["sgd"] = Field(
        "sgd", description="sgd (the only choice): torch's SGD with momentum and weight_decay."
    )
    lr: Float = Field(1e-2, gt=0, description="Initial learning rate (released code: 1e-4).")
    momentum: Float = Field(0.9, ge=0, lt=1, description="SGD momentum in [0, 1); 0 = none.")
    weight_decay: Float = Field(
        0.0, ge=0, description="SGD weight decay (L2 penalty); 0 = none, as in the paper."
    )
    lr_schedule: Literal["step", "compound"] = Field(
        "step",
        description="step: lr x gamma every lr_step_epochs epochs. compound: the released"
        " code's bug, current lr x gamma^floor(epoch/lr_step_epochs) every epoch.",
    )
    lr_step_epochs: Int = Field(
        10, gt=0, description="Epochs between learning-rate steps (see lr_schedule)."
    )
    lr_gamma: Float = Field(
        0.1, gt=0, le=1, description="Factor of each learning-rate step; 1 = a constant rate."
    )
    batch_size: Int = Field(128, gt=0, description="Released code effectively used 4.")
    max_epochs: Int = Field(
        30, gt=0, description="Train at most this many epochs (early stopping may end sooner)."
    )
    early_stopping: Bool = Field(
        True, description="Stop when val loss stalls (released code: never stopped early)."
    )
    patience: Int = Field(5, gt=0, description="Epochs without val-loss improvement.")
    min_delta: Float = Field(0.0, ge=0, description="Improvement smaller than this is none.")
    checkpoint_every: Int = Field(
        5, gt=0, description="Keep (and repair) the checkpoint of every N-th epoch."
    )
    checkpoint_first: Bool = Field(True, description="Also keep epoch 1.")
    checkpoint_convergence: Bool = Field(True, description="Also keep the convergence epoch.")
    validation_split: Float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Share of the training split held out for validation (see `validation`).",
    )
    # How the released code held out validation data and ordered batches (docs/science.md).
    validation: Literal["fixed", "per-seed"] = _added(
        "fixed",
        description="fixed: validation_split of the training split held out stratified with"
        " the dataset's split_seed, the same images for every training seed. per-seed: the"
        " released code - floor(validation_split x n) images chosen by numpy's"
        " RandomState(training seed), not stratified, so every seed validates on others.",
    )
    shuffle_each_epoch: Bool = _added(
        True,
        description="Draw a new batch order every epoch. false: one order, drawn once from the"
        " training seed, reused in every epoch (the released code never reshuffled).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto: the GPU when one is visible, else the CPU. cuda: a GPU or the run"
        " fails as bad input. cpu: never a GPU (and no wait for the GPU guard).",
    )
    num_threads: Int | None = Field(
        None, gt=0, description="CPU threads for torch; default: what the scheduler gives."
    )
    state_every: Int | None = Field(
        1,
        ge=1,
        description="Store a resumable training state (train/state.pt) every this many epochs"
        " and at the last one, so that a killed run resumes after that epoch; null: never.",
    )
    repair_every: Int | None = Field(
        None,
        ge=1,
        description="Also repair the model after every N-th epoch's validation (dense online"
        " repair: records as for a checkpoint); null: only the checkpoint set is repaired.",
    )
    readiness: ReadinessSpec | None = Field(
        None, description="A policy that says, during training, when the model is ready for repair."
    )

    @model_serializer(mode="wrap")
    def _omit_unset_additions(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Fields added after sweeps existed are dumped only when they differ from their
        # default, so a spec that does not use them keeps its dump, its spec_hash and thus
        # its Kubernetes object names: submitting it again still creates nothing new.
        data = handler(self)
        for name in TRAINING_ADDITIONS:
            if name in data and getattr(self, name) == TrainingSpec.model_fields[name].default:
                del data[name]
        return data

    @model_validator(mode="after")
    def _online(self) -> TrainingSpec:
        if (
            self.readiness is not None
            and self.readiness.policy == "repaired-val-qual"
            and self.repair_every is None
        ):
            raise ValueError(
                "readiness policy 'repaired-val-qual' watches online repairs: set"
                " training.repair_every (e.g. 1)"
            )
        return self


class _RepairCommon(_Strict):
    """What every repair method shares: which classes it repairs, and its seed."""

    method: str = Field(description="The repair method.")
    classes: list[Int] = Field(
        default_factory=list, description="Target classes repaired in every run."
    )
    seed: Seed = Field(
        0, description="Mixed with run seed, epoch and class: the method's random seed."
    )
    methods: list[str | dict[str, Any]] | None = _added(
        None,
        description="Repair every checkpoint x class with each of these methods (a sweep"
        " dimension): a method name (arachne, arachne-de, finetune, or 'pkg.module:fn') or a"
        " mapping {method: NAME, ...its fields}. Fields set in this `repair` block that a"
        " method also has (seed, n_positives, positives, ...) are inherited; the entry naming"
        " this block's own `method` is this block. Default: this block's method alone.",
    )

    def configs(self) -> list[RepairMethodConfig]:
        """One config per method to run, in the order of ``methods``."""
        return method_configs(self)

    @model_validator(mode="after")
    def _methods(self) -> _RepairCommon:
        if self.methods is not None:
            if not self.methods:
                raise ValueError("methods: list at least one method, or leave it out")
            method_configs(self)  # every entry valid now, not when a run gets there
        return self

    accept: Literal["always", "fixes-some", "no-worse-val"] = _added(
        "always",
        description="Which patches are kept. always (the paper): every one. fixes-some: only"
        " a patch that fixes at least one repair-set negative of the class. no-worse-val: only"
        " one under which Qual(0.5, c) on the validation split does not drop. A rejected patch"
        " leaves the unrepaired model (record accepted: false, empty patch.json). A method"
        " listed again with another rule gets its own folder, repair/<method>+<accept>/.",
    )

    @property
    def key(self) -> str:
        """The method's folder in the result layout (``repair/<key>/class_C``); a rule other
        than ``accept: always`` is part of it, so one method under two rules is two methods."""
        base = method_key(self.method)
        return base if self.accept == "always" else f"{base}+{self.accept}"


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


# The name Arachne's config had while it was the only method.
RepairSpec = ArachneSpec


# --- repair methods beyond arachne --------------------------------------------------
# The fields they share with Arachne take Arachne's definition (default, bounds,
# description), so the methods cannot drift apart on them.
_ARACHNE = ArachneSpec.model_fields


def _method_required(schema: dict[str, Any]) -> None:
    # Only arachne may leave `method` out; in the JSON Schema the other members must name
    # it, or a block without `method` would match several members of the oneOf.
    schema["required"] = sorted({*schema.get("required", []), "method"})


class _LastLayerCommon(_RepairCommon):
    """What the methods over Arachne's problem share with it: the positives, the fault
    localisation and the memory bound of a batch of scores."""

    n_positives: int = _ARACHNE["n_positives"]  # Arachne's field: its Int type included
    positives: Literal["uniform", "with-replacement-dedup", "balanced"] = Field(
        "uniform",
        description="How the positives are drawn, as Arachne's `positives`: uniform,"
        " with-replacement-dedup or balanced. The same seed draws the same positives for"
        " every method.",
    )
    grad_factor: int = _ARACHNE["grad_factor"]
    max_batch_bytes: ByteSize = _ARACHNE["max_batch_bytes"]


class ArachneDERepairSpec(_LastLayerCommon):
    """Arachne as in its TOSEM 2023 version: differential evolution over the same weights."""

    model_config = ConfigDict(json_schema_extra=_method_required)

    method: Literal["arachne-de"] = Field(
        "arachne-de", description="Arachne with differential evolution (TOSEM 2023)."
    )
    population: Int = Field(
        100, ge=4, description="Candidates per generation (TOSEM 100); DE/rand/1 needs >= 4."
    )
    generations: Int = Field(100, gt=0, description="At most this many generations (TOSEM 100).")
    patience: Int = Field(
        10, gt=0, description="Stop after this many generations without a better best."
    )
    mutation: tuple[Float, Float] = Field(
        (0.5, 1.0),
        description="The scale factor F is drawn from U(low, high) once per generation.",
    )
    recombination: Float = Field(
        0.7, ge=0, le=1, description="Binomial crossover rate (one dimension always crosses)."
    )
    patch_aggr: Float = Field(
        10.0,
        gt=0,
        description="Weight of the negatives in the fitness N_intact' + patch_aggr x N_patched'.",
    )
    update: Literal["batched", "asynchronous"] = Field(
        "batched",
        description="batched: the whole generation is built from the previous one and scored"
        " at once (classic synchronous DE, fast). asynchronous: TOSEM's order, each trial"
        " replaces its target at once and later trials of the generation see it (exact;"
        " about 2-3x the time on small layers).",
    )

    @field_validator("mutation")
    @classmethod
    def _mutation_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got [{low}, {high}]")
        return value


class FinetuneRepairSpec(_LastLayerCommon):
    """Baseline: gradient descent on the final Linear layer only, near its original weights."""

    model_config = ConfigDict(json_schema_extra=_method_required)

    method: Literal["finetune"] = Field(
        "finetune", description="Fine-tune the final layer on the negatives and positives."
    )
    steps: Int = Field(100, gt=0, description="Full-batch gradient-descent steps.")
    lr: Float = Field(
        1.0,
        gt=0,
        description="Step size in units of 1/L, L a bound on the loss's curvature that"
        " scales with the squared feature norm; below 2 every step lowers the loss.",
    )
    neg_weight: Float = Field(
        1.0, ge=0, description="Weight of the negatives' mean cross-entropy in the loss."
    )
    pos_weight: Float = Field(
        1.0, ge=0, description="Weight of the sampled positives' mean cross-entropy."
    )
    l2: Float = Field(
        0.01, ge=0, description="Penalty l2 x sum (w - w_original)^2 toward the original layer."
    )
    weights: Literal["all", "localised"] = Field(
        "all",
        description="all: every weight of the final layer moves. localised: only those"
        " Arachne's fault localisation picks (grad_factor), the others stay fixed.",
    )


class ImportedRepairSpec(_RepairCommon):
    """A repair method of your own, by import path; it validates its own `options`."""

    method: str = Field(
        pattern=r"^[\w.]+:[\w.]+$",
        description="Import path 'package.module:function' of a RepairMethod"
        " (trainer_image.repair.base).",
    )
    options: PlainDict = Field(
        default_factory=dict, description="Keyword settings passed to the method as `cfg.options`."
    )


IMPORTED = "import-path"


def _method(value: Any) -> Any:
    return (
        value.get("method", "arachne")
        if isinstance(value, dict)
        else getattr(value, "method", "arachne")
    )


def _known_method(value: Any) -> Any:
    method = _method(value)
    if isinstance(method, str) and (
        why := catalog.unknown("repair method", catalog.REPAIR_METHODS, method)
    ):
        raise ValueError(why)
    return value


def _repair_tag(value: Any) -> str | None:
    """The union member for a repair config: its `method`; no `method` means arachne."""
    method = _method(value)
    if not isinstance(method, str):
        return "arachne"  # whose Literal then names the problem
    return IMPORTED if is_import_path(method) else method


# One member per method in the catalog (a new method adds its config class here), plus
# user methods by import path. Dumps are those of the member: arachne's equals the
# RepairSpec of before there was a union, so spec hashes did not change.
RepairConfig = Annotated[
    Annotated[ArachneSpec, Tag("arachne")]
    | Annotated[ArachneDERepairSpec, Tag("arachne-de")]
    | Annotated[FinetuneRepairSpec, Tag("finetune")]
    | Annotated[ImportedRepairSpec, Tag(IMPORTED)],
    Discriminator(_repair_tag),
    # Names are checked against the catalog first, for an error that names the method.
    BeforeValidator(_known_method),
]
REPAIR_TAGS = frozenset({*catalog.REPAIR_METHODS, IMPORTED})
RepairMethodConfig = ArachneSpec | ArachneDERepairSpec | FinetuneRepairSpec | ImportedRepairSpec
_REPAIR_ADAPTER: TypeAdapter[Any] = TypeAdapter(RepairConfig)


def method_key(method: str) -> str:
    """A method's folder name: its catalog name, or a slug of its import path."""
    return slug(method) if is_import_path(method) else method


def method_configs(block: _RepairCommon) -> list[RepairMethodConfig]:
    """The configs of every method a `repair` block asks for (see ``_RepairCommon.methods``).

    Each entry is validated as its own method's config, starting from the fields the block
    set that the method also has, so `seed: 3` in the block seeds every method.
    """
    own: Any = block.model_copy(update={"methods": None})
    if block.methods is None:
        return [own]
    inherited = {
        name: getattr(block, name)
        for name in block.model_fields_set - {"method", "methods", "classes"}
    }
    configs: list[RepairMethodConfig] = []
    for i, entry in enumerate(block.methods):
        fields = {"method": entry} if isinstance(entry, str) else dict(entry)
        if "methods" in fields:
            raise ValueError(f"methods.{i}: a method entry cannot list methods itself")
        if fields.get("method") == block.method:
            start = own.model_dump()
        else:
            target = _member_fields(fields.get("method"))
            start = {"classes": block.classes} | {k: v for k, v in inherited.items() if k in target}
        try:
            configs.append(_REPAIR_ADAPTER.validate_python({**start, **fields}))
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"] if str(p) not in REPAIR_TAGS)
            msg = first["msg"].removeprefix("Value error, ")
            raise ValueError(f"methods.{i}{'.' + loc if loc else ''}: {msg}") from e
    keys = [c.key for c in configs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"methods: {dup!r} appears twice; list each method once")
    return configs


def _member_fields(method: Any) -> set[str]:
    """The field names of the config class of ``method`` (empty when it names none)."""
    members: dict[str, type[BaseModel]] = {
        "arachne": ArachneSpec,
        "arachne-de": ArachneDERepairSpec,
        "finetune": FinetuneRepairSpec,
    }
    if isinstance(method, str) and is_import_path(method):
        return set(ImportedRepairSpec.model_fields)
    cls = members.get(method) if isinstance(method, str) else None
    return set(cls.model_fields) if cls is not None else set()


class ResourcesSpec(_Strict):
    gpus: Int = Field(0, ge=0, description="GPUs per run; 0 = CPU only.")
    cpu: str = Field("2", description="Kubernetes CPU request per run.")
    memory: str = Field("8Gi", description="Kubernetes memory request per run.")
    min_free_vram: Bytes = Field(
        ByteSize(0), description="Wait until each visible GPU has this much free (e.g. 10GiB)."
    )
    max_used_vram: Bytes | None = Field(
        None, description="Also wait until each visible GPU has at most this much in use."
    )
    vram_estimate: Bytes = Field(
        ByteSize(2 * 2**30), description="Memory one run needs, for packing runs onto GPUs."
    )
    guard_timeout_s: Float = Field(
        3600.0, gt=0, description="Seconds the GPU guard waits at most (finite; 86400 = a day)."
    )
    guard_poll_s: Float = Field(10.0, gt=0, description="Longest pause between GPU checks.")


class KubernetesSpec(_Strict):
    namespace: DnsLabel = Field(
        "early-repair",
        description="Namespace of the sweep's ConfigMap and Job; `--namespace` overrides it.",
    )
    parallelism: Int32 | None = Field(
        None,
        gt=0,
        description="Runs at once (the Job's parallelism). Default: all runs at once; with a"
        " Kueue queue, Kueue may start fewer (see min_parallelism).",
    )
    min_parallelism: Int32 | None = _added(
        None,
        gt=0,
        description="With a Kueue queue: the fewest runs at once Kueue may start the sweep"
        " with when the queue's quota cannot hold `parallelism` runs (Kueue partial"
        " admission, Job annotation kueue.x-k8s.io/job-min-parallelism; the Job keeps the"
        " admitted parallelism until it ends). Default 1: a sweep larger than the quota starts"
        " in parts instead of never; set it to `parallelism` for all-or-nothing admission.",
    )
    backoff_limit_per_index: Int32 = Field(
        2,
        ge=0,
        description="Retries of a failed run (the Job's backoffLimitPerIndex); bad input"
        " (exit 2) is never retried and evicted pods do not count.",
    )
    max_failed_indexes: Int32 | None = Field(
        None,
        ge=0,
        description="Fail the whole Job once more runs than this have failed (the Job's"
        " maxFailedIndexes); default: every run is tried.",
    )
    ttl_seconds_after_finished: Int32 = Field(
        86400,
        ge=0,
        description="Seconds after the Job finishes before Kubernetes deletes it and its pods"
        " (and the ConfigMap `submit` made); 86400 = a day, 0 = at once.",
    )
    active_deadline_seconds: Int | None = Field(
        None,
        gt=0,
        description="Seconds the whole Job may run before Kubernetes stops its pods and fails"
        " it (activeDeadlineSeconds); default: no limit.",
    )
    queue: DnsLabel | None = Field(None, description="Kueue LocalQueue name.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must run on (nodeSelector)."
    )
    tolerations: list[PlainDict] = Field(
        default_factory=list,
        description="Pod tolerations as Kubernetes writes them; with resources.gpus > 0, one"
        " for the nvidia.com/gpu NoSchedule taint is added.",
    )
    affinity: PlainDict | None = Field(
        None, description="Pod affinity as Kubernetes writes it (nodeAffinity, podAffinity, ...)."
    )
    priority_class_name: str | None = Field(
        None, description="PriorityClass of the pods; default: the cluster's default priority."
    )
    runtime_class_name: str | None = Field(
        None, description="RuntimeClass of the pods (e.g. nvidia); default: the node's runtime."
    )
    service_account: DnsLabel = Field(
        "early-repair-trainer",
        description="ServiceAccount the pods run as (no API token is mounted); k8s/ and the"
        " chart create the default.",
    )
    s3_secret: DnsLabel = Field("early-repair-s3", description="Secret with AWS_* keys.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="When the kubelet pulls `image` (the imagePullPolicy)."
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list,
        description="Secrets in the namespace with credentials for a private `image` registry.",
    )

    @model_validator(mode="after")
    def _partial_admission(self) -> KubernetesSpec:
        if self.min_parallelism is None:
            return self
        if self.queue is None:
            raise ValueError(
                "min_parallelism only applies to a sweep queued by Kueue: set kubernetes.queue"
                " or remove min_parallelism"
            )
        if self.parallelism is not None and self.min_parallelism > self.parallelism:
            raise ValueError(
                f"min_parallelism ({self.min_parallelism}) is larger than parallelism"
                f" ({self.parallelism}): lower it or raise parallelism"
            )
        return self


class StorageSpec(_Strict):
    endpoint_url: Annotated[str | None, AfterValidator(_endpoint)] = Field(
        None,
        description="S3 endpoint, e.g. MinIO's URL: http(s)://host[:port], no credentials"
        " (those come from the AWS chain).",
    )
    region: str | None = Field(
        None, description="The bucket's S3 region (AWS_REGION in pods); default: the AWS chain's."
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto",
        description="S3 URL style: auto (botocore decides), path (endpoint/bucket/key, what"
        " MinIO often needs) or virtual (bucket.endpoint/key).",
    )


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


def describe_error(err: ValidationError, source: str) -> str:
    """One line naming the field and the problem (pydantic's own words)."""
    first = err.errors()[0]
    parts = [str(p) for p in first["loc"]]
    # pydantic names the union member in the location (repair.arachne.particles); the
    # user wrote repair.particles.
    parts = [
        p for i, p in enumerate(parts) if not (i and parts[i - 1] == "repair" and p in REPAIR_TAGS)
    ]
    # A check of the whole spec (loc ()) names its fields itself.
    loc = ".".join(parts) + ": " if parts else ""
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return one_line(f"{source}: {loc}{msg}{more}")


def parse_spec(data: Any, source: str = "spec") -> SweepSpec:
    if not isinstance(data, dict):
        raise BadInput(
            f"{source}: the spec must be a mapping of fields (see `early-repair schema`)"
        )
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as e:
        raise BadInput(describe_error(e, source)) from e
    except RecursionError as e:  # a dict that contains itself, handed in by a caller
        raise BadInput(f"{source}: the spec refers to itself; write it out as a tree") from e


def _read_spec_text(p: Path) -> str:
    """The file's text, reading at most MAX_SPEC_BYTES (+1 to notice more): /dev/zero or a
    multi-gigabyte file is refused without being read."""
    try:
        with p.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError as e:
        raise BadInput(f"{p}: no such file; pass the path of a sweep YAML file") from e
    except (OSError, ValueError) as e:  # a folder, no permission, a symlink loop, a NUL byte
        why = getattr(e, "strerror", None) or type(e).__name__
        raise BadInput(f"{p}: cannot read the sweep file ({why})") from e
    if len(data) > MAX_SPEC_BYTES:
        raise BadInput(
            f"{p}: larger than {MAX_SPEC_BYTES // 1024} KiB; a sweep file is a short YAML"
            " document (pass data through files it names, not inline)"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInput(f"{p}: not a text file (not UTF-8); pass a sweep YAML file") from e


def _check_shape(text: str, source: str) -> None:
    """Walk the YAML events (no objects built) and refuse nesting deeper than MAX_DEPTH or
    more than MAX_NODES nodes once aliases are expanded - before anything is constructed,
    so an alias bomb or a 50,000-deep document costs neither memory nor a deep recursion."""
    sizes: list[int] = [0]  # expanded node count of each open collection; [0] is the root
    anchors: list[str | None] = [None]
    done: dict[str, int] = {}  # anchor -> expanded size of its finished node

    def add(n: int, line: int) -> None:
        sizes[-1] += n
        if sizes[-1] > MAX_NODES:
            raise BadInput(
                f"{source}: more than {MAX_NODES:,} values once YAML aliases are expanded"
                f" (line {line}); write the spec out without an alias bomb"
            )

    for event in yaml.parse(text, Loader=_YAML_LOADER):
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, CollectionStartEvent):
            if len(sizes) > MAX_DEPTH:
                raise BadInput(
                    f"{source}: nested deeper than {MAX_DEPTH} levels (line {line}); a sweep"
                    " spec needs only a few"
                )
            sizes.append(1)
            anchors.append(event.anchor)
            if event.anchor:
                done.pop(event.anchor, None)  # open: an alias to it now would be a cycle
        elif isinstance(event, CollectionEndEvent):
            size, anchor = sizes.pop(), anchors.pop()
            if anchor:
                done[anchor] = size
            add(size, line)
        elif isinstance(event, AliasEvent):
            if event.anchor in anchors:
                raise BadInput(f"{source}: alias *{event.anchor} refers to itself (line {line})")
            add(done.get(event.anchor or "", 1), line)  # an unknown one: the loader says so
        elif isinstance(event, NodeEvent):  # a scalar
            if event.anchor:
                done[event.anchor] = 1
            add(1, line)


def load_yaml(path: str | Path) -> Any:
    """A YAML (or JSON) file as plain data, within bounds: at most MAX_SPEC_BYTES, nested
    at most MAX_DEPTH deep, at most MAX_NODES values with aliases expanded."""
    p = Path(path)
    text = _read_spec_text(p)
    try:
        _check_shape(text, str(p))
        return yaml.load(text, Loader=_YAML_LOADER)  # CSafeLoader or SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None)
        why = f" ({' '.join(str(problem).split())})" if problem else ""
        raise BadInput(one_line(f"{p}: not valid YAML{where}{why}; fix the syntax")) from e
    except (ValueError, OverflowError) as e:  # an int of 5,000 digits, a date like 2024-13-45
        raise BadInput(one_line(f"{p}: a value cannot be read ({e}); fix it")) from e


def load_spec(path: str | Path, **overrides: Any) -> SweepSpec:
    """Read a YAML (or JSON) sweep file; ``overrides`` replace top-level fields."""
    data = load_yaml(path)
    if isinstance(data, dict):
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return parse_spec(data, str(path))


def json_schema() -> dict[str, Any]:
    """The sweep spec's JSON Schema; pydantic writes draft 2020-12, named by ``$schema``, and
    ``$id`` names this schema by the version of early-repair that wrote it."""
    from orchestrator import __version__

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:early-repair:sweep-spec:{__version__}",
        **SweepSpec.model_json_schema(),
    }
