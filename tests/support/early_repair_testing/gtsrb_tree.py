"""A small GTSRB tree in the official layout (PPM files, ';' CSVs), for data tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainer_image.data import gtsrb

HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
MARGIN = 5  # black border around the ROI


def class_colour(cls: int) -> tuple[int, int, int]:
    return (10 + 5 * cls, 240 - 5 * cls, (37 * cls) % 200 + 20)


@dataclass
class GtsrbTree:
    base: Path  # the folder holding GTSRB/
    truth: dict[str, int]  # name relative to GTSRB/ -> class
    train: list[str]
    test: list[str]

    @property
    def root(self) -> Path:
        return self.base / "GTSRB"


def _ppm(path: Path, cls: int, rng: np.random.Generator) -> str:
    w, h = (int(v) for v in rng.integers(30, 61, size=2))
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[MARGIN : h - MARGIN, MARGIN : w - MARGIN] = class_colour(cls)
    Image.fromarray(pixels).save(path, format="PPM")
    # ROI corners are inclusive in GTSRB's annotations.
    return f"{path.name};{w};{h};{MARGIN};{MARGIN};{w - MARGIN - 1};{h - MARGIN - 1};{cls}\n"


def write_gtsrb(
    base: Path, train_per_class: int = 8, test_per_class: int = 3, seed: int = 0
) -> GtsrbTree:
    """The three official archives unpacked under ``base``; class c gets extra c % 3 images."""
    rng = np.random.default_rng(seed)
    root = base / "GTSRB"
    truth: dict[str, int] = {}
    train, test = [], []
    for cls in range(gtsrb.NUM_CLASSES):
        folder = root / "Final_Training" / "Images" / f"{cls:05d}"
        folder.mkdir(parents=True)
        rows = [HEADER]
        for i in range(train_per_class + cls % 3):
            path = folder / f"{i // 30:05d}_{i % 30:05d}.ppm"
            rows.append(_ppm(path, cls, rng))
            name = path.relative_to(root).as_posix()
            truth[name] = cls
            train.append(name)
        (folder / f"GT-{cls:05d}.csv").write_text("".join(rows))
    test_dir = root / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    rows = [HEADER]
    order = rng.permutation(np.repeat(np.arange(gtsrb.NUM_CLASSES), test_per_class))
    for i, cls in enumerate(order):
        path = test_dir / f"{i:05d}.ppm"
        rows.append(_ppm(path, int(cls), rng))
        name = path.relative_to(root).as_posix()
        truth[name] = int(cls)
        test.append(name)
    (test_dir / "GT-final_test.csv").write_text("".join(rows))
    return GtsrbTree(base, truth, train, test)
