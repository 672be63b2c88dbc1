"""The released code's image preprocessing (``preprocess: released``), in numpy and scipy.

Why this exists: the paper's companion code prepared its images with scikit-image, and
one way to ask whether Table 1 depends on that choice is to prepare the data the same way.
scikit-image is not a dependency of this project; its three operations used there are
small, so they are written here on numpy and scipy.ndimage (which scikit-image itself calls):

* ``equalise_v``: ``rgb2hsv``, ``exposure.equalize_hist`` of the V channel, ``hsv2rgb``.
  Only V changes and, for a fixed hue and saturation, RGB is proportional to V, so the
  round trip is ``rgb x V' / V`` (a black pixel, V = 0, has saturation 0 and becomes grey
  V'). ``equalize_hist``: a 256-bin histogram over the image's own [min, max], the
  normalised cumulative histogram, and each value mapped by linear interpolation between
  the bin centres.
* ``centre_square``: the released crop - rows and columns ``centre -/+ min_side // 2``,
  so an odd shorter side loses one pixel.
* ``resize``: ``transform.resize`` with its defaults (bilinear, mode ``reflect``,
  anti-aliasing when shrinking): a Gaussian of sigma ``max(0, (factor - 1) / 2)`` per axis,
  then ``ndimage.zoom(order=1, grid_mode=True)`` (pixel areas aligned, not pixel centres),
  both with ndimage's ``mirror`` boundary (numpy's ``reflect``), then clipped to the
  input's range.

The released code kept float32 images in [0, 1]; prepared splits here are uint8, so the
result is rounded to the nearest of 256 levels (an error of at most 1/510).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

NBINS = 256


def equalize_hist(values: np.ndarray, nbins: int = NBINS) -> np.ndarray:
    """scikit-image's ``exposure.equalize_hist`` of a float array (no mask)."""
    counts, edges = np.histogram(values, bins=nbins)
    centres = (edges[:-1] + edges[1:]) / 2
    cdf = counts.cumsum() / counts.sum()
    return np.interp(values.ravel(), centres, cdf).reshape(values.shape)


def equalise_v(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 float RGB in [0, 1] with its HSV value channel histogram-equalised."""
    v = rgb.max(axis=2)
    v_eq = equalize_hist(v)
    scale = np.divide(v_eq, v, out=np.zeros_like(v_eq), where=v > 0)
    out = rgb * scale[:, :, None]
    black = v == 0
    out[black] = v_eq[black][:, None]
    return out


def centre_square(image: np.ndarray) -> np.ndarray:
    """The released code's centre crop to a square of side ``2 x (min_side // 2)``."""
    h, w = image.shape[:2]
    half = min(h, w) // 2
    cy, cx = h // 2, w // 2
    return image[cy - half : cy + half, cx - half : cx + half]


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """scikit-image's ``transform.resize(image, (size, size))`` of a float image (2-D or
    H x W x C), with its defaults: anti-aliased bilinear, ``reflect`` boundary, clipped."""
    image = np.asarray(image, dtype=np.float64)
    out_shape = (size, size, *image.shape[2:])
    factors = np.divide(image.shape, out_shape)
    filtered = image
    if any(o < i for o, i in zip(out_shape, image.shape, strict=True)):
        sigma = np.maximum(0, (factors - 1) / 2)
        filtered = ndimage.gaussian_filter(image, sigma, mode="mirror")
    out = ndimage.zoom(filtered, 1 / factors, order=1, mode="mirror", grid_mode=True)
    return np.clip(out, image.min(), image.max())


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float64 [0, 1] as scikit-image's ``img_as_float`` computes it.

    ``x * (1 / 255)``, not ``x / 255``: the two differ in the last bit for some values, and a
    last bit can move a value across a histogram bin edge of ``equalize_hist``.
    """
    return np.multiply(image, 1.0 / 255, dtype=np.float64)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> the nearest of 256 levels."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def gtsrb_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """One H x W x 3 uint8 traffic sign -> 3 x size x size uint8, as the released code."""
    img = equalise_v(to_float(rgb))
    return to_uint8(resize(centre_square(img), size)).transpose(2, 0, 1)


def rsna_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """One raw DICOM pixel array -> 1 x size x size uint8, as the released code.

    No modality LUT and no MONOCHROME1 inversion; values outside 0..255 are stretched
    linearly to it and truncated to integers (``astype('uint8')``); values inside are read
    as 0..255 whatever their stored type (scikit-image would have divided a 16-bit array by
    65535; the Kaggle files are all 8-bit, where both agree).
    """
    img = np.asarray(pixels)
    lo, hi = float(img.min()), float(img.max())
    if lo < 0 or hi > 255:
        span = hi - lo
        img = (img - lo) * (1 / span * 255) if span > 0 else np.zeros(img.shape)
        img = img.astype(np.uint8)
    return to_uint8(resize(to_float(img.astype(np.uint8)), size))[None]
