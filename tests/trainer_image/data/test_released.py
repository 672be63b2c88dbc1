"""``preprocess: released`` against an independent computation of the released code's
scikit-image steps, on fixture images in the official layouts.

The reference here shares nothing with ``trainer_image.data.released``: HSV through
matplotlib's converters, the histogram by comparing every value with every bin edge, the
Gaussian and the bilinear resampling written out pixel by pixel from their definitions
(scipy's ``mirror`` boundary, pixel areas aligned as ``grid_mode`` does). (The module itself
was also checked once against scikit-image 0.26: equal to 7e-16 on 50 images.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from early_repair_testing.gtsrb_tree import write_gtsrb
from early_repair_testing.rsna_tree import write_rsna
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image

from orchestrator.errors import BadInput
from orchestrator.spec import DatasetSpec
from orchestrator.store.file import FileStore
from trainer_image.data import gtsrb, released, rsna
from trainer_image.data.prepared import write_prepared

# --- the reference, from the definitions ---------------------------------------------------


def ref_equalize(v: np.ndarray) -> np.ndarray:
    edges = np.linspace(v.min(), v.max(), 257)
    flat = v.ravel()
    bins = np.minimum((flat[:, None] >= edges[None, :]).sum(1) - 1, 255)
    counts = np.array([(bins == b).sum() for b in range(256)])
    cdf = np.cumsum(counts) / flat.size
    centres = (edges[:-1] + edges[1:]) / 2
    out = np.empty_like(flat)
    for i, value in enumerate(flat):
        j = np.searchsorted(centres, value, side="right") - 1
        if j < 0:
            out[i] = cdf[0]
        elif j >= 255:
            out[i] = cdf[-1]
        else:
            t = (value - centres[j]) / (centres[j + 1] - centres[j])
            out[i] = cdf[j] + t * (cdf[j + 1] - cdf[j])
    return out.reshape(v.shape)


def ref_equalise_v(rgb: np.ndarray) -> np.ndarray:
    hsv = rgb_to_hsv(rgb)
    hsv[..., 2] = ref_equalize(hsv[..., 2])
    return hsv_to_rgb(hsv)


def mirror(i: int, n: int) -> int:
    """scipy.ndimage's 'mirror' boundary (d c b | a b c d | c b a)."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i %= period
    return period - i if i >= n else i


def ref_gaussian_1d(line: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return line.copy()
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    n = len(line)
    return np.array(
        [
            sum(w * line[mirror(i + o, n)] for o, w in zip(offsets, weights, strict=True))
            for i in range(n)
        ]
    )


def ref_bilinear_1d(line: np.ndarray, size: int) -> np.ndarray:
    n = len(line)
    out = np.empty(size)
    for o in range(size):
        x = (o + 0.5) * n / size - 0.5  # pixel areas aligned (grid_mode)
        x0 = math.floor(x)
        t = x - x0
        out[o] = (1 - t) * line[mirror(x0, n)] + t * line[mirror(x0 + 1, n)]
    return out


def ref_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Gaussian of sigma max(0, (factor - 1) / 2) per axis when shrinking, then bilinear."""
    img = image.astype(np.float64)
    shrink = img.shape[0] > size or img.shape[1] > size
    for axis in (0, 1):
        sigma = max(0.0, (img.shape[axis] / size - 1) / 2) if shrink else 0.0
        img = np.apply_along_axis(ref_gaussian_1d, axis, img, sigma)
    for axis in (0, 1):
        img = np.apply_along_axis(ref_bilinear_1d, axis, img, size)
    return np.clip(img, image.min(), image.max())


def ref_centre_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    return img[top : top + 2 * (side // 2), left : left + 2 * (side // 2)]


def ref_gtsrb(rgb_uint8: np.ndarray, size: int) -> np.ndarray:
    img = ref_centre_square(ref_equalise_v(rgb_uint8 * (1.0 / 255)))
    return ref_resize(img, size)


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """A sign-like RGB image: a dim coloured disc on a gradient, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w * 120, yy / h * 90, np.full((h, w), 40.0)], axis=2)
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
    base[disc] = (150, 30, 40)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


# --- the steps ---------------------------------------------------------------------------


def test_equalise_v_matches_an_hsv_round_trip() -> None:
    rgb = textured(23, 31, 0) * (1.0 / 255)
    rgb[0, :3] = 0.0  # black pixels: saturation 0, they become grey
    np.testing.assert_allclose(released.equalise_v(rgb), ref_equalise_v(rgb), atol=1e-12)
    v = released.equalise_v(rgb).max(axis=2)
    assert v.max() == pytest.approx(1.0)  # the brightest value maps to the full cdf


@pytest.mark.parametrize(("h", "w"), [(30, 41), (41, 30), (33, 33), (15, 20), (8, 9)])
def test_centre_square_crop(h: int, w: int) -> None:
    img = np.arange(h * w).reshape(h, w)
    got = released.centre_square(img)
    np.testing.assert_array_equal(got, ref_centre_square(img))
    side = 2 * (min(h, w) // 2)  # an odd shorter side loses a pixel, as released
    assert got.shape == (side, side)


@pytest.mark.parametrize(
    ("h", "w", "size"), [(60, 48, 32), (40, 40, 32), (20, 26, 32), (17, 40, 32), (100, 77, 24)]
)
def test_resize_matches_gaussian_then_bilinear(h: int, w: int, size: int) -> None:
    img = np.random.default_rng(h * w).random((h, w, 3))
    np.testing.assert_allclose(released.resize(img, size), ref_resize(img, size), atol=1e-12)
    grey = img[:, :, 0]
    np.testing.assert_allclose(released.resize(grey, size), ref_resize(grey, size), atol=1e-12)


# --- the whole chain on fixture files -------------------------------------------------------


@pytest.fixture(scope="module")
def gtsrb_raw(tmp_path_factory: pytest.TempPathFactory):
    tree = write_gtsrb(tmp_path_factory.mktemp("gtsrb"), train_per_class=7, test_per_class=1)
    # Replace a few flat fixture signs with textured ones of odd and mixed sizes.
    for i, name in enumerate(tree.train[:6]):
        h, w = (30 + 7 * i, 45 - 3 * i)
        Image.fromarray(textured(h, w, i)).save(tree.root / name, format="PPM")
    return tree


def test_released_gtsrb_preprocessing_on_fixture_images(gtsrb_raw) -> None:
    spec = DatasetSpec(name="gtsrb", input=str(gtsrb_raw.base), preprocess="released")
    prep = gtsrb.prepare(spec)
    plain = gtsrb.prepare(DatasetSpec(name="gtsrb", input=str(gtsrb_raw.base)))
    assert prep.split_rule["resize"].startswith("released") and prep.settings == {
        "stratify": True,
        "preprocess": "released",
    }
    for row, name in enumerate(prep.names[:12]):
        rgb = np.asarray(Image.open(gtsrb_raw.root / name).convert("RGB"))
        want = ref_gtsrb(rgb, 32)
        got = prep.x[row].transpose(1, 2, 0)
        assert np.abs(got / 255.0 - want).max() <= 0.5 / 255 + 1e-9, name  # rounded to uint8
    np.testing.assert_array_equal(prep.y, plain.y)  # same rows, same split
    assert not np.array_equal(prep.x, plain.x)


def test_released_rsna_preprocessing_on_fixture_dicoms(tmp_path: Path) -> None:
    tree = write_rsna(tmp_path / "raw", n=40)
    spec = DatasetSpec(name="rsna", input=str(tree.root), preprocess="released", image_size=48)
    prep = rsna.prepare(spec)
    kinds = set()
    for row, name in enumerate(prep.names):
        pixels = pydicom.dcmread(tree.root / rsna.IMAGES_DIR / name).pixel_array
        lo, hi = int(pixels.min()), int(pixels.max())
        if lo < 0 or hi > 255:  # (p - min) x (1 / (max - min) x 255), truncated; no LUT
            pixels = np.trunc((pixels.astype(np.float64) - lo) * (1 / (hi - lo) * 255))
        want = ref_resize(pixels * (1.0 / 255), 48)
        assert np.abs(prep.x[row, 0] / 255.0 - want).max() <= 0.5 / 255 + 1e-9, name
        kinds.add(tree.kinds[name.removesuffix(".dcm")])
    assert {"u16", "mono1", "lut", "u8"} <= kinds
    # MONOCHROME1 is not inverted by the released code: its pneumonia half stays dark.
    mono1 = next(i for i, n in enumerate(prep.names) if tree.kinds[n[:-4]] == "mono1")
    normal = rsna.read_dicom(tree.root / rsna.IMAGES_DIR / prep.names[mono1], 48)
    assert np.corrcoef(prep.x[mono1].ravel(), normal.ravel())[0, 1] < -0.9


# --- the manifest records the choice --------------------------------------------------------


def test_prepared_splits_record_preprocess_and_refuse_a_mismatch(gtsrb_raw, tmp_path) -> None:
    spec = DatasetSpec(name="gtsrb", input=str(gtsrb_raw.base), preprocess="released")
    manifest = write_prepared(gtsrb.prepare(spec), FileStore(tmp_path))
    assert manifest["preprocess"] == "released" and manifest["stratify"] is True
    loaded = gtsrb.load(
        DatasetSpec(name="gtsrb", prepared=str(tmp_path), preprocess="released"), 0.2
    )
    assert len(loaded.train) + len(loaded.val) == len(manifest_rows(tmp_path, "train"))
    with pytest.raises(BadInput, match=r'preprocess is "resize" but .* preprocess "released"'):
        gtsrb.load(DatasetSpec(name="gtsrb", prepared=str(tmp_path)), 0.2)


def test_manifest_from_before_the_fields_reads_as_the_defaults(gtsrb_raw, tmp_path) -> None:
    write_prepared(
        gtsrb.prepare(DatasetSpec(name="gtsrb", input=str(gtsrb_raw.base))), FileStore(tmp_path)
    )
    path = tmp_path / "manifest.json"
    old = {
        k: v for k, v in json.loads(path.read_text()).items() if k not in ("preprocess", "stratify")
    }
    path.write_text(json.dumps(old))
    assert len(gtsrb.load(DatasetSpec(name="gtsrb", prepared=str(tmp_path)), 0.2).test) == 43
    with pytest.raises(BadInput, match=r"datasets\[gtsrb\]\.preprocess is \"released\""):
        gtsrb.load(DatasetSpec(name="gtsrb", prepared=str(tmp_path), preprocess="released"), 0.2)


def manifest_rows(root: Path, split: str) -> list[str]:
    return (root / split / "names.txt").read_text().splitlines()
