"""The prepared-splits format: written through the Store protocol (folder and real S3 over
HTTP), read back with checksum verification, and checked against the spec that uses it.
Also: the presets validate, and ``prepare`` never imports torch."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from early_repair_testing.rsna_tree import write_rsna
from early_repair_testing.s3_server import moto_endpoint, s3_bucket, s3_env  # noqa: F401

from orchestrator.errors import BadInput
from orchestrator.spec import DatasetSpec, StorageSpec, load_spec
from orchestrator.store.file import FileStore
from trainer_image.data import Holdout, Split, hold_out_validation, prepared, rsna
from trainer_image.data.prepared import (
    Prepared,
    hold_out_in_place,
    read_prepared,
    write_prepared,
)
from trainer_image.data.raw import Item, Skipped, Unreadable, read_images


def synthetic(n: int = 50, size: int = 8, seed: int = 0) -> Prepared:
    """A Prepared as a reader would return it, from random pixels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 1, size, size), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % 2
    order = rng.permutation(n)
    return Prepared(
        dataset="rsna",
        x=x,
        y=y,
        names=[f"p{i:03d}.dcm" for i in range(n)],
        index={
            "train": np.sort(order[:30]),
            "repair": np.sort(order[30:40]),
            "test": np.sort(order[40:]),
        },
        num_classes=2,
        split_seed=42,
        source="/nowhere",
        options={},
        skipped=Skipped(),
        candidates=n,
        split_rule={},
    )


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rsna(tmp_path_factory.mktemp("rsna") / "raw", n=40).root


def test_round_trip_in_chunks_with_checksums(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(prepared, "CHUNK_BYTES", 200)  # 3 rows a chunk: many chunks
    prep = synthetic()
    store = FileStore(tmp_path)
    manifest = write_prepared(prep, store)
    parts, read = read_prepared(store, "rsna")
    assert read == json.loads((tmp_path / "manifest.json").read_text()) == manifest
    for name in ("train", "repair", "test"):
        idx = prep.index[name]
        np.testing.assert_array_equal(parts[name].x, prep.x[idx])
        np.testing.assert_array_equal(parts[name].y, prep.y[idx])
        files = manifest["splits"][name]["files"]
        for entry in files.values():
            data = (tmp_path / entry["key"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            assert len(data) == entry["bytes"]
        assert files["x"]["shape"] == [len(idx), 1, 8, 8]
        names = (tmp_path / name / "names.txt").read_text().split()
        assert names == [prep.names[i] for i in idx]
        assert (
            manifest["splits"][name]["class_counts"]
            == np.bincount(prep.y[idx], minlength=2).tolist()
        )
    assert manifest["format"] == "early-repair-prepared" and manifest["format_version"] == 1
    assert manifest["tool"]["early-repair"] and manifest["tool"]["pydicom"]


def test_read_images_fills_one_buffer_and_packs_good_images_first() -> None:
    items = [Item(f"f{i}", Path(f"f{i}"), i % 3) for i in range(7)]

    def decode(item: Item) -> np.ndarray:
        i = int(item.name[1:])
        if i in (1, 4):
            raise Unreadable("broken")
        return np.full((1, 2, 2), i, dtype=np.uint8)

    skipped = Skipped()
    seen = []
    x, y, kept = read_images(items, decode, (1, 2, 2), skipped, lambda d, t: seen.append((d, t)))
    assert kept.tolist() == [0, 2, 3, 5, 6]
    assert x[:, 0, 0, 0].tolist() == [0, 2, 3, 5, 6] and y.tolist() == [0, 2, 0, 2, 0]
    assert x.base is not None and x.base.shape == (7, 1, 2, 2)  # a view: no second copy
    assert skipped.report() == {"unreadable": {"count": 2, "first": ["f1 [broken]", "f4 [broken]"]}}
    assert seen[-1] == (7, 7) and len(seen) == 7


@pytest.mark.parametrize("chunk", [1, 64, 4 * 2**20])
def test_in_place_hold_out_equals_hold_out_validation(monkeypatch, chunk: int) -> None:
    monkeypatch.setattr(prepared, "CHUNK_BYTES", chunk)  # 1 row, 4 rows, everything
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(101, 1, 4, 4), dtype=np.uint8)
    y = rng.integers(0, 3, size=101).astype(np.int64)
    want_train, want_val = hold_out_validation(Split(x, y), 0.2, Holdout("fixed", 42))
    buffer = x.copy()
    train, val = hold_out_in_place(Split(buffer, y), 0.2, Holdout("fixed", 42))
    for got, want in ((train, want_train), (val, want_val)):
        np.testing.assert_array_equal(got.x, want.x)
        np.testing.assert_array_equal(got.y, want.y)
    assert np.shares_memory(train.x, buffer)  # moved within the array, not copied out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "train" / "x.npy").write_bytes(b"\x93NUMPY-tampered"), "sha256 differs"),
        (lambda p: (p / "repair" / "y.npy").unlink(), "missing although the manifest lists it"),
        (lambda p: (p / "manifest.json").unlink(), "no manifest.json; write prepared splits"),
        (lambda p: (p / "manifest.json").write_text("{"), "manifest.json: not valid JSON"),
        (lambda p: _edit(p, format_version=99), "prepared with format version 99"),
        (lambda p: _edit(p, dataset="gtsrb"), "holds prepared 'gtsrb' splits, not 'rsna'"),
        (lambda p: _edit(p, splits={}), "incomplete manifest"),
    ],
    ids=["tampered", "missing-array", "no-manifest", "bad-json", "version", "dataset", "partial"],
)
def test_damaged_prepared_splits_are_bad_input(tmp_path: Path, damage, message: str) -> None:
    write_prepared(synthetic(), FileStore(tmp_path))
    damage(tmp_path)
    with pytest.raises(BadInput, match=message):
        rsna.load(DatasetSpec(name="rsna", prepared=str(tmp_path), image_size=8), 0.2)


def _edit(root: Path, **fields) -> None:
    path = root / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_size": 16}, r"image_size is 16 but .* holds 8px images; set image_size: 8"),
        ({"image_size": 8, "split_seed": 1}, "split_seed is 1 but .* was split with 42"),
        ({}, "image_size is 160 but"),  # rsna's default size
    ],
)
def test_spec_must_match_the_prepared_splits(tmp_path: Path, fields, message: str) -> None:
    write_prepared(synthetic(), FileStore(tmp_path))
    with pytest.raises(BadInput, match=message):
        rsna.load(DatasetSpec(name="rsna", prepared=str(tmp_path), **fields), 0.2)
    splits = rsna.load(DatasetSpec(name="rsna", prepared=str(tmp_path), image_size=8), 0.25)
    assert (len(splits.train), len(splits.val), len(splits.repair), len(splits.test)) == (
        22,
        8,
        10,
        10,
    )


def test_existing_splits_are_kept_unless_overwrite(cli, raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ("prepare", "rsna", "--input", raw, "--out", out, "--image-size", "16")
    assert cli(*base).code == 0
    before = (out / "manifest.json").read_bytes()
    r = cli(*base, "--split-seed", "7")
    assert r.code == 2 and "already holds prepared splits" in r.err and "--overwrite" in r.err
    assert (out / "manifest.json").read_bytes() == before
    r = cli(*base, "--split-seed", "7", "--overwrite")
    assert r.code == 0, r.err
    assert json.loads((out / "manifest.json").read_text())["split_seed"] == 7
    assert (
        rsna.load(
            DatasetSpec(name="rsna", prepared=str(out), image_size=16, split_seed=7), 0.2
        ).meta["split_seed"]
        == 7
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("digits",), "no preparation for dataset 'digits'; use one of ['gtsrb', 'rsna']"),
        (("imagenet",), "no preparation for dataset 'imagenet'; use one of ['gtsrb', 'rsna']"),
        (("rsna", "--image-size", "0"), "prepare: image_size: Input should be greater than 0"),
        (("rsna", "--max-bad-fraction", "2"), "max_bad_fraction: Input should be less than"),
        (("rsna", "--out", "ftp://host/x"), "unsupported URI scheme 'ftp'"),
    ],
)
def test_bad_arguments_exit_2(cli, raw: Path, tmp_path: Path, args, message: str) -> None:
    out = ("--out", str(tmp_path / "out")) if "--out" not in args else ()
    r = cli("prepare", *args, "--input", raw, *out)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "out").exists()


def test_prepare_to_s3_and_load_back_over_http(cli, raw: Path, s3_bucket) -> None:  # noqa: F811
    uri = s3_bucket.uri("prepared/rsna")
    r = cli(
        "prepare",
        "rsna",
        "--input",
        raw,
        "--out",
        uri,
        "--image-size",
        "16",
        "--endpoint-url",
        s3_bucket.endpoint_url,
    )
    assert r.code == 0, r.err
    assert r.out.strip() == uri
    client = s3_bucket.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket.bucket)["Contents"])
    assert keys == sorted(
        ["prepared/rsna/manifest.json"]
        + [
            f"prepared/rsna/{s}/{f}"
            for s in ("train", "repair", "test")
            for f in ("x.npy", "y.npy", "names.txt")
        ]
    )
    storage = StorageSpec(endpoint_url=s3_bucket.endpoint_url)
    spec = DatasetSpec(name="rsna", prepared=uri, image_size=16)
    from_s3 = rsna.load(spec, 0.2, storage=storage)
    in_memory = rsna.load(DatasetSpec(name="rsna", input=str(raw), image_size=16), 0.2)
    for name in ("train", "val", "repair", "test"):
        np.testing.assert_array_equal(getattr(from_s3, name).x, getattr(in_memory, name).x)
        np.testing.assert_array_equal(getattr(from_s3, name).y, getattr(in_memory, name).y)
    assert from_s3.meta["prepared"] == uri
    client.put_object(Bucket=s3_bucket.bucket, Key="prepared/rsna/test/y.npy", Body=b"x")
    with pytest.raises(BadInput, match=r"test/y.npy: sha256 differs"):
        rsna.load(spec, 0.2, storage=storage)


def test_prepare_does_not_import_torch(raw: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from orchestrator.cli import main\n"
        "try:\n"
        f"    main(['prepare', 'rsna', '--input', {str(raw)!r}, '--out', {str(tmp_path)!r},"
        " '--image-size', '16'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "print('torch' in sys.modules, 'torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stderr
    assert (tmp_path / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("preset", "dataset", "model", "classes"),
    [("paper-gtsrb", "gtsrb", "vgg16", [20, 27, 30]), ("paper-rsna", "rsna", "densenet121", [1])],
)
def test_paper_presets_validate(repo: Path, preset: str, dataset: str, model: str, classes) -> None:
    spec = load_spec(repo / "settings" / f"{preset}.yaml")
    assert [d.name for d in spec.datasets] == [dataset]
    assert [m.name for m in spec.models] == [model]
    assert spec.seeds == [1024, 2048, 4096, 8192, 16384]
    assert spec.classes_for(spec.datasets[0]) == classes
    assert spec.resources.gpus == 1
    ds = spec.datasets[0]
    assert ds.input or ds.prepared
    assert ds.split_seed == 42 and ds.image_size == {"gtsrb": 32, "rsna": 160}[dataset]
    assert spec.models[0].pretrained is (model == "vgg16")
    # The paper's training procedure is the default: nothing in the preset overrides it.
    assert spec.training.lr == 1e-2 and spec.training.batch_size == 128
    assert spec.training.max_epochs == 30 and spec.training.early_stopping
    assert len(spec.runs()) == 5
