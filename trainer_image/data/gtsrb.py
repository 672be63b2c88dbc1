"""GTSRB (German Traffic Sign Recognition Benchmark) read from its official distribution.

Why this exists: the paper's GTSRB experiment (docs/science.md: VGG16, 43 classes, 32x32
RGB) must run on the dataset exactly as users download it, unpacked from the three official
archives::

    GTSRB/Final_Training/Images/<00000..00042>/*.ppm + GT-<class>.csv   (training images)
    GTSRB/Final_Test/Images/*.ppm                                         (test images)
    GTSRB/Final_Test/Images/GT-final_test.csv                             (test ground truth)

The CSVs are semicolon-separated: Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId.

Split (docs/science.md): the official training set -> 70% train / 30% repair, stratified
with the split seed (``stratify: false``: a plain seeded random split, as the released
code); the official test set is the test set. Images are resized whole to ``image_size``
(default 32) with Pillow's bilinear filter: the paper's code resized the full image and
ignored the ROI, so that is the default; ``preprocess: released`` prepares them as the
released code did instead (HSV V-channel histogram equalisation, centre square crop,
anti-aliased resize; ``trainer_image.data.released``). ``options: {crop_roi: true}`` (or
``prepare --crop-roi``) crops to the annotated ROI first (the ROI corners are inclusive,
so the crop box is X1, Y1, X2 + 1, Y2 + 1, clamped to the image).
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
from trainer_image.data.released import gtsrb_image

NUM_CLASSES = 43
DEFAULT_IMAGE_SIZE = 32
REPAIR_FRACTION = 0.3
COLUMNS = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")
TEST_CSV = "GT-final_test.csv"
LAYOUT = (
    "the layout must be GTSRB/Final_Training/Images/<00000..00042>/{*.ppm,GT-<class>.csv} and"
    " GTSRB/Final_Test/Images/{*.ppm,GT-final_test.csv} (see inputs/README.md)"
)


class GtsrbOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    crop_roi: bool = False


def find_root(folder: Path) -> Path:
    """The GTSRB folder: ``folder`` itself or its ``GTSRB`` child (as the archives unpack)."""
    if not folder.is_dir():
        raise BadInput(f"{folder}: no such folder; {LAYOUT}")
    if (folder / "GTSRB").is_dir() and not (folder / "Final_Training").exists():
        return folder / "GTSRB"
    return folder


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise BadInput(f"{path}: missing; {LAYOUT}")
    return path


def _items(
    csv: Path, folder: Path, skipped: Skipped, root: Path, expect_class: int | None
) -> list[Item]:
    """Rows of one ground-truth CSV as Items; listed-but-absent and unlisted files reported."""
    df = read_table(csv, COLUMNS, ";", LAYOUT)
    labels = int_column(df, "ClassId", csv)
    rois = np.stack([int_column(df, c, csv) for c in COLUMNS[3:7]], axis=1)
    if expect_class is None:
        bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    else:  # a training CSV describes its own class folder only
        bad = np.flatnonzero(labels != expect_class)
    if len(bad):
        row = int(bad[0])
        want = f"{expect_class} (its folder)" if expect_class is not None else "0..42"
        raise BadInput(f"{csv}: line {row + 2}: ClassId {labels[row]} should be {want}")
    listed = set()
    items = []
    for name, label, roi in zip(df["Filename"].str.strip(), labels, rois, strict=True):
        path = folder / name
        listed.add(name)
        rel = path.relative_to(root).as_posix()
        if not path.is_file():
            skipped.add("missing", rel)
            continue
        items.append(Item(rel, path, int(label), tuple(int(v) for v in roi)))
    for path in sorted(folder.glob("*.ppm")):
        if path.name not in listed:
            skipped.add("unlabelled", path.relative_to(root).as_posix())
    return items


def settings(spec: DatasetSpec) -> dict[str, Any]:
    """The spec fields that shape the prepared arrays, as the manifest records them."""
    return {"stratify": spec.stratify, "preprocess": spec.preprocess}


def _decoder(size: int, crop_roi: bool, released: bool = False) -> Any:
    def decode(item: Item) -> np.ndarray:
        try:
            with Image.open(item.path) as im:
                if crop_roi:
                    x1, y1, x2, y2 = item.extra
                    w, h = im.size
                    box = (max(0, x1), max(0, y1), min(w, x2 + 1), min(h, y2 + 1))
                    if box[0] >= box[2] or box[1] >= box[3]:
                        raise Unreadable(f"empty ROI {item.extra} in a {w}x{h} image")
                    im = im.crop(box)
                if released:
                    return gtsrb_image(np.asarray(im.convert("RGB"), dtype=np.uint8), size)
                rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
        except Unreadable:
            raise
        except MemoryError:
            raise
        except Exception as e:  # Pillow raises many types for damaged files; all mean "skip"
            raise Unreadable(f"{type(e).__name__}: {e}") from e

    return decode


def prepare(spec: DatasetSpec, *, progress: Progress | None = None, workers: int = 1) -> Prepared:
    """Read the raw GTSRB folder ``spec.input`` into one array and split it."""
    if not spec.input:
        raise BadInput(f"datasets[{spec.key}].input: not set; {LAYOUT}")
    options = parse_options(GtsrbOptions, spec)
    size = spec.image_size or DEFAULT_IMAGE_SIZE
    root = find_root(Path(spec.input).expanduser())
    train_dir = _require_dir(root / "Final_Training" / "Images")
    test_dir = _require_dir(root / "Final_Test" / "Images")
    skipped = Skipped()

    train_items: list[Item] = []
    for cls in range(NUM_CLASSES):
        folder = _require_dir(train_dir / f"{cls:05d}")
        csv = folder / f"GT-{cls:05d}.csv"
        if not csv.is_file():
            raise BadInput(
                f"{csv}: missing; every class folder holds its GT-<class>.csv as"
                " unpacked from GTSRB_Final_Training_Images.zip"
            )
        train_items += _items(csv, folder, skipped, root, cls)

    # The ground-truth archive unpacks GT-final_test.csv on its own; accept it next to the
    # images (documented) or one or two levels up, where users often leave it.
    test_csvs = [test_dir / TEST_CSV, test_dir.parent / TEST_CSV, root / TEST_CSV]
    test_csv = next((p for p in test_csvs if p.is_file()), None)
    if test_csv is None:
        raise BadInput(
            f"{test_csvs[0]}: missing; unpack GTSRB_Final_Test_GT.zip (the"
            f" GT-final_test.csv with ClassId) into {test_dir}"
        )
    test_items = _items(test_csv, test_dir, skipped, root, None)

    items = train_items + test_items
    total = len(items) + skipped.count
    decode = _decoder(size, options.crop_roi, spec.preprocess == "released")
    x, y, kept = read_images(items, decode, (3, size, size), skipped, progress, workers)
    check_skipped("gtsrb", skipped, total, spec.max_bad_fraction, len(y))

    is_test = kept >= len(train_items)
    official_train = np.flatnonzero(~is_test)
    if not len(official_train) or not is_test.any():
        raise BadInput(
            f"{root}: no usable {'test' if len(official_train) else 'training'} images; {LAYOUT}"
        )
    train_i, repair_i = stratified(
        y[official_train],
        REPAIR_FRACTION,
        spec.split_seed,
        f"{root} (official training set)",
        spec.stratify,
    )
    return Prepared(
        dataset="gtsrb",
        x=x,
        y=y,
        names=[items[i].name for i in kept],
        index={
            "train": official_train[train_i],
            "repair": official_train[repair_i],
            "test": np.flatnonzero(is_test),
        },
        num_classes=NUM_CLASSES,
        split_seed=spec.split_seed,
        source=str(root.absolute()),
        options=options.model_dump(),
        skipped=skipped,
        candidates=total,
        split_rule={
            "repair_fraction_of_official_train": REPAIR_FRACTION,
            "test": "official test set",
            "stratified": spec.stratify,
            "resize": "bilinear" if spec.preprocess == "resize" else "released (docs/science.md)",
        },
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
    options = parse_options(GtsrbOptions, spec)
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
