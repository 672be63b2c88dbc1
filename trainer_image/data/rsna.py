"""RSNA Pneumonia Detection (Kaggle) chest X-rays, read from the DICOM files as distributed.

Why this exists: the paper's second experiment (docs/science.md: DenseNet121 from scratch,
2 classes, 1 = pneumonia) must read the Kaggle download unchanged::

    stage_2_train_labels.csv               patientId,x,y,width,height,Target (one row per box)
    stage_2_train_images/<patientId>.dcm   one greyscale DICOM per patient

A patient with several boxes has several rows; the label is Target (1 if any row says 1).
Pixels are decoded with pydicom (JPEG-compressed files through its Pillow plugin), the
Modality LUT (RescaleSlope / RescaleIntercept) applied with pydicom's own utility, values
rescaled linearly to 0..255 only when they fall outside it (the paper: "rescaled to 0..255
if needed"), MONOCHROME1 inverted so that bright always means dense, then resized to
``image_size`` (default 160, the paper's code) with Pillow's bilinear filter, one channel.
``preprocess: released`` reads them as the released code did instead (raw pixels,
truncating rescale, anti-aliased resize; ``trainer_image.data.released.rsna_image``).

Split (docs/science.md): 10% test (seeded with ``test_split_seed``, default the split seed;
the released code used 43), then the rest 95% train / 5% repair (the split seed), both
stratified by label unless ``stratify: false``. DICOMs without a label row, labelled
patients without a file and
unreadable DICOMs are skipped and reported (count and first names, in the log and the
manifest); they are fatal only above ``max_bad_fraction`` of all files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from orchestrator.errors import BadInput
from orchestrator.spec import DatasetSpec, StorageSpec
from trainer_image.data import Holdout, Splits
from trainer_image.data.prepared import Prepared, load_dataset
from trainer_image.data.raw import (
    Item,
    Progress,
    Skipped,
    Unreadable,
    check_skipped,
    int_column,
    parse_options,
    read_images,
    read_table,
    stratified,
)
from trainer_image.data.released import rsna_image

NUM_CLASSES = 2
DEFAULT_IMAGE_SIZE = 160
TEST_FRACTION = 0.1
REPAIR_FRACTION = 0.05
LABELS_CSV = "stage_2_train_labels.csv"
IMAGES_DIR = "stage_2_train_images"
KAGGLE_DIR = "rsna-pneumonia-detection-challenge"
COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
LAYOUT = (
    f"the layout must be {LABELS_CSV} (columns {','.join(COLUMNS)}) next to"
    f" {IMAGES_DIR}/<patientId>.dcm (see inputs/README.md)"
)


class RsnaOptions(BaseModel):
    """No options yet; declared so that a misspelt one is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def find_root(folder: Path) -> Path:
    """The folder holding the labels CSV: ``folder`` or the Kaggle archive's folder in it."""
    if not folder.is_dir():
        raise BadInput(f"{folder}: no such folder; {LAYOUT}")
    if not (folder / LABELS_CSV).exists() and (folder / KAGGLE_DIR / LABELS_CSV).exists():
        return folder / KAGGLE_DIR
    return folder


def settings(spec: DatasetSpec) -> dict[str, Any]:
    """The spec fields that shape the prepared arrays, as the manifest records them."""
    return {
        "stratify": spec.stratify,
        "test_split_seed": spec.test_seed,
        "preprocess": spec.preprocess,
    }


def read_dicom(path: Path, size: int, released: bool = False) -> np.ndarray:
    """One DICOM file -> 1 x size x size uint8 (see the module docstring for the steps)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise Unreadable(f"PhotometricInterpretation {photometric}, expected greyscale")
        pixels = ds.pixel_array
        if pixels.ndim != 2:
            raise Unreadable(f"pixel array of shape {pixels.shape}, expected one 2-D frame")
        if released:
            return rsna_image(pixels, size)
        values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    except Unreadable:
        raise
    except MemoryError:
        raise
    except Exception as e:  # pydicom and its decoders raise many types; all mean "skip"
        raise Unreadable(f"{type(e).__name__}: {e}") from e
    lo, hi = float(values.min()), float(values.max())
    if lo < 0 or hi > 255:
        values = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":  # 0 is white: invert so that every image reads alike
        values = 255.0 - values
    resized = Image.fromarray(values).resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.rint(np.asarray(resized)), 0, 255).astype(np.uint8)[None]


def read_labels(csv: Path) -> tuple[dict[str, int], int]:
    """patientId -> Target (max over the patient's rows); also how many patients disagree."""
    df = read_table(csv, COLUMNS, ",", LAYOUT)
    ids = df["patientId"].str.strip()
    targets = int_column(df, "Target", csv)
    bad = np.flatnonzero(~np.isin(targets, (0, 1)) | (ids == "").to_numpy())
    if len(bad):
        row = int(bad[0])
        raise BadInput(
            f"{csv}: line {row + 2}: need a patientId and Target 0 or 1, found"
            f" {ids.iloc[row]!r}, {df['Target'].iloc[row]!r}"
        )
    grouped = df.assign(patientId=ids, Target=targets).groupby("patientId")["Target"]
    per_patient = grouped.max()
    conflicts = int((grouped.nunique() > 1).sum())
    return {str(k): int(v) for k, v in per_patient.items()}, conflicts


def prepare(spec: DatasetSpec, *, progress: Progress | None = None, workers: int = 1) -> Prepared:
    """Read the raw RSNA folder ``spec.input`` into one array and split it."""
    if not spec.input:
        raise BadInput(f"datasets[{spec.key}].input: not set; {LAYOUT}")
    options = parse_options(RsnaOptions, spec)
    size = spec.image_size or DEFAULT_IMAGE_SIZE
    root = find_root(Path(spec.input).expanduser())
    csv = root / LABELS_CSV
    images = root / IMAGES_DIR
    if not csv.is_file():
        raise BadInput(f"{csv}: missing; {LAYOUT}")
    if not images.is_dir():
        raise BadInput(f"{images}: missing; {LAYOUT}")
    labels, conflicts = read_labels(csv)
    files = {p.stem: p for p in images.glob("*.dcm")}

    skipped = Skipped()
    items = []
    for pid in sorted(labels):
        if pid in files:
            items.append(Item(f"{pid}.dcm", files[pid], labels[pid]))
        else:
            skipped.add("missing", f"{IMAGES_DIR}/{pid}.dcm")
    for pid in sorted(set(files) - set(labels)):
        skipped.add("unlabelled", f"{pid}.dcm")
    total = len(set(labels) | set(files))

    released = spec.preprocess == "released"
    x, y, kept = read_images(
        items,
        lambda item: read_dicom(item.path, size, released),
        (1, size, size),
        skipped,
        progress,
        workers,
    )
    check_skipped("rsna", skipped, total, spec.max_bad_fraction, len(y))
    what = f"{root} ({len(y)} images)"
    rest, test = stratified(y, TEST_FRACTION, spec.test_seed, what, spec.stratify)
    train_i, repair_i = stratified(y[rest], REPAIR_FRACTION, spec.split_seed, what, spec.stratify)
    return Prepared(
        dataset="rsna",
        x=x,
        y=y,
        names=[items[i].name for i in kept],
        index={"train": rest[train_i], "repair": rest[repair_i], "test": test},
        num_classes=NUM_CLASSES,
        split_seed=spec.split_seed,
        source=str(root.absolute()),
        options=options.model_dump(),
        skipped=skipped,
        candidates=total,
        split_rule={
            "test_fraction": TEST_FRACTION,
            "repair_fraction_of_rest": REPAIR_FRACTION,
            "stratified": spec.stratify,
            "intensity": "raw pixels; truncating min-max to 0..255 when outside"
            if released
            else "modality LUT; min-max to 0..255 when outside; MONOCHROME1 inverted",
            "resize": "released (docs/science.md)" if released else "bilinear",
        },
        notes={"patients_with_conflicting_targets": conflicts},
        settings=settings(spec),
    )


def load(
    spec: DatasetSpec,
    validation_split: float,
    *,
    storage: StorageSpec | None = None,
    holdout: Holdout | None = None,
    **_: Any,
) -> Splits:
    """Prepared splits from ``spec.prepared``, or prepared in memory from ``spec.input``."""
    options = parse_options(RsnaOptions, spec)
    return load_dataset(
        spec,
        validation_split,
        storage=storage,
        prepare=prepare,
        options=options.model_dump(),
        default_size=DEFAULT_IMAGE_SIZE,
        settings=settings(spec),
        holdout=holdout,
    )
