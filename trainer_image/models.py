"""Models as the repair sees them. Every model (a built-in of ``orchestrator.catalog`` or an
import path) is a ``Repairable``: a body up to the penultimate activations and a final
``nn.Linear`` head producing class scores (logits).

Arachne changes only the head, so the repair step asks the model for ``body(x)`` once and
searches over ``head`` weights; keeping the split explicit here is what makes that possible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from orchestrator import catalog
from orchestrator.catalog import resolve
from orchestrator.errors import BadInput
from orchestrator.spec import IMAGENET_MODELS, ModelSpec


class Repairable(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def as_repairable(model: nn.Module, num_classes: int | None = None) -> Repairable:
    """Split a model into body + final Linear, or say why it cannot be repaired."""
    if isinstance(model, Repairable):
        head = model.head
    elif isinstance(model, nn.Sequential) and len(model) > 0 and isinstance(model[-1], nn.Linear):
        head = model[-1]
        model = Repairable(nn.Sequential(*list(model)[:-1]), head)
    else:
        raise BadInput(
            f"model {type(model).__name__} cannot be repaired: its last layer must be an"
            " nn.Linear producing class scores (return a Repairable or an nn.Sequential"
            " ending in nn.Linear)"
        )
    if not isinstance(head, nn.Linear):
        raise BadInput(f"model head is {type(head).__name__}, not nn.Linear over class scores")
    if num_classes is not None and head.out_features != num_classes:
        raise BadInput(
            f"model's final Linear has {head.out_features} outputs but the dataset has"
            f" {num_classes} classes"
        )
    return model


def small_cnn(in_channels: int, num_classes: int, image_size: int, **_: Any) -> Repairable:
    """Two 3x3 convolutions, one pooling, a 64-unit hidden layer, a Linear head."""
    side = image_size // 2
    body = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * side * side, 64),
        nn.ReLU(),
    )
    return Repairable(body, nn.Linear(64, num_classes))


def build_model(spec: ModelSpec, in_channels: int, num_classes: int, image_size: int) -> Repairable:
    factory: Callable[..., nn.Module] = resolve(catalog.model_factory(spec.name))
    kwargs: dict[str, Any] = dict(spec.options)
    if spec.pretrained is not None:
        kwargs["pretrained"] = spec.pretrained
    if spec.weights is not None:
        kwargs["weights"] = spec.weights
    if spec.normalise != "imagenet" or spec.name in IMAGENET_MODELS:
        kwargs["normalise"] = spec.normalise
    model = factory(
        in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kwargs
    )
    return as_repairable(model, num_classes)
