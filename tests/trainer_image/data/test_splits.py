"""Split seeds, stratification and the validation hold-out, on every built-in dataset.

Known answers come from scikit-learn's ``train_test_split`` and numpy's ``RandomState``
called here directly on the same labels: a separate test-split seed must move the test set
and only it, ``stratify: false`` must be the plain seeded split, and ``validation:
per-seed`` must be the released code's rule (a permutation by the training seed, not
stratified).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from early_repair_testing.gtsrb_tree import GtsrbTree, write_gtsrb
from early_repair_testing.rsna_tree import RsnaTree, write_rsna
from sklearn.model_selection import train_test_split

from orchestrator.errors import BadInput
from orchestrator.spec import DatasetSpec, parse_spec
from orchestrator.store.file import FileStore
from trainer_image.data import Holdout, digits, gtsrb, load_splits, rsna, split_indices
from trainer_image.data.prepared import write_prepared


def sk(y: np.ndarray, fraction: float, seed: int, stratify: bool) -> tuple[np.ndarray, ...]:
    idx = np.arange(len(y))
    keep, held = train_test_split(
        idx, test_size=fraction, random_state=seed, stratify=y if stratify else None
    )
    return np.sort(keep), np.sort(held)


def rows(split) -> set[bytes]:
    return {r.tobytes() for r in split.x}


@pytest.fixture(scope="module")
def gtsrb_tree(tmp_path_factory: pytest.TempPathFactory) -> GtsrbTree:
    return write_gtsrb(tmp_path_factory.mktemp("gtsrb"), train_per_class=7, test_per_class=1)


@pytest.fixture(scope="module")
def rsna_tree(tmp_path_factory: pytest.TempPathFactory) -> RsnaTree:
    return write_rsna(tmp_path_factory.mktemp("rsna") / "raw", n=60)


def test_split_indices_stratified_or_plain() -> None:
    y = np.repeat([0, 1, 2], [300, 60, 15])
    for stratify in (True, False):
        keep, held = split_indices(y, 0.3, 7, stratify=stratify)
        want = sk(y, 0.3, 7, stratify)
        np.testing.assert_array_equal(keep, want[0])
        np.testing.assert_array_equal(held, want[1])
    _, held = split_indices(y, 0.3, 7)
    counts = np.bincount(y[held], minlength=3)
    assert all(abs(c - 0.3 * n) <= 1 for c, n in zip(counts, (300, 60, 15), strict=True))
    # Unstratified: for some seed a class is off its share by more than one image.
    off = [
        max(
            abs(c - 0.3 * n)
            for c, n in zip(
                np.bincount(y[split_indices(y, 0.3, s, stratify=False)[1]], minlength=3),
                (300, 60, 15),
                strict=True,
            )
        )
        for s in range(5)
    ]
    assert max(off) > 1


def test_digits_test_split_seed_moves_the_test_set_only() -> None:
    base = digits.load(DatasetSpec(name="digits"), 0.2)
    moved = digits.load(DatasetSpec(name="digits", test_split_seed=43), 0.2)
    other = digits.load(DatasetSpec(name="digits", split_seed=43), 0.2)
    assert rows(moved.test) == rows(other.test) != rows(base.test)
    # The rest is split with split_seed 42 again: the same rule on the new remainder.
    assert rows(moved.repair) != rows(other.repair)
    assert (
        DatasetSpec(name="digits").test_seed == 42
        and DatasetSpec(name="digits", test_split_seed=43).test_seed == 43
    )


def test_rsna_split_seeds_and_stratification(rsna_tree: RsnaTree) -> None:
    def prep(**fields):
        return rsna.prepare(DatasetSpec(name="rsna", input=str(rsna_tree.root), **fields))

    default = prep()
    for stratify in (True, False):
        released = prep(test_split_seed=43, stratify=stratify)
        y = released.y
        rest, test = sk(y, 0.1, 43, stratify)  # the test split with seed 43 ...
        train, repair = sk(y[rest], 0.05, 42, stratify)  # ... the repair split with 42
        np.testing.assert_array_equal(released.index["test"], test)
        np.testing.assert_array_equal(released.index["repair"], rest[repair])
        np.testing.assert_array_equal(released.index["train"], rest[train])
        assert released.settings == {
            "stratify": stratify,
            "test_split_seed": 43,
            "preprocess": "resize",
        }
    rest, test = sk(default.y, 0.1, 42, True)
    np.testing.assert_array_equal(default.index["test"], test)
    assert default.settings["test_split_seed"] == 42


def test_gtsrb_unstratified_split(gtsrb_tree: GtsrbTree) -> None:
    spec = DatasetSpec(name="gtsrb", input=str(gtsrb_tree.base), stratify=False)
    prep = gtsrb.prepare(spec)
    official = np.sort(np.r_[prep.index["train"], prep.index["repair"]])
    train, repair = sk(prep.y[official], 0.3, 42, stratify=False)
    np.testing.assert_array_equal(prep.index["repair"], official[repair])
    np.testing.assert_array_equal(prep.index["train"], official[train])
    assert prep.split_rule["stratified"] is False
    stratified = gtsrb.prepare(DatasetSpec(name="gtsrb", input=str(gtsrb_tree.base)))
    assert not np.array_equal(stratified.index["repair"], prep.index["repair"])


def test_prepared_splits_record_split_settings_and_refuse_a_mismatch(
    rsna_tree: RsnaTree, tmp_path: Path
) -> None:
    spec = DatasetSpec(name="rsna", input=str(rsna_tree.root), image_size=32, test_split_seed=43)
    manifest = write_prepared(rsna.prepare(spec), FileStore(tmp_path))
    assert (manifest["test_split_seed"], manifest["stratify"]) == (43, True)
    use = {"name": "rsna", "prepared": str(tmp_path), "image_size": 32}
    rsna.load(DatasetSpec(**use, test_split_seed=43), 0.2)
    with pytest.raises(BadInput, match=r"test_split_seed is 42 but .* test_split_seed 43"):
        rsna.load(DatasetSpec(**use), 0.2)
    with pytest.raises(BadInput, match=r"stratify is false but .* --no-stratify"):
        rsna.load(DatasetSpec(**use, test_split_seed=43, stratify=False), 0.2)


# --- the validation hold-out -----------------------------------------------------------------


def test_per_seed_validation_is_the_released_rule() -> None:
    y = np.repeat([0, 1], [90, 10])
    for seed in (1024, 2048):
        keep, held = Holdout("per-seed", seed).split(y, 0.2)
        want = np.sort(np.random.RandomState(seed).permutation(100)[: math.floor(0.2 * 100)])
        np.testing.assert_array_equal(held, want)
        np.testing.assert_array_equal(np.sort(np.r_[keep, held]), np.arange(100))
    a = Holdout("per-seed", 1024).split(y, 0.2)[1]
    b = Holdout("per-seed", 2048).split(y, 0.2)[1]
    assert not np.array_equal(a, b)
    # fixed: stratified with the split seed, whatever the training seed.
    np.testing.assert_array_equal(Holdout("fixed", 42).split(y, 0.2)[1], sk(y, 0.2, 42, True)[1])
    assert Holdout.for_run("fixed", 42, 1024) == Holdout("fixed", 42)
    assert Holdout.for_run("per-seed", 42, 1024) == Holdout("per-seed", 1024)


@pytest.mark.parametrize("dataset", ["digits", "rsna"])
def test_validation_split_per_seed_through_load_splits(dataset: str, rsna_tree) -> None:
    ds = DatasetSpec(name=dataset, **({"input": str(rsna_tree.root)} if dataset == "rsna" else {}))

    def val(rule: str, seed: int):
        return rows(load_splits(ds, 0.2, holdout=Holdout.for_run(rule, 42, seed)).val)

    assert val("fixed", 1024) == val("fixed", 2048) == rows(load_splits(ds, 0.2).val)
    assert val("per-seed", 1024) != val("per-seed", 2048)
    assert val("per-seed", 1024) != val("fixed", 1024)


# --- spec checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ({"name": "gtsrb", "test_split_seed": 43}, "official one"),
        ({"name": "digits", "preprocess": "released"}, "applies to gtsrb and rsna only"),
        ({"name": "pkg.mod:load", "num_classes": 3, "stratify": False}, "makes its own splits"),
    ],
)
def test_split_fields_that_cannot_apply_are_refused(dataset: dict, message: str) -> None:
    spec = {"name": "s", "datasets": [dataset], "models": ["small_cnn"], "seeds": [1]}
    with pytest.raises(BadInput, match=message):
        parse_spec(spec)


def test_prepare_cli_sets_the_released_choices(cli, rsna_tree: RsnaTree, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    args = ["prepare", "rsna", "--input", rsna_tree.root, "--out", out, "--image-size", "32"]
    r = cli(*args, "--test-split-seed", "43", "--preprocess", "released", "--no-stratify")
    assert r.code == 0, r.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["test_split_seed"], manifest["stratify"], manifest["preprocess"]) == (
        43,
        False,
        "released",
    )
    bad = cli(
        "prepare",
        "rsna",
        "--input",
        rsna_tree.root,
        "--out",
        tmp_path / "other",
        "--preprocess",
        "sharpen",
    )
    assert bad.code == 2 and len(bad.err.strip().splitlines()) == 1 and "preprocess" in bad.err
