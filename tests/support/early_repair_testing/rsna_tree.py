"""A small RSNA Pneumonia tree of real DICOM files written with pydicom, for data tests."""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from trainer_image.data import rsna

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
KINDS = ("u16", "u8", "mono1", "jpeg", "lut")
# Decoded value of the (dark, bright) regions per kind: 16-bit ranges are stretched to the
# full 0..255, values already inside 0..255 are kept as they are.
EXPECTED = {
    "u16": (0, 255),
    "u8": (40, 200),
    "mono1": (0, 255),
    "jpeg": (40, 200),
    "lut": (40, 200),
}
CT_ID = "ct-small-sample"


def _dataset(patient_id: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.PatientID = patient_id
    ds.Modality = "CR"
    return ds


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
) -> None:
    """An uncompressed DICOM file with proper file meta, as a modality would write it."""
    ds = _dataset(path.stem)
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


def write_jpeg_dicom(path: Path, pixels: np.ndarray) -> None:
    """An 8-bit JPEG Baseline DICOM, the encoding of the Kaggle RSNA files."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    ds = _dataset(path.stem)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def pattern(label: int, shape: tuple[int, int], dark: float, bright: float) -> np.ndarray:
    """Pneumonia (1): bright top half; normal (0): bright bottom half; a faint gradient."""
    h, w = shape
    out = np.full(shape, float(dark))
    half = slice(0, h // 2) if label == 1 else slice(h // 2, h)
    out[half] = bright
    return out + np.linspace(0, 1, w)[None, :] * 0.4 * (bright - dark) / 255


def write_xray(path: Path, label: int, kind: str, shape: tuple[int, int] = (64, 64)) -> None:
    if kind == "u16":
        write_dicom(path, pattern(label, shape, 1000, 3000).astype(np.uint16), bits_stored=12)
    elif kind == "u8":
        write_dicom(path, pattern(label, shape, 40, 200).astype(np.uint8))
    elif kind == "mono1":  # stored inverted: high values are dark
        stored = 4000 - pattern(label, shape, 1000, 3000)
        write_dicom(path, stored.astype(np.uint16), photometric="MONOCHROME1", bits_stored=12)
    elif kind == "jpeg":
        write_jpeg_dicom(path, pattern(label, shape, 40, 200).astype(np.uint8))
    elif kind == "lut":  # stored 70 / 150, real values 2 * v - 100 = 40 / 200
        write_dicom(path, pattern(label, shape, 70, 150).astype(np.int16), slope=2, intercept=-100)
    else:
        raise ValueError(kind)


@dataclass
class RsnaTree:
    root: Path
    labels: dict[str, int]  # patientId -> label
    kinds: dict[str, str]  # patientId -> encoding

    @property
    def images(self) -> Path:
        return self.root / rsna.IMAGES_DIR


def write_rsna(root: Path, n: int = 90) -> RsnaTree:
    """Kaggle's layout: labels CSV with a row per box (repeated patients), one DICOM each."""
    images = root / rsna.IMAGES_DIR
    images.mkdir(parents=True)
    rows = ["patientId,x,y,width,height,Target"]
    labels, kinds = {}, {}
    for i in range(n):
        pid = f"{i:04d}a1b2-{(i * 7919) % 10007:05d}"
        label = int(i % 3 == 0)
        kind = KINDS[i % len(KINDS)]
        shape = (64, 80) if i % 4 == 1 else (64, 64)
        write_xray(images / f"{pid}.dcm", label, kind, shape)
        labels[pid], kinds[pid] = label, kind
        if label:
            for box in range(1 + i % 3):  # several boxes: several rows of one patient
                rows.append(f"{pid},{100 + box},{200},{50},{80},1")
        else:
            rows.append(f"{pid},,,,,0")
    shutil.copy(get_testdata_file("CT_small.dcm"), images / f"{CT_ID}.dcm")
    rows.append(f"{CT_ID},,,,,0")
    labels[CT_ID], kinds[CT_ID] = 0, "ct"
    (root / rsna.LABELS_CSV).write_text("\n".join(rows) + "\n")
    return RsnaTree(root, labels, kinds)
