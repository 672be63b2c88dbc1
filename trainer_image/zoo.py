"""The paper's two large models, built from torchvision and split into body + Linear head.

Why this exists: the paper's GTSRB runs (docs/science.md) use an ImageNet-pretrained VGG16
whose head is
features -> flatten -> Dense(4096, relu) -> Dense(C); its RSNA runs train DenseNet121
from scratch on one-channel X-rays. Both must expose their final Linear layer to Arachne, so each
factory returns a ``Repairable`` (body up to the penultimate activations, head = the Linear
producing class scores).

Pretrained weights are never downloaded at run time (pods often have no internet, and a
download would make results depend on the day): they come from ``weights`` (a local file:
torchvision's checkpoint, or a state dict holding only ``features``) or from the torch hub
cache (``$TORCH_HOME/hub/checkpoints/<torchvision file name>``), else a BadInput says where
to put the file. Pretrained networks expect ImageNet-normalised RGB while the trainer feeds
images scaled to [0, 1]; so a pretrained body starts with a fixed input layer that repeats a
single grey channel to three and normalises with ImageNet's mean and std
(``models[].normalise: none`` turns the normalisation off, as the released code fed VGG16).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.errors import BadInput
from trainer_image.models import Repairable

VGG16_FILE = "vgg16-397923af.pth"
DENSENET121_FILE = "densenet121-a639ec97.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's published DenseNet checkpoints predate '.'-free module names
# ('denselayer1.norm.1.weight' for today's 'denselayer1.norm1.weight').
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class ImageNetInput(nn.Module):
    """[0, 1] images with 1 or 3 channels -> ImageNet-normalised RGB for pretrained layers
    (``normalize=False``: RGB left in [0, 1], the released code's input)."""

    def __init__(self, in_channels: int, normalize: bool = True) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise BadInput(
                f"pretrained ImageNet weights take 1 or 3 input channels, the data has"
                f" {in_channels}; set models[].pretrained: false"
            )
        self.repeat = 3 // in_channels
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat > 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std if self.normalize else x


def weights_path(model: str, hub_file: str, weights: str | None) -> Path:
    """The local weights file to use, or a BadInput saying how to provide one."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BadInput(
                f"models[{model}].weights: {path} does not exist; point it at a local copy of"
                f" torchvision's {hub_file} (weights are never downloaded at run time)"
            )
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / hub_file
    if not path.is_file():
        raise BadInput(
            f"{model}: pretrained ImageNet weights not found at {path}; copy torchvision's"
            f" {hub_file} there ($TORCH_HOME/hub/checkpoints), set models[].weights to a local"
            " copy, or set models[].pretrained: false"
        )
    return path


def load_features(
    features: nn.Module,
    path: Path,
    model: str,
    rename: Callable[[str], str] = lambda k: k,
) -> None:
    """Load the ``features`` part of a torchvision checkpoint (or a features-only dict)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle, zip and runtime errors for bad files
        raise BadInput(
            f"{path}: not a torch state dict ({type(e).__name__}); use"
            f" torchvision's {model} checkpoint"
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise BadInput(f"{path}: holds {type(state).__name__}, not a state dict of tensors")
    if any(str(k).startswith("features.") for k in state):
        state = {
            k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
        }
    state = {rename(k): v for k, v in state.items()}
    try:
        result = features.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches are raised even when not strict
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), "")
        raise BadInput(
            f"{path}: does not fit {model}'s features ({detail[:160]}); use"
            f" torchvision's {model} ImageNet checkpoint"
        ) from e
    if result.missing_keys or result.unexpected_keys:
        wrong = [
            f"{len(keys)} {kind} (first {keys[0]!r})"
            for kind, keys in (
                ("missing", result.missing_keys),
                ("unexpected", result.unexpected_keys),
            )
            if keys
        ]
        raise BadInput(
            f"{path}: does not fit {model}'s features: {', '.join(wrong)} keys;"
            f" use torchvision's {model} ImageNet checkpoint"
        )


def vgg16(
    in_channels: int,
    num_classes: int,
    image_size: int,
    pretrained: bool = True,
    weights: str | None = None,
    normalise: str = "imagenet",
    **_: Any,
) -> Repairable:
    """VGG16 features -> Flatten -> Linear(512 * (size // 32)^2, 4096) -> ReLU | Linear(C)."""
    from torchvision.models.vgg import cfgs, make_layers

    if image_size < 32:
        raise BadInput(f"vgg16 needs image_size >= 32 (five 2x poolings), got {image_size}")
    # torchvision's own VGG16 feature stack ("D"), without building its 120M-weight
    # classifier that this head replaces (1.5 s and 0.5 GB for nothing).
    features = make_layers(cfgs["D"], batch_norm=False)
    layers: list[nn.Module] = []
    if pretrained:
        load_features(features, weights_path("vgg16", VGG16_FILE, weights), "vgg16")
        layers.append(ImageNetInput(in_channels, normalise == "imagenet"))
    else:
        if in_channels != 3:
            features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
        for m in features.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
    side = image_size // 32
    body = nn.Sequential(
        *layers, features, nn.Flatten(), nn.Linear(512 * side * side, 4096), nn.ReLU()
    )
    return Repairable(body, nn.Linear(4096, num_classes))


def _densenet_key(key: str) -> str:
    match = _DENSENET_OLD_KEY.match(key)
    return match.group(1) + match.group(2) if match else key


def densenet121(
    in_channels: int,
    num_classes: int,
    image_size: int,
    pretrained: bool = False,
    weights: str | None = None,
    normalise: str = "imagenet",
    **_: Any,
) -> Repairable:
    """torchvision DenseNet121 (from scratch by default, as the paper) with a Linear(1024, C)."""
    from torchvision.models import densenet121 as tv_densenet121

    if image_size < 32:
        raise BadInput(f"densenet121 needs image_size >= 32 (five 2x reductions), got {image_size}")
    features = tv_densenet121(weights=None).features
    layers: list[nn.Module] = []
    if pretrained:
        path = weights_path("densenet121", DENSENET121_FILE, weights)
        load_features(features, path, "densenet121", _densenet_key)
        layers.append(ImageNetInput(in_channels, normalise == "imagenet"))
    elif in_channels != 3:
        features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(features.conv0.weight)  # as torchvision initialises convs
    body = nn.Sequential(*layers, features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Repairable(body, nn.Linear(1024, num_classes))
