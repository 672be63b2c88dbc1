"""The released-code presets: `plan` shows every released-code field in the spec the pods
receive, the paper presets stay free of them, and one epoch of each released preset runs
the real trainer end to end (data in the official layouts, VGG16 / DenseNet121, repair)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from early_repair_testing.gtsrb_tree import write_gtsrb
from early_repair_testing.paths import REPO
from early_repair_testing.rsna_tree import write_rsna
from torchvision.models.vgg import cfgs, make_layers

from orchestrator.results import layout as keys
from orchestrator.spec import load_spec
from orchestrator.store import read_json
from orchestrator.store.file import FileStore
from trainer_image.entrypoint import run_trainer
from trainer_image.zoo import VGG16_FILE

TRAINING = {
    "lr": 1e-4,
    "lr_schedule": "compound",
    "batch_size": 4,
    "early_stopping": False,
    "validation": "per-seed",
    "shuffle_each_epoch": False,
}
REPAIR = {"positives": "balanced", "update_order": "position-first", "stagnation_start": 12}
DATASET = {
    "paper-gtsrb-released": {"stratify": False, "preprocess": "released"},
    "paper-rsna-released": {"test_split_seed": 43, "preprocess": "released"},
}
MODEL = {"paper-gtsrb-released": {"normalise": "none"}, "paper-rsna-released": {}}
NEW_FIELDS = {"stratify", "test_split_seed", "preprocess", "normalise", "validation"}
NEW_FIELDS |= {"shuffle_each_epoch", "positives", "update_order", "stagnation_start"}


def preset(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "settings" / f"{name}.yaml").read_text())


def planned_sweep(cli, tmp_path: Path, name: str) -> dict[str, Any]:
    """The sweep.json of the ConfigMap that `plan --out` writes for a preset."""
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({**preset(name), "results": "s3://bucket/sweeps"}))
    out = tmp_path / f"{name}-manifests.yaml"
    r = cli("plan", spec, "--out", out)
    assert r.code == 0, r.err
    config = next(d for d in yaml.safe_load_all(out.read_text()) if d["kind"] == "ConfigMap")
    return json.loads(config["data"]["sweep.json"])


@pytest.mark.parametrize("name", list(DATASET))
def test_plan_of_a_released_preset_shows_the_fields(cli, tmp_path: Path, name: str) -> None:
    sweep = planned_sweep(cli, tmp_path, name)
    assert sweep["training"].items() >= TRAINING.items()
    assert sweep["training"]["max_epochs"] == 30
    assert sweep["repair"].items() >= REPAIR.items() and sweep["repair"]["iterations"] == 50
    assert sweep["datasets"][0].items() >= DATASET[name].items()
    assert sweep["models"][0].items() >= MODEL[name].items()
    paper = planned_sweep(cli, tmp_path, name.removesuffix("-released"))
    # The grid is the paper preset's; only the released-code choices differ.
    for key in ("seeds",):
        assert sweep[key] == paper[key]
    assert sweep["repair"]["classes"] == paper["repair"]["classes"]
    assert sweep["datasets"][0]["name"] == paper["datasets"][0]["name"]
    text = json.dumps(paper)
    assert not any(f'"{field}"' in text for field in NEW_FIELDS)


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's VGG16 checkpoint format with random values (no download offline)."""
    torch.manual_seed(1)
    state = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / VGG16_FILE
    torch.save(state, path)
    return path


def one_epoch(
    name: str, tmp_path: Path, data: Path, classes: list[int] | None = None, **model: Any
) -> None:
    """One training seed, one epoch of the preset on fixture data; then check the run."""
    spec = preset(name)
    if classes is not None:  # a class the one-epoch model still gets wrong
        spec["repair"]["classes"] = classes
    spec["seeds"] = spec["seeds"][:1]
    spec["datasets"][0]["input"] = str(data)
    spec["models"][0].update(model)
    spec["training"].update(max_epochs=1, device="cpu", num_threads=1)
    spec["results"] = str(tmp_path / "results")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_trainer(path, 0)

    run = load_spec(path).runs()[0]
    store = FileStore(tmp_path / "results")
    info = read_json(store, keys.run_json(run.sweep, run.name))["run"]
    assert info["training"].items() >= {**TRAINING, "max_epochs": 1}.items()
    assert info["repair"].items() >= REPAIR.items()
    assert info["dataset"].items() >= DATASET[name].items()
    history = pd.read_csv(tmp_path / "results" / keys.history_csv(run.sweep, run.name))
    assert history["epoch"].tolist() == [1] and history["lr"].tolist() == [1e-4]
    assert store.exists(keys.base_metrics(run.sweep, run.name, 1))
    records = [
        read_json(store, keys.repair_metrics(run.sweep, run.name, 1, c)) for c in run.repair_classes
    ]
    repaired = [r for r in records if r["rr"] is not None]
    assert repaired, "no class had negatives to repair"
    for r in repaired:
        assert r["iterations"] >= 12  # stagnation is checked from iteration 12 on
        assert 0 < r["n_pos"] <= 200  # balanced, deduplicated positives
    assert store.exists(keys.success(run.sweep, run.name))


@pytest.mark.slow
def test_one_epoch_of_the_gtsrb_released_preset(tmp_path: Path, vgg_weights: Path) -> None:
    tree = write_gtsrb(tmp_path / "raw", train_per_class=4, test_per_class=1)
    one_epoch("paper-gtsrb-released", tmp_path, tree.base, weights=str(vgg_weights))


@pytest.mark.slow
def test_one_epoch_of_the_rsna_released_preset(tmp_path: Path) -> None:
    root = write_rsna(tmp_path / "raw", n=60).root
    one_epoch("paper-rsna-released", tmp_path, root, classes=[0, 1])
