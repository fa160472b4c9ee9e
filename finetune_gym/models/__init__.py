"""Source networks, with their pretrained weights, new head and layer cut.

``build_backbone("resnet50", num_classes=100, weights="imagenet")`` returns the
network with the source weights loaded and a new head, and the list of layers
the agent assigns learning rates to. Sources: the ResNets served by name (:mod:`.resnets`),
torchvision's other families by builder name (:mod:`.families`), or a network of your own by
import path or as a module (:mod:`.custom`); each becomes a :class:`.backbone.Backbone`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .backbone import Backbone, check_statistics
from .custom import RECORDED, build_custom, build_from_import_path, is_import_path, unrebuildable
from .families import BUILDERS, build_family
from .layers import GRANULARITIES, Layer, check_granularity
from .resnets import BACKBONES, DIGITS_MEAN, DIGITS_STD, BackboneSpec, build_resnet, register_pretrained
from .weights import WeightsError


def model_names() -> list[str]:
    """Every model served by name."""
    return [*BACKBONES, *BUILDERS]


def build_backbone(
    model: str | nn.Module,
    num_classes: int,
    *,
    weights: str | os.PathLike | None,
    granularity: str = "block",
    seed: int = 0,
    image_size: int = 224,
    model_kwargs: dict[str, Any] | None = None,
    layers: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Backbone:
    """The source network with its weights loaded, a new ``num_classes`` head, and its layers.

    ``model`` is a name (:func:`model_names`), an import path ``"package.module:factory"`` (called
    with ``model_kwargs``), or an ``nn.Module`` (copied). ``weights`` is a pretrained name of the
    model (``"imagenet"``, a torchvision weights enum name, ``"cifar10"``, ``"digits"``), a
    checkpoint path, or ``None`` (random initialisation). The new head, and a random
    initialisation, are drawn from ``seed``. ``layers`` overrides the cut; ``mean``/``std`` the
    input statistics (default: the weights' own, where torchvision declares them).
    """
    check_granularity(granularity)
    if isinstance(model, dict) and RECORDED in model:
        raise unrebuildable(model)
    if model_kwargs and not (is_import_path(model) or model in BUILDERS):
        raise ValueError(
            "model_kwargs go to a factory: give model as an import path 'package.module:factory' or a "
            f"torchvision builder name ({', '.join(BUILDERS)}), not {_label(model)!r}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(model, str) and model in BACKBONES:
            backbone = build_resnet(model, num_classes, weights, granularity, layers)
        elif isinstance(model, str) and model in BUILDERS:
            backbone = build_family(
                model, num_classes, weights, granularity, image_size, dict(model_kwargs or {}), layers
            )
        elif is_import_path(model) or isinstance(model, nn.Module):
            network = (
                copy.deepcopy(model)
                if isinstance(model, nn.Module)
                else build_from_import_path(model, num_classes, dict(model_kwargs or {}))
            )
            backbone = build_custom(network, num_classes, weights, granularity, layers, _label(model))
        else:
            raise ValueError(
                f"unknown model {_label(model)!r}: choose one of {', '.join(model_names())}, give an import "
                "path 'package.module:factory', or pass an nn.Module"
            )
    if mean is not None or std is not None:
        backbone.mean, backbone.std = check_statistics(mean, std, backbone)
    return backbone


def _label(model: object) -> str:
    return model if isinstance(model, str) else type(model).__name__


__all__ = [
    "BACKBONES",
    "BUILDERS",
    "GRANULARITIES",
    "Backbone",
    "BackboneSpec",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "Layer",
    "WeightsError",
    "build_backbone",
    "model_names",
    "register_pretrained",
]
