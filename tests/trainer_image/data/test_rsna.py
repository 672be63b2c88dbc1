"""RSNA Pneumonia read from real DICOM files written here with pydicom (and one of pydicom's
bundled samples), in the Kaggle layout, with a labels CSV that repeats patients.

Each generated X-ray shows its label as a pattern (pneumonia: bright top half; normal:
bright bottom half), stored in one of several encodings - 16-bit values far outside 0..255,
8-bit values inside it, MONOCHROME1 (stored inverted), JPEG Baseline (Kaggle's own
encoding), and a Modality LUT (RescaleSlope/Intercept) - so the tests can check from the
decoded pixels that intensity handling and label alignment are right for every kind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from early_repair_testing.rsna_tree import (
    CT_ID,
    EXPECTED,
    KINDS,
    RsnaTree,
    write_dicom,
    write_rsna,
    write_xray,
)
from pydicom.data import get_testdata_file

from orchestrator.errors import BadInput
from orchestrator.spec import DatasetSpec
from trainer_image.data import rsna
from trainer_image.data.raw import Unreadable


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> RsnaTree:
    return write_rsna(tmp_path_factory.mktemp("rsna") / "raw")


@pytest.fixture
def copy(tree: RsnaTree, tmp_path: Path) -> RsnaTree:
    root = tmp_path / "raw"
    shutil.copytree(tree.root, root)
    return RsnaTree(root, tree.labels, tree.kinds)


def spec(**fields) -> DatasetSpec:
    return DatasetSpec(name="rsna", **fields)


def _regions(img: np.ndarray) -> tuple[int, int]:
    """(top, bottom) values at the middle of each half, left edge (no gradient there)."""
    plane = img.reshape(img.shape[-2:])
    h = plane.shape[0]
    return int(plane[h // 4, 1]), int(plane[3 * h // 4, 1])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("label", [0, 1])
def test_read_dicom_intensity_per_encoding(tmp_path: Path, kind: str, label: int) -> None:
    path = tmp_path / f"p-{kind}.dcm"
    write_xray(path, label, kind)
    img = rsna.read_dicom(path, 160)
    assert img.dtype == np.uint8 and img.shape == (1, 160, 160)
    dark, bright = EXPECTED[kind]
    top, bottom = _regions(img)
    tolerance = 3 if kind == "jpeg" else 0  # lossy, everything else is exact
    assert abs(top - (bright if label else dark)) <= tolerance
    assert abs(bottom - (dark if label else bright)) <= tolerance


def test_values_inside_0_255_are_not_stretched_and_lut_is_applied(tmp_path: Path) -> None:
    # Without the Modality LUT the stored 70/150 would come out as 70/150 (or stretched).
    write_xray(tmp_path / "lut.dcm", 1, "lut")
    ds = pydicom.dcmread(tmp_path / "lut.dcm")
    assert (ds.RescaleSlope, ds.RescaleIntercept) == (2, -100)
    assert int(ds.pixel_array.min()) == 70
    assert _regions(rsna.read_dicom(tmp_path / "lut.dcm", 64)) == (200, 40)


def test_pydicom_ct_sample_is_rescaled_to_full_range() -> None:
    path = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert hu.min() < 0 and hu.max() > 255  # signed 16-bit CT values: outside 0..255
    img = rsna.read_dicom(path, 128)[0]  # its own size: no resampling, exact comparison
    expected = np.rint((hu - hu.min()) / (hu.max() - hu.min()) * 255)
    np.testing.assert_allclose(img, expected, atol=1)
    small = rsna.read_dicom(path, 32)[0]
    assert small.shape == (32, 32) and small.min() <= 5 and small.max() >= 200


@pytest.mark.parametrize(
    "content",
    [b"not a dicom file at all", b"DICM", None],
    ids=["garbage", "short", "truncated-pixels"],
)
def test_unreadable_dicoms_raise_unreadable(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.dcm"
    if content is None:
        write_xray(path, 1, "u16")
        path.write_bytes(path.read_bytes()[:-3000])
    else:
        path.write_bytes(content)
    with pytest.raises(Unreadable):
        rsna.read_dicom(path, 32)


def test_colour_dicom_is_unreadable_for_a_greyscale_dataset(tmp_path: Path) -> None:
    path = tmp_path / "rgb.dcm"
    write_dicom(path, np.zeros((8, 8, 3), np.uint8), photometric="RGB")
    with pytest.raises(Unreadable, match="PhotometricInterpretation RGB"):
        rsna.read_dicom(path, 32)


def test_prepare_reads_each_patient_once_with_its_label(tree: RsnaTree) -> None:
    prep = rsna.prepare(spec(input=str(tree.root)))
    assert prep.x.dtype == np.uint8 and prep.x.shape == (91, 1, 160, 160)
    assert prep.skipped.count == 0 and prep.candidates == 91
    assert prep.notes == {"patients_with_conflicting_targets": 0}
    pids = [n.removesuffix(".dcm") for n in prep.names]
    assert sorted(pids) == sorted(tree.labels)  # duplicate CSV rows -> one image
    np.testing.assert_array_equal(prep.y, [tree.labels[p] for p in pids])
    assert np.bincount(prep.y).tolist() == [61, 30]
    for i, pid in enumerate(pids):
        if tree.kinds[pid] == "ct":
            continue
        dark, bright = EXPECTED[tree.kinds[pid]]
        want = (bright, dark) if tree.labels[pid] else (dark, bright)
        got = _regions(prep.x[i])
        assert np.abs(np.subtract(got, want)).max() <= 3, (pid, tree.kinds[pid], got, want)


def test_split_10_percent_test_then_95_5_stratified_and_reproducible(tree: RsnaTree) -> None:
    prep = rsna.prepare(spec(input=str(tree.root), image_size=32))
    counts = {k: np.array(v) for k, v in prep.counts().items()}
    total = np.array([61, 30])
    np.testing.assert_array_equal(counts["train"] + counts["repair"] + counts["test"], total)
    assert np.all(np.abs(counts["test"] - 0.1 * total) <= 1)
    rest = total - counts["test"]
    assert np.all(np.abs(counts["repair"] - 0.05 * rest) <= 1)
    assert counts["repair"].min() >= 1  # both classes reach the repair set
    all_idx = np.concatenate([prep.index[k] for k in ("train", "repair", "test")])
    assert sorted(all_idx) == list(range(91))  # a partition: no image lost or doubled
    again = rsna.prepare(spec(input=str(tree.root), image_size=32))
    other = rsna.prepare(spec(input=str(tree.root), image_size=32, split_seed=1))
    for name in ("train", "repair", "test"):
        np.testing.assert_array_equal(prep.index[name], again.index[name])
    np.testing.assert_array_equal(prep.x, again.x)
    assert not np.array_equal(prep.index["test"], other.index["test"])


def test_resizes_to_image_size_including_non_square_sources(tree: RsnaTree) -> None:
    prep = rsna.prepare(spec(input=str(tree.root), image_size=40))
    assert prep.x.shape[1:] == (1, 40, 40) and prep.image_shape == [1, 40, 40]
    wide = next(i for i, n in enumerate(prep.names) if n.startswith("0001a1b2"))  # 64 x 80
    top, bottom = _regions(prep.x[wide])
    assert (top, bottom) == (40, 200)  # u8 kind, label 0: bright bottom


def test_conflicting_rows_of_a_patient_take_target_1(copy: RsnaTree) -> None:
    csv = copy.root / rsna.LABELS_CSV
    pid = next(p for p, label in copy.labels.items() if label == 0 and p != CT_ID)
    csv.write_text(csv.read_text() + f"{pid},1,2,3,4,1\n")
    prep = rsna.prepare(spec(input=str(copy.root)))
    assert prep.notes == {"patients_with_conflicting_targets": 1}
    assert prep.y[prep.names.index(f"{pid}.dcm")] == 1


def test_skipped_files_are_reported_and_fatal_above_threshold(
    cli, copy: RsnaTree, tmp_path: Path
) -> None:
    write_xray(copy.images / "no-label-patient.dcm", 1, "u8")
    gone = sorted(copy.labels)[5]
    (copy.images / f"{gone}.dcm").unlink()
    corrupt = sorted(copy.labels)[6]
    (copy.images / f"{corrupt}.dcm").write_bytes(b"\x00" * 200)
    prep = rsna.prepare(spec(input=str(copy.root), image_size=32, max_bad_fraction=0.05))
    report = prep.skipped.report()
    assert {k: v["count"] for k, v in report.items()} == {
        "missing": 1,
        "unlabelled": 1,
        "unreadable": 1,
    }
    assert report["missing"]["first"] == [f"stage_2_train_images/{gone}.dcm"]
    assert report["unlabelled"]["first"] == ["no-label-patient.dcm"]
    assert report["unreadable"]["first"][0].startswith(f"{corrupt}.dcm [InvalidDicomError")
    assert len(prep.y) == 89 and prep.candidates == 92
    out = tmp_path / "out"
    r = cli("prepare", "rsna", "--input", copy.root, "--out", out, "--image-size", "32")
    assert r.code == 2  # 3 of 92 is above the default 1%
    last = r.err.strip().splitlines()[-1]
    assert last.startswith("error: rsna: 3 of 92 raw files are unusable (3.3%)")
    assert "no-label-patient.dcm" in last and corrupt in last and gone in last
    assert "WARNING: rsna: skipped 3 of 92 raw files" in r.err
    assert not out.exists()
    ok = tmp_path / "ok"
    r = cli(
        "prepare",
        "rsna",
        "--input",
        copy.root,
        "--out",
        ok,
        "--image-size",
        "32",
        "--max-bad-fraction",
        "0.05",
    )
    assert r.code == 0, r.err
    skipped = json.loads((ok / "manifest.json").read_text())["skipped"]
    assert skipped["unreadable"]["count"] == 1 and skipped["unlabelled"]["count"] == 1


def test_parallel_decoding_gives_the_same_result(copy: RsnaTree) -> None:
    corrupt = sorted(copy.labels)[6]
    (copy.images / f"{corrupt}.dcm").write_bytes(b"\x00" * 200)
    dataset = spec(input=str(copy.root), image_size=32, max_bad_fraction=0.05)
    one, three = rsna.prepare(dataset, workers=1), rsna.prepare(dataset, workers=3)
    np.testing.assert_array_equal(one.x, three.x)
    np.testing.assert_array_equal(one.y, three.y)
    assert one.names == three.names and f"{corrupt}.dcm" not in one.names
    assert one.skipped.report() == three.skipped.report()
    for name in ("train", "repair", "test"):
        np.testing.assert_array_equal(one.index[name], three.index[name])


def test_cli_prepare_writes_splits_that_load_like_in_memory(
    cli, tree: RsnaTree, tmp_path: Path
) -> None:
    out = tmp_path / "prepared"
    r = cli("prepare", "rsna", "--input", tree.root, "--out", f"file://{out}", "--workers", "2")
    assert r.code == 0, r.err
    assert r.out.strip() == str(out)
    assert "class 0" in r.err and "class 1" in r.err  # per-class counts table on stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["image_shape"] == [1, 160, 160] and manifest["images"] == 91
    assert sum(manifest["splits"]["test"]["class_counts"]) == manifest["splits"]["test"]["count"]
    from_store = rsna.load(spec(prepared=str(out)), 0.2)
    in_memory = rsna.load(spec(input=str(tree.root)), 0.2)
    for name in ("train", "val", "repair", "test"):
        a, b = getattr(from_store, name), getattr(in_memory, name)
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    assert len(from_store.val) >= 1 and set(from_store.val.y) == {0, 1}
    assert from_store.num_classes == 2 and from_store.meta["dataset"] == "rsna"


def _wrong_columns(t: RsnaTree) -> str:
    csv = t.root / rsna.LABELS_CSV
    csv.write_text(csv.read_text().replace("patientId,", "patient,"))
    return f"{csv}: expected columns patientId,x,y,width,height,Target"


def _no_csv(t: RsnaTree) -> str:
    (t.root / rsna.LABELS_CSV).unlink()
    return f"{t.root / rsna.LABELS_CSV}: missing; the layout must be stage_2_train_labels.csv"


def _no_images(t: RsnaTree) -> str:
    shutil.rmtree(t.images)
    return f"{t.images}: missing; the layout must be"


def _bad_target(t: RsnaTree) -> str:
    csv = t.root / rsna.LABELS_CSV
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",2"
    csv.write_text("\n".join(lines) + "\n")
    return "line 4: need a patientId and Target 0 or 1"


def _many_corrupt(t: RsnaTree) -> str:
    for pid in sorted(t.labels)[:3]:
        (t.images / f"{pid}.dcm").write_bytes(b"corrupt")
    return "3 of 91 raw files are unusable"


@pytest.mark.parametrize("damage", [_wrong_columns, _no_csv, _no_images, _bad_target])
def test_malformed_layout_is_one_line_exit_2(cli, copy: RsnaTree, tmp_path: Path, damage) -> None:
    expected = damage(copy)
    out = tmp_path / "out"
    r = cli("prepare", "rsna", "--input", copy.root, "--out", out)
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert expected in r.err and "Traceback" not in r.err
    assert not out.exists()


def test_corrupt_dicoms_above_threshold_exit_2(cli, copy: RsnaTree, tmp_path: Path) -> None:
    expected = _many_corrupt(copy)
    r = cli("prepare", "rsna", "--input", copy.root, "--out", tmp_path / "o", "--image-size", "32")
    assert r.code == 2 and expected in r.err.strip().splitlines()[-1]
    assert "InvalidDicomError" in r.err and not (tmp_path / "o").exists()


def test_missing_input_and_kaggle_folder(cli, tree: RsnaTree, tmp_path: Path) -> None:
    r = cli("prepare", "rsna", "--input", tmp_path / "nope", "--out", tmp_path / "out")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert "nope: no such folder; the layout must be stage_2_train_labels.csv" in r.err
    shutil.copytree(tree.root, tmp_path / "dl" / rsna.KAGGLE_DIR)
    assert rsna.find_root(tmp_path / "dl") == tmp_path / "dl" / rsna.KAGGLE_DIR
    with pytest.raises(BadInput, match=r"crop_roi: Extra inputs .*\(options for rsna: none\)"):
        rsna.load(spec(input=str(tree.root), options={"crop_roi": True}), 0.2)
    r = cli("prepare", "rsna", "--input", tree.root, "--out", tmp_path / "x", "--crop-roi")
    assert r.code == 2 and "crop_roi" in r.err
