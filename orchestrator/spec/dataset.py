"""The datasets and models of a sweep's grid (``datasets:`` and ``models:`` entries)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from orchestrator import catalog
from orchestrator.catalog import is_import_path
from orchestrator.spec.fields import (
    SPLIT_SEED_MAX,
    Bool,
    DnsLabel,
    Float,
    Int,
    PathText,
    PlainDict,
    _added,
    _Strict,
    slug,
)

# Built-in datasets that read raw files and so have a preprocessing choice.
RAW_DATASETS = ("gtsrb", "rsna")
# Built-in models with an ImageNet input layer when pretrained.
IMAGENET_MODELS = ("vgg16", "densenet121")


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
