"""VGG16 and DenseNet121 from the zoo: shapes, the exposed head, weights from local files
only, and one-epoch training + Arachne repair smoke runs at the paper's input sizes on CPU.

No ImageNet checkpoint is available offline, so weight files are written here in
torchvision's checkpoint formats (same keys and shapes, random values): what is tested is
that the right tensors land in the right layers, never that they are ImageNet's.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from early_repair_testing.gtsrb_tree import write_gtsrb
from early_repair_testing.rsna_tree import write_rsna
from torch import nn
from torchvision.models import densenet121 as tv_densenet121
from torchvision.models.vgg import cfgs, make_layers

from orchestrator.errors import BadInput
from orchestrator.spec import ArachneSpec, DatasetSpec, ModelSpec, TrainingSpec
from trainer_image import zoo
from trainer_image.data import gtsrb, rsna
from trainer_image.models import Repairable, build_model
from trainer_image.repair import arachne
from trainer_image.repair.base import RepairTask, TargetSplit, apply_patch
from trainer_image.train import forward_split, train

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint in torchvision's vgg16 format: 'features.N.*' plus classifier keys."""
    torch.manual_seed(1)
    features = make_layers(cfgs["D"]).state_dict()
    state = {f"features.{k}": v for k, v in features.items()}
    state["classifier.6.weight"] = torch.zeros(3, 3)  # ignored: the head is replaced
    path = tmp_path_factory.mktemp("weights") / zoo.VGG16_FILE
    torch.save(state, path)
    return path, features


def test_vgg16_has_the_paper_head_and_exposes_it() -> None:
    model = zoo.vgg16(3, 43, 32, pretrained=False)
    assert isinstance(model, Repairable) and isinstance(model.head, nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (4096, 43)
    dense = model.body[-2]
    assert isinstance(dense, nn.Linear) and dense.in_features == 512  # 512 x (32 // 32)^2
    assert isinstance(model.body[-1], nn.ReLU)
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 43) and model.penultimate(x).shape == (2, 4096)
    assert zoo.vgg16(1, 5, 64, pretrained=False).body[-2].in_features == 512 * 4
    with pytest.raises(BadInput, match="vgg16 needs image_size >= 32"):
        zoo.vgg16(3, 43, 16, pretrained=False)


def test_vgg16_loads_features_from_a_torchvision_checkpoint(vgg_file) -> None:
    path, features = vgg_file
    model = zoo.vgg16(3, 43, 32, weights=str(path))
    loaded = model.body[1].state_dict()
    assert loaded.keys() == features.keys()
    assert all(torch.equal(loaded[k], features[k]) for k in features)
    # ImageNet weights expect normalised RGB; [0, 1] input goes through the fixed layer.
    first = model.body[0]
    assert isinstance(first, zoo.ImageNetInput)
    x = torch.full((1, 3, 2, 2), 0.5)
    expected = (0.5 - torch.tensor(zoo.IMAGENET_MEAN)) / torch.tensor(zoo.IMAGENET_STD)
    torch.testing.assert_close(first(x)[0, :, 0, 0], expected)


def test_normalise_none_feeds_unit_range_rgb_as_the_released_code(vgg_file) -> None:
    path, _ = vgg_file
    plain = build_model(ModelSpec(name="vgg16", weights=str(path), normalise="none"), 3, 43, 32)
    default = build_model(ModelSpec(name="vgg16", weights=str(path)), 3, 43, 32)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(plain.body[0](x), x)  # [0, 1] RGB reaches the first conv
    assert not torch.allclose(default.body[0](x), x)
    # The same weights otherwise: skipping the normalisation is the only difference.
    plain.load_state_dict(default.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), default.eval().head(default.body[1:](x)))
    # The legacy spelling still reads, and a model without an ImageNet input refuses it.
    assert ModelSpec(name="vgg16", options={"normalize": False}).normalise == "none"
    for bad in (
        {"name": "small_cnn"},
        {"name": "densenet121"},
        {"name": "vgg16", "pretrained": False},
    ):
        with pytest.raises(ValueError, match="applies to pretrained vgg16 and densenet121"):
            ModelSpec(**bad, normalise="none")


def test_features_only_file_and_one_channel_input(vgg_file, tmp_path: Path) -> None:
    _, features = vgg_file
    path = tmp_path / "features.pth"
    torch.save(features, path)
    model = zoo.vgg16(1, 2, 32, weights=str(path)).eval()
    grey = torch.rand(2, 1, 32, 32)
    rgb_model = zoo.vgg16(3, 2, 32, weights=str(path)).eval()
    rgb_model.body[2:].load_state_dict(model.body[2:].state_dict())
    rgb_model.head.load_state_dict(model.head.state_dict())
    # A grey image is the RGB image with three equal channels: same pretrained features.
    torch.testing.assert_close(model(grey), rgb_model(grey.expand(-1, 3, -1, -1)))


def test_vgg16_weights_come_from_the_hub_cache_never_the_network(
    vgg_file, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(BadInput) as e:
        build_model(ModelSpec(name="vgg16"), 3, 43, 32)  # pretrained by default
    message = str(e.value)
    assert f"{tmp_path}/torch/hub/checkpoints/vgg16-397923af.pth" in message
    assert "models[].weights" in message and "pretrained: false" in message
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / zoo.VGG16_FILE).symlink_to(vgg_file[0])
    model = build_model(ModelSpec(name="vgg16"), 3, 43, 32)
    assert torch.equal(model.body[1][0].weight, vgg_file[1]["0.weight"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"definitely not a checkpoint", "not a torch state dict"),
        ({"features.0.weight": torch.zeros(1)}, "does not fit vgg16's features"),
        ([1, 2, 3], "holds list, not a state dict"),
    ],
    ids=["garbage", "wrong-shapes", "not-a-dict"],
)
def test_unusable_weight_files_are_bad_input(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(BadInput, match=message):
        build_model(ModelSpec(name="vgg16", weights=str(path)), 3, 43, 32)
    with pytest.raises(BadInput, match=r"models\[vgg16\].weights: .*nope.pth does not exist"):
        build_model(ModelSpec(name="vgg16", weights=str(tmp_path / "nope.pth")), 3, 43, 32)


def test_densenet121_one_channel_from_scratch() -> None:
    model = build_model(ModelSpec(name="densenet121"), 1, 2, 64)
    conv0 = model.body[0].conv0
    assert conv0.in_channels == 1 and conv0.out_channels == 64
    assert (model.head.in_features, model.head.out_features) == (1024, 2)
    assert not any(isinstance(m, zoo.ImageNetInput) for m in model.modules())
    x = torch.rand(3, 1, 64, 64)
    assert model(x).shape == (3, 2) and model.penultimate(x).shape == (3, 1024)
    assert (model.penultimate(x) >= 0).all()  # ReLU then average pooling


def test_densenet121_loads_torchvision_checkpoint_with_old_key_names(tmp_path: Path) -> None:
    features = tv_densenet121(weights=None).features.state_dict()
    # torchvision's published file spells 'denselayer1.norm1' as 'denselayer1.norm.1' and,
    # being older than BatchNorm's counter, has no 'num_batches_tracked'.
    old = {
        "features." + re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
        for k, v in features.items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    path = tmp_path / zoo.DENSENET121_FILE
    torch.save(old, path)
    model = zoo.densenet121(1, 2, 64, pretrained=True, weights=str(path))
    loaded = model.body[1].state_dict()
    assert all(torch.equal(loaded[k], features[k]) for k in features)
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 2)


def _smoke(model: Repairable, splits, batch_size: int, first_conv: str) -> None:
    """One epoch of the paper's training, then Arachne on the final layer of the result."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainingSpec(max_epochs=1, batch_size=batch_size, device="cpu", num_threads=1)
    result = train(model, splits, cfg, seed=1024, device=CPU)
    assert result.epochs_trained == 1 and result.checkpoint_epochs == [1]
    assert np.isfinite(result.history[0]["loss"]) and np.isfinite(result.best_val_loss)
    after = model.state_dict()
    changed = [k for k, v in before.items() if v.is_floating_point() and not v.equal(after[k])]
    assert "head.weight" in changed
    assert first_conv in changed  # the whole network trains, pretrained features included

    logits, features = forward_split(model, splits.repair, CPU, features=True)
    assert features.shape == (len(splits.repair), model.head.in_features)
    split = TargetSplit(y=splits.repair.y, pred=logits.argmax(1).numpy())
    target = int(np.argmax([len(split.negatives(c)) for c in range(splits.num_classes)]))
    neg = split.negatives(target)
    assert len(neg) > 0
    cfg_r = ArachneSpec(particles=10, iterations=3)
    res = arachne.repair(
        RepairTask(
            model.head, features, torch.from_numpy(splits.repair.y), split, target, 7, "cpu"
        ),
        cfg_r,
    )
    assert res.status == "repaired" and res.patch and res.n_neg == len(neg)
    assert all(
        p.row < model.head.out_features and p.col < model.head.in_features for p in res.patch
    )
    # The patch rebuilds what the repair reported, through the model's real head.
    patched = apply_patch(model.head, res.patch)
    with torch.no_grad():
        pred = patched(features).argmax(1).numpy()
    assert res.n_patched == int((pred[neg] == target).sum())
    assert res.rr == pytest.approx(100.0 * res.n_patched / len(neg))


@pytest.mark.slow
def test_vgg16_one_epoch_on_gtsrb_32px_and_repair(vgg_file, tmp_path: Path) -> None:
    tree = write_gtsrb(tmp_path / "raw", train_per_class=7, test_per_class=1)
    splits = gtsrb.load(DatasetSpec(name="gtsrb", input=str(tree.base)), 0.2)
    assert splits.train.x.shape[1:] == (3, 32, 32)
    model = build_model(ModelSpec(name="vgg16", weights=str(vgg_file[0])), 3, 43, 32)
    _smoke(model, splits, batch_size=32, first_conv="body.1.0.weight")


@pytest.mark.slow
def test_densenet121_one_epoch_on_rsna_160px_and_repair(tmp_path: Path) -> None:
    root = write_rsna(tmp_path / "raw", n=90).root
    splits = rsna.load(DatasetSpec(name="rsna", input=str(root)), 0.2)
    assert splits.train.x.shape[1:] == (1, 160, 160)
    model = build_model(ModelSpec(name="densenet121"), 1, 2, 160)
    _smoke(model, splits, batch_size=16, first_conv="body.0.conv0.weight")
