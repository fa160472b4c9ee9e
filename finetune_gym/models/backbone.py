"""What every source network becomes: :class:`Backbone` (network, layers, input statistics), and
the small steps all sources share (a new head, torchvision's weights download, the statistics check).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .layers import Layer
from .weights import pretrained_unavailable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """A source network ready to fine-tune: new head fitted, layers cut, input statistics."""

    model: nn.Module
    layers: list[Layer]
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]


def replace_head(network: nn.Module, head: str, num_classes: int) -> None:
    """A new Linear of ``num_classes`` outputs where ``head`` (a dotted module name) was."""
    old = network.get_submodule(head)
    network.set_submodule(head, nn.Linear(old.in_features, num_classes))


def is_checkpoint_path(weights: str | os.PathLike) -> bool:
    """Whether ``weights`` names a file (a path, or a name with an extension), not weights by name."""
    return (
        isinstance(weights, os.PathLike) or os.sep in str(weights) or bool(os.path.splitext(str(weights))[1])
    )


def fetch_torchvision(weights: Any, what: str) -> dict[str, torch.Tensor]:
    """A torchvision weights enum member's state dict, from the hub cache or the internet, with the
    offline error that names the file to put in the cache."""
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as error:
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", weights.url.rsplit("/", 1)[-1])
        raise pretrained_unavailable(what, weights.url, Path(cache), error) from error


def check_statistics(
    mean: Sequence[float] | None, std: Sequence[float] | None, backbone: Backbone
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input statistics asked for, checked against the network's input channels."""
    mean = tuple(float(v) for v in (mean if mean is not None else backbone.mean))
    std = tuple(float(v) for v in (std if std is not None else backbone.std))
    channels = backbone.in_channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean={list(mean)} and std={list(std)} need one value per input channel of the model ({channels})"
        )
    if not all(v > 0 for v in std):
        raise ValueError(f"std={list(std)}: every value must be positive (inputs are divided by it)")
    return mean, std
