"""GTSRB read from a small tree written here in the official layout (PPM files, ';' CSVs).

Every image is filled with its class's colour inside the ROI and black outside it, so a
test can tell from the pixels alone whether a row carries the right label, whether the
image was resized whole or cropped to the ROI, and whether rows and labels stayed aligned
through the split.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from early_repair_testing.gtsrb_tree import GtsrbTree, class_colour, write_gtsrb
from PIL import Image

from orchestrator.errors import BadInput
from orchestrator.spec import DatasetSpec
from trainer_image.data import gtsrb


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> GtsrbTree:
    return write_gtsrb(tmp_path_factory.mktemp("gtsrb"))


@pytest.fixture
def copy(tree: GtsrbTree, tmp_path: Path) -> GtsrbTree:
    """A private copy of the tree for tests that damage it."""
    base = tmp_path / "raw"
    shutil.copytree(tree.base, base)
    return GtsrbTree(base, tree.truth, tree.train, tree.test)


def spec(**fields) -> DatasetSpec:
    return DatasetSpec(name="gtsrb", **fields)


def _centre(x: np.ndarray) -> np.ndarray:
    return x[:, :, x.shape[2] // 2, x.shape[3] // 2]


def test_prepare_reads_every_image_with_its_label(tree: GtsrbTree) -> None:
    prep = gtsrb.prepare(spec(input=str(tree.base)))
    assert prep.x.dtype == np.uint8 and prep.x.shape == (len(tree.truth), 3, 32, 32)
    assert prep.num_classes == 43 and prep.skipped.count == 0
    labels = np.array([tree.truth[n] for n in prep.names])
    np.testing.assert_array_equal(prep.y, labels)
    # The pixels agree with the label: rows and labels never got out of step.
    np.testing.assert_array_equal(_centre(prep.x), [class_colour(c) for c in labels])
    names = np.array(prep.names)
    assert sorted(names[prep.index["test"]]) == sorted(tree.test)
    assert sorted(names[np.r_[prep.index["train"], prep.index["repair"]]]) == sorted(tree.train)


def test_official_training_set_splits_70_30_stratified(tree: GtsrbTree) -> None:
    counts = gtsrb.prepare(spec(input=str(tree.base))).counts()
    per_class = np.bincount([tree.truth[n] for n in tree.train], minlength=43)
    train, repair = np.array(counts["train"]), np.array(counts["repair"])
    np.testing.assert_array_equal(train + repair, per_class)
    assert np.all(np.abs(repair - 0.3 * per_class) <= 1)
    assert abs(repair.sum() - 0.3 * per_class.sum()) <= 1
    assert counts["test"] == [3] * 43


def test_resizes_whole_image_by_default_and_crops_roi_on_request(tree: GtsrbTree) -> None:
    whole = gtsrb.prepare(spec(input=str(tree.base), image_size=48))
    crop = gtsrb.prepare(spec(input=str(tree.base), image_size=48, options={"crop_roi": True}))
    assert whole.x.shape[1:] == crop.x.shape[1:] == (3, 48, 48)
    colours = np.array([class_colour(c) for c in crop.y], dtype=np.uint8)
    # Cropped to the ROI: every pixel is the class colour.
    np.testing.assert_array_equal(crop.x, np.broadcast_to(colours[:, :, None, None], crop.x.shape))
    # Whole image: the black border survives at the corners, the centre is the class colour.
    assert whole.x[:, :, 0, 0].max() < 40
    np.testing.assert_array_equal(_centre(whole.x), colours)
    assert whole.options == {"crop_roi": False} and crop.options == {"crop_roi": True}


def test_split_is_reproducible_and_follows_the_seed(tree: GtsrbTree) -> None:
    a = gtsrb.prepare(spec(input=str(tree.base)))
    b = gtsrb.prepare(spec(input=str(tree.base)))
    c = gtsrb.prepare(spec(input=str(tree.base), split_seed=7))
    for name in ("train", "repair", "test"):
        np.testing.assert_array_equal(a.index[name], b.index[name])
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.index["repair"], c.index["repair"])
    # Stratified either way: the same split sizes, class counts within one (sklearn hands
    # out the rounding remainders at random), other images.
    for name in ("train", "repair", "test"):
        ca, cc = np.array(a.counts()[name]), np.array(c.counts()[name])
        assert ca.sum() == cc.sum() and np.abs(ca - cc).max() <= 1


def test_load_in_memory_holds_out_stratified_validation(tree: GtsrbTree) -> None:
    prep = gtsrb.prepare(spec(input=str(tree.base)))
    splits = gtsrb.load(spec(input=str(tree.base)), 0.2)
    n_train = len(prep.index["train"])
    assert len(splits.train) + len(splits.val) == n_train
    assert abs(len(splits.val) - 0.2 * n_train) <= 1
    assert len(splits.repair) == len(prep.index["repair"]) and len(splits.test) == 129
    assert splits.num_classes == 43 and splits.meta["image_shape"] == [3, 32, 32]
    assert splits.meta["prepared"] is None and splits.meta["split_seed"] == 42
    for part in (splits.train, splits.val, splits.repair, splits.test):
        np.testing.assert_array_equal(_centre(part.x), [class_colour(c) for c in part.y])


def test_cli_prepare_writes_splits_that_load_like_in_memory(
    cli, tree: GtsrbTree, tmp_path: Path
) -> None:
    out = tmp_path / "prepared"
    r = cli("prepare", "gtsrb", "--input", tree.base, "--out", out)
    assert r.code == 0, r.err
    assert r.out.strip() == str(out)
    assert "train" in r.err and "repair" in r.err and "test" in r.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "gtsrb" and manifest["image_shape"] == [3, 32, 32]
    assert manifest["split_seed"] == 42 and manifest["candidates"] == len(tree.truth)
    assert sum(manifest["splits"]["test"]["class_counts"]) == 129
    from_store = gtsrb.load(spec(prepared=str(out)), 0.2)
    in_memory = gtsrb.load(spec(input=str(tree.base)), 0.2)
    for name in ("train", "val", "repair", "test"):
        a, b = getattr(from_store, name), getattr(in_memory, name)
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    assert from_store.meta["prepared"] == str(out)
    names = (out / "test" / "names.txt").read_text().split()
    assert sorted(names) == sorted(tree.test)


def test_crop_option_must_match_the_prepared_splits(cli, tree: GtsrbTree, tmp_path: Path) -> None:
    out = tmp_path / "cropped"
    assert cli("prepare", "gtsrb", "--input", tree.base, "--out", out, "--crop-roi").code == 0
    assert json.loads((out / "manifest.json").read_text())["options"] == {"crop_roi": True}
    assert len(gtsrb.load(spec(prepared=str(out), options={"crop_roi": True}), 0.2).test) == 129
    with pytest.raises(BadInput, match="options"):
        gtsrb.load(spec(prepared=str(out)), 0.2)


def test_skipped_files_are_reported_and_tolerated_up_to_the_threshold(
    cli, copy: GtsrbTree, tmp_path: Path
) -> None:
    images = copy.root / "Final_Training" / "Images"
    Image.new("RGB", (40, 40)).save(images / "00002" / "99999_00000.ppm")  # in no CSV
    (copy.root / copy.train[10]).unlink()  # listed in its CSV, gone
    (copy.root / copy.test[0]).write_bytes(b"P6\n40 40\n255\n" + b"\x00" * 10)  # truncated
    total = len(copy.truth) + 1  # the unlabelled file counts as one of the raw files
    prep = gtsrb.prepare(spec(input=str(copy.base)))  # 3 bad of 516: under 1%
    report = prep.skipped.report()
    assert {k: v["count"] for k, v in report.items()} == {
        "missing": 1,
        "unlabelled": 1,
        "unreadable": 1,
    }
    assert report["missing"]["first"] == [copy.train[10]]
    assert report["unlabelled"]["first"] == ["Final_Training/Images/00002/99999_00000.ppm"]
    assert report["unreadable"]["first"][0].startswith(copy.test[0])
    assert len(prep.y) == len(copy.truth) - 2
    out = tmp_path / "out"
    r = cli("prepare", "gtsrb", "--input", copy.base, "--out", out, "--max-bad-fraction", "0.001")
    assert r.code == 2
    last = r.err.strip().splitlines()[-1]
    assert last.startswith(f"error: gtsrb: 3 of {total} raw files are unusable")
    assert "max_bad_fraction" in last and copy.test[0] in last and "Traceback" not in r.err
    assert not out.exists()


def _drop_class_csv(t: GtsrbTree) -> str:
    (t.root / "Final_Training/Images/00005/GT-00005.csv").unlink()
    return "Final_Training/Images/00005/GT-00005.csv: missing"


def _drop_class_folder(t: GtsrbTree) -> str:
    shutil.rmtree(t.root / "Final_Training/Images/00042")
    return "Final_Training/Images/00042: missing; the layout must be GTSRB/Final_Training"


def _comma_csv(t: GtsrbTree) -> str:
    csv = t.root / "Final_Training/Images/00003/GT-00003.csv"
    csv.write_text(csv.read_text().replace(";", ","))
    return "GT-00003.csv: expected columns Filename;Width;Height;Roi.X1"


def _wrong_class(t: GtsrbTree) -> str:
    csv = t.root / "Final_Training/Images/00007/GT-00007.csv"
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].rsplit(";", 1)[0] + ";8"
    csv.write_text("\n".join(lines) + "\n")
    return "GT-00007.csv: line 3: ClassId 8 should be 7 (its folder)"


def _no_test_labels(t: GtsrbTree) -> str:
    (t.root / "Final_Test/Images/GT-final_test.csv").unlink()
    return "Final_Test/Images/GT-final_test.csv: missing; unpack GTSRB_Final_Test_GT.zip"


def _no_test_folder(t: GtsrbTree) -> str:
    shutil.rmtree(t.root / "Final_Test")
    return "GTSRB/Final_Test/Images: missing"


@pytest.mark.parametrize(
    "damage",
    [
        _drop_class_csv,
        _drop_class_folder,
        _comma_csv,
        _wrong_class,
        _no_test_labels,
        _no_test_folder,
    ],
)
def test_malformed_layout_is_one_line_exit_2(cli, copy: GtsrbTree, tmp_path: Path, damage) -> None:
    expected = damage(copy)
    out = tmp_path / "out"
    r = cli("prepare", "gtsrb", "--input", copy.base, "--out", out)
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert expected in r.err and "Traceback" not in r.err
    assert not out.exists()


def test_missing_input_folder_and_unset_source(cli, tmp_path: Path) -> None:
    r = cli("prepare", "gtsrb", "--input", tmp_path / "nope", "--out", tmp_path / "out")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert f"{tmp_path / 'nope'}: no such folder; the layout must be GTSRB/" in r.err
    with pytest.raises(BadInput, match=r"set input .* or prepared"):
        gtsrb.load(spec(), 0.2)
    with pytest.raises(BadInput, match=r"options.crop: Extra inputs .* crop_roi"):
        gtsrb.load(spec(input=str(tmp_path), options={"crop": True}), 0.2)


def test_accepts_the_gtsrb_folder_itself_and_its_parent(tree: GtsrbTree) -> None:
    a = gtsrb.prepare(spec(input=str(tree.base)))
    b = gtsrb.prepare(spec(input=str(tree.root)))
    assert a.source == b.source == str(tree.root)
    np.testing.assert_array_equal(a.x, b.x)
