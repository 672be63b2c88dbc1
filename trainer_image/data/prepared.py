"""Prepared splits: a raw dataset read once into compact uint8 arrays, stored, read back verified.

Why this exists: GTSRB and RSNA arrive as tens of thousands of small files (and DICOM
decoding is slow), yet every training pod of a sweep needs exactly the same splits.
``early-repair prepare`` reads the raw folder once and writes a handful of ``.npy`` files
plus a manifest through the Store protocol (a folder or S3); each pod then downloads them
and checks their sha256 before training. Small local runs can instead prepare on the fly
in memory from the same code path, so both routes produce identical arrays.

Layout under the prepared URI (the root of a Store)::

    train/x.npy   train/y.npy     uint8 N x C x H x W images, int64 N labels
    train/names.txt               the raw file of each row, one per line (for audits)
    repair/{x.npy,y.npy,names.txt}
    test/{x.npy,y.npy,names.txt}
    manifest.json                 written last: its presence means the rest is complete

The validation split is not stored: it is held out of ``train`` at load time with the
training spec's ``validation_split`` and ``validation`` rule (``Holdout``), as for every
dataset. The manifest records every spec field that changes the arrays (image size, split
seeds, ``stratify``, ``preprocess``, the dataset's options); a spec that disagrees with the
splits it points at is refused.

Reading is streaming: images are decoded one by one into one preallocated uint8 array (the
raw-file toolkit, :mod:`~trainer_image.data.raw`), and splits are written to temporary files
in chunks, so peak memory stays near the size of the prepared arrays rather than the raw
images. This module needs numpy and the standard library only (no torch), so ``prepare``
runs on install-light machines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator import catalog
from orchestrator.errors import BadInput, StoreError
from orchestrator.spec import DatasetSpec, StorageSpec
from orchestrator.store import KeyMissing, Store, open_results
from trainer_image.data import Holdout, Split, Splits
from trainer_image.data.raw import Progress, Skipped
from trainer_image.versions import package_versions

log = logging.getLogger(__name__)

FORMAT = "early-repair-prepared"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "repair", "test")
# Bytes per chunk when writing or compacting a split: bounds the temporary copy that
# fancy indexing makes.
CHUNK_BYTES = 4 * 2**20
# Spec fields recorded in the manifest (beside split_seed and options), with the value that
# a manifest written before the field existed implies.
SETTINGS_BEFORE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "stratify": lambda manifest: True,
    "preprocess": lambda manifest: "resize",
    "test_split_seed": lambda manifest: manifest["split_seed"],
}
# How `early-repair prepare` sets each of them.
SETTINGS_FLAGS = {
    "stratify": "--stratify / --no-stratify",
    "preprocess": "--preprocess",
    "test_split_seed": "--test-split-seed",
}


@dataclass
class Prepared:
    """Everything ``prepare`` read: all kept images once, and the split as index arrays."""

    dataset: str
    x: np.ndarray  # K x C x H x W uint8, every kept image once
    y: np.ndarray  # K int64
    names: list[str]  # K raw file names (relative to the source), to trace a row back
    index: dict[str, np.ndarray]  # split name -> sorted positions in x / y
    num_classes: int
    split_seed: int
    source: str
    options: dict[str, Any]
    skipped: Skipped
    candidates: int  # raw files considered (kept + skipped)
    split_rule: dict[str, Any]  # how the split was made, for the manifest
    notes: dict[str, Any] = field(default_factory=dict)
    # Spec fields that shaped the arrays (SETTINGS_BEFORE's keys), checked at load time.
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> list[int]:
        return [int(s) for s in self.x.shape[1:]]

    def counts(self) -> dict[str, list[int]]:
        return {
            name: np.bincount(self.y[idx], minlength=self.num_classes).tolist()
            for name, idx in self.index.items()
        }

    def parts(self) -> dict[str, Split]:
        return {name: Split(self.x[idx], self.y[idx]) for name, idx in self.index.items()}

    def describe(self) -> dict[str, Any]:
        """The manifest minus the per-file entries (which exist only once written)."""
        counts = self.counts()
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "num_classes": self.num_classes,
            "image_shape": self.image_shape,
            "dtype": "uint8",
            "split_seed": self.split_seed,
            **self.settings,
            "split_rule": self.split_rule,
            "options": self.options,
            "source": self.source,
            "candidates": self.candidates,
            "images": len(self.y),
            "skipped": self.skipped.report(),
            "notes": self.notes,
            "tool": package_versions("early-repair", "numpy", "pillow", "pydicom"),
            "splits": {
                name: {"count": len(self.index[name]), "class_counts": counts[name]}
                for name in SPLITS
            },
        }


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_npy(path: Path, source: np.ndarray, idx: np.ndarray) -> None:
    """Write ``source[idx]`` as .npy in chunks: never a full copy of the split in memory."""
    shape = (len(idx), *source.shape[1:])
    header = {
        "descr": np.lib.format.dtype_to_descr(source.dtype),
        "fortran_order": False,
        "shape": shape,
    }
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * source.dtype.itemsize)
    step = max(1, CHUNK_BYTES // row_bytes)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, len(idx), step):
            f.write(np.ascontiguousarray(source[idx[start : start + step]]).data)


def check_output(store: Store, dataset: str, overwrite: bool) -> None:
    """Refuse to replace prepared splits unless asked: nothing already there is lost."""
    if not overwrite and (store.exists(MANIFEST) or store.list("train")):
        raise BadInput(
            f"{store.uri}: already holds prepared splits; choose another --out"
            f" or pass --overwrite to replace them ({dataset})"
        )


def write_prepared(prep: Prepared, store: Store) -> dict[str, Any]:
    """Write the splits, then the manifest (the completion marker); return the manifest."""
    manifest = prep.describe()
    manifest["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    # An old manifest must not vouch for half-replaced arrays while we write.
    store.delete_prefix(MANIFEST)
    with tempfile.TemporaryDirectory(prefix="early-repair-prepare-") as tmp:
        for name in SPLITS:
            idx = prep.index[name]
            files = {}
            for array, source in (("x", prep.x), ("y", prep.y)):
                key = f"{name}/{array}.npy"
                path = Path(tmp, f"{name}-{array}.npy")
                _write_npy(path, source, idx)
                files[array] = {
                    "key": key,
                    "sha256": _sha256(path),
                    "bytes": path.stat().st_size,
                    "dtype": str(source.dtype),
                    "shape": [len(idx), *source.shape[1:]],
                }
                store.upload_file(key, path)
                path.unlink()
            # Which raw file each row came from: for audits, not needed for training.
            key = f"{name}/names.txt"
            text = "".join(f"{prep.names[i]}\n" for i in idx).encode()
            files["names"] = {
                "key": key,
                "sha256": hashlib.sha256(text).hexdigest(),
                "bytes": len(text),
            }
            store.write_bytes(key, text)
            manifest["splits"][name]["files"] = files
    store.write_bytes(MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def read_manifest(store: Store, dataset: str) -> dict[str, Any]:
    try:
        manifest = json.loads(store.read_bytes(MANIFEST))
    except KeyMissing as e:
        raise BadInput(
            f"{store.uri}: no {MANIFEST}; write prepared splits there first with"
            f" `early-repair prepare {dataset} --input DIR --out {store.uri}`"
        ) from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(
            f"{store.uri}/{MANIFEST}: not valid JSON; re-run `early-repair"
            " prepare` with --overwrite"
        ) from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadInput(f"{store.uri}/{MANIFEST}: not an early-repair prepared-splits manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BadInput(
            f"{store.uri}: prepared with format version"
            f" {manifest.get('format_version')}, this tool reads {FORMAT_VERSION};"
            " re-run `early-repair prepare` with --overwrite"
        )
    if manifest.get("dataset") != dataset:
        raise BadInput(
            f"{store.uri}: holds prepared {manifest.get('dataset')!r} splits, not"
            f" {dataset!r}; point datasets[].prepared at the {dataset} splits"
        )
    return manifest


def read_prepared(store: Store, dataset: str) -> tuple[dict[str, Split], dict[str, Any]]:
    """Download every split, verify sha256, dtype and shape against the manifest."""
    manifest = read_manifest(store, dataset)
    parts: dict[str, Split] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="early-repair-prepared-") as tmp:
            for name in SPLITS:
                arrays = {}
                for array in ("x", "y"):
                    entry = manifest["splits"][name]["files"][array]
                    path = Path(tmp, f"{name}-{array}.npy")
                    try:
                        store.download_file(entry["key"], path)
                    except KeyMissing as e:
                        raise BadInput(
                            f"{store.uri}/{entry['key']}: missing although the"
                            " manifest lists it; re-run `early-repair prepare`"
                            " with --overwrite"
                        ) from e
                    if _sha256(path) != entry["sha256"]:
                        raise BadInput(
                            f"{store.uri}/{entry['key']}: sha256 differs from the"
                            " manifest (corrupt or replaced); re-run `early-repair"
                            " prepare` with --overwrite"
                        )
                    arr = np.load(path, allow_pickle=False)
                    if str(arr.dtype) != entry["dtype"] or list(arr.shape) != entry["shape"]:
                        raise BadInput(
                            f"{store.uri}/{entry['key']}: {arr.dtype}"
                            f" {list(arr.shape)} does not match the manifest"
                        )
                    arrays[array] = arr
                    path.unlink()
                parts[name] = Split(arrays["x"], arrays["y"])
    except (KeyError, TypeError) as e:
        raise BadInput(
            f"{store.uri}/{MANIFEST}: incomplete manifest (no {e});"
            " re-run `early-repair prepare` with --overwrite"
        ) from e
    n = manifest["num_classes"]
    for name, part in parts.items():
        if len(part) and (part.y.min() < 0 or part.y.max() >= n):
            raise BadInput(f"{store.uri}/{name}/y.npy: labels outside 0..{n - 1}")
    return parts, manifest


def check_matches(
    spec: DatasetSpec,
    manifest: dict[str, Any],
    options: dict[str, Any],
    default_size: int,
    settings: dict[str, Any] | None = None,
) -> None:
    """The spec and the prepared splits must describe the same data, or training lies."""
    where = f"datasets[{spec.key}]"
    size = spec.image_size or default_size
    if manifest["image_shape"][-1] != size:
        raise BadInput(
            f"{where}.image_size is {size} but {spec.prepared} holds"
            f" {manifest['image_shape'][-1]}px images; set image_size:"
            f" {manifest['image_shape'][-1]} or prepare again with --image-size"
            f" {size}"
        )
    if manifest["split_seed"] != spec.split_seed:
        raise BadInput(
            f"{where}.split_seed is {spec.split_seed} but {spec.prepared} was"
            f" split with {manifest['split_seed']}; set split_seed:"
            f" {manifest['split_seed']} or prepare again with --split-seed"
            f" {spec.split_seed}"
        )
    for key, want in (settings or {}).items():
        got = manifest[key] if key in manifest else SETTINGS_BEFORE[key](manifest)
        if got != want:
            raise BadInput(
                f"{where}.{key} is {json.dumps(want)} but {spec.prepared} was prepared with"
                f" {key} {json.dumps(got)}; set {key}: {json.dumps(got)} or prepare again"
                f" ({SETTINGS_FLAGS[key]})"
            )
    if manifest.get("options", {}) != options:
        raise BadInput(
            f"{where}.options {options} differ from those {spec.prepared} was"
            f" prepared with {manifest.get('options')}; make them equal"
        )


def hold_out_in_place(train: Split, fraction: float, holdout: Holdout) -> tuple[Split, Split]:
    """``hold_out_validation`` without a second copy of the training images.

    The same rows (the same ``holdout.split``), but the kept rows are moved to the front
    of the array they are in, chunk by chunk, instead of being copied out: peak memory is
    the training array plus the validation rows, not twice the training array. The
    returned training images are a view of ``train.x``, which is overwritten.
    """
    keep, held = holdout.split(train.y, fraction)
    val = train.subset(held)
    x = train.x
    step = max(1, CHUNK_BYTES // max(1, x[:1].nbytes))
    for start in range(0, len(keep), step):
        block = keep[start : start + step]
        # keep is ascending, so keep[i] >= i: a row only ever moves towards the front, onto
        # a row already moved or held out, never onto one that has yet to move.
        x[start : start + len(block)] = x[block]
    return Split(x[: len(keep)], train.y[keep]), val


def load_dataset(
    spec: DatasetSpec,
    validation_split: float,
    *,
    storage: StorageSpec | None,
    prepare: Callable[[DatasetSpec], Prepared],
    options: dict[str, Any],
    default_size: int,
    settings: dict[str, Any],
    holdout: Holdout | None = None,
) -> Splits:
    """The shared ``load`` of prepared datasets: from the store, or prepared on the fly.

    ``settings`` are the manifest entries the spec implies (what ``prepare`` would record).
    """
    if spec.prepared:
        store = open_results(spec.prepared, storage or StorageSpec())
        parts, manifest = read_prepared(store, spec.name)
        check_matches(spec, manifest, options, default_size, settings)
        meta = {k: v for k, v in manifest.items() if k != "splits"}
        meta["prepared"] = store.uri
    elif spec.input:
        prep = prepare(spec)
        parts = prep.parts()
        meta = {k: v for k, v in prep.describe().items() if k != "splits"}
        meta["prepared"] = None
        del prep  # the split copies are all that is needed from here on
    else:
        raise BadInput(
            f"datasets[{spec.key}]: set input (the raw folder, see inputs/README.md)"
            " or prepared (a URI written by `early-repair prepare`)"
        )
    holdout = holdout or Holdout("fixed", spec.split_seed)
    try:
        train, val = hold_out_in_place(parts["train"], validation_split, holdout)
    except ValueError as e:  # sklearn: too few images per class to stratify
        raise BadInput(
            f"datasets[{spec.key}]: cannot hold out a stratified validation split"
            f" of {validation_split:g} from {len(parts['train'])} training images"
            f" ({e})"
        ) from e
    return Splits(
        train=train,
        val=val,
        repair=parts["repair"],
        test=parts["test"],
        num_classes=int(meta["num_classes"]),
        meta=meta,
    )


def prepare_to_store(
    spec: DatasetSpec,
    output: str,
    *,
    storage: StorageSpec | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    workers: int = 1,
) -> tuple[str, dict[str, Any]]:
    """``early-repair prepare``: read the raw folder once, write the splits; (uri, manifest)."""
    preparer = catalog.dataset_preparer(spec.name)
    if not spec.input:
        raise BadInput("prepare: --input is required (the raw dataset folder)")
    store = open_results(output, storage or StorageSpec())
    check_output(store, spec.name, overwrite)
    # Read everything before writing anything: a bad raw folder leaves the output untouched.
    prep = catalog.resolve(preparer)(spec, progress=progress, workers=workers)
    try:
        manifest = write_prepared(prep, store)
    except OSError as e:
        raise StoreError(f"{store.uri}: cannot write prepared splits ({e})") from e
    return store.uri, manifest
