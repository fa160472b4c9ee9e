"""Source networks by name, with their pretrained weights, new head and layer cut.

``build_backbone("resnet50", num_classes=100, weights="imagenet")`` returns the
network with the source weights loaded and a new head, and the list of layers
the agent assigns learning rates to.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision import models as tvm

from .cifar_resnet import cifar_resnet, digits_resnet
from .layers import GRANULARITIES, Layer, check_granularity, generic_layers, resnet_layers
from .weights import (
    WeightsError,
    download_state_dict,
    load_source_weights,
    pretrained_unavailable,
    read_state_dict,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_MEAN, DIGITS_STD = (0.5,), (0.5,)
CIFAR_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/{file}"
CIFAR_FILES = {
    20: "resnet20-12fca82f.th",
    32: "resnet32-d509ac18.th",
    44: "resnet44-014dd654.th",
    56: "resnet56-4bfd9763.th",
}


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one source architecture and where its parts are."""

    build: Callable[[], nn.Module]
    head: str
    stem: tuple[str, ...]
    stem_probe: str
    stages: tuple[str, ...]
    pretrained: dict[str, Callable[[], dict[str, torch.Tensor]]] = field(default_factory=dict)
    in_channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


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


def _torchvision_weights(depth: int, enum_name: str) -> Callable[[], dict[str, torch.Tensor]]:
    def fetch() -> dict[str, torch.Tensor]:
        weights = getattr(tvm, f"ResNet{depth}_Weights")[enum_name]
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError) as error:
            cache = os.path.join(torch.hub.get_dir(), "checkpoints", weights.url.rsplit("/", 1)[-1])
            raise pretrained_unavailable(f"ImageNet ResNet-{depth}", weights.url, cache, error) from error

    return fetch


def _torchvision_spec(depth: int) -> BackboneSpec:
    pretrained = {"imagenet": _torchvision_weights(depth, "IMAGENET1K_V1")}
    for enum_name in getattr(tvm, f"ResNet{depth}_Weights").__members__:
        pretrained[enum_name] = _torchvision_weights(depth, enum_name)
    return BackboneSpec(
        build=lambda: getattr(tvm, f"resnet{depth}")(weights=None),
        head="fc",
        stem=("conv1", "bn1"),
        stem_probe="maxpool",
        stages=("layer1", "layer2", "layer3", "layer4"),
        pretrained=pretrained,
    )


def _cifar_spec(depth: int) -> BackboneSpec:
    url = CIFAR_URL.format(file=CIFAR_FILES[depth])
    return BackboneSpec(
        build=lambda: cifar_resnet(depth),
        head="linear",
        stem=("conv1", "bn1"),
        stem_probe="bn1",
        stages=("layer1", "layer2", "layer3"),
        pretrained={"cifar10": lambda: download_state_dict(url, what=f"CIFAR-10 ResNet-{depth}")},
    )


BACKBONES: dict[str, BackboneSpec] = {
    **{f"resnet{d}": _torchvision_spec(d) for d in (18, 34, 50, 101)},
    **{f"cifar_resnet{d}": _cifar_spec(d) for d in CIFAR_FILES},
    # Its "digits" weights are trained by finetune_gym.digits_source, which registers them.
    "digits_resnet8": BackboneSpec(
        build=lambda: digits_resnet(5),  # the five source digits; the head is replaced
        head="linear",
        stem=("conv1", "bn1"),
        stem_probe="bn1",
        stages=("layer1", "layer2", "layer3"),
        in_channels=1,
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
    ),
}


def register_pretrained(model: str, name: str, load: Callable[[], dict[str, torch.Tensor]]) -> None:
    """Make ``weights=name`` load ``load()`` for ``model``: for weights made by a layer above
    this package (trained on a dataset, say)."""
    BACKBONES[model].pretrained[name] = load


def build_backbone(
    model: str | nn.Module,
    num_classes: int,
    *,
    weights: str | os.PathLike | None,
    granularity: str = "block",
    seed: int = 0,
) -> Backbone:
    """The source network with its weights loaded, a new ``num_classes`` head, and its layers.

    ``weights`` is a pretrained name of the model (``"imagenet"``, ``"cifar10"``,
    ``"digits"``), a checkpoint path, or ``None`` (random initialisation). The new
    head, and a random initialisation, are drawn from ``seed``.
    """
    check_granularity(granularity)
    if isinstance(model, nn.Module):
        return _user_backbone(model, num_classes, weights)
    if model not in BACKBONES:
        raise ValueError(
            f"unknown model {model!r}: choose one of {', '.join(BACKBONES)} or pass an nn.Module"
        )
    spec = BACKBONES[model]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = spec.build()
        if weights is not None:
            state, source = _resolve_weights(model, spec, weights)
            load_source_weights(network, state, head=spec.head, source=source)
        old_head = network.get_submodule(spec.head)
        setattr(network, spec.head, nn.Linear(old_head.in_features, num_classes))
    layers = resnet_layers(
        network,
        stem=spec.stem,
        stem_probe=spec.stem_probe,
        stages=spec.stages,
        head=spec.head,
        granularity=granularity,
    )
    return Backbone(network, layers, spec.in_channels, spec.mean, spec.std)


def _resolve_weights(name: str, spec: BackboneSpec, weights: str | os.PathLike) -> tuple[dict, str]:
    if isinstance(weights, str) and weights in spec.pretrained:
        return spec.pretrained[weights](), f"{name} pretrained weights {weights!r}"
    if isinstance(weights, os.PathLike) or os.sep in str(weights) or os.path.splitext(str(weights))[1]:
        return read_state_dict(weights), f"file {str(weights)!r}"
    names = ", ".join(repr(n) for n in spec.pretrained) or "none"
    raise WeightsError(
        f"unknown weights {weights!r} for model {name!r}: use a pretrained name ({names}), "
        "a checkpoint file path, or None for random initialisation"
    )


def _user_backbone(model: nn.Module, num_classes: int, weights: str | os.PathLike | None) -> Backbone:
    """A user's own network: used as given (its head must already fit), one layer per child."""
    if weights is not None:
        load_source_weights(model, read_state_dict(weights), head=None, source=f"file {str(weights)!r}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1].out_features != num_classes:
        raise ValueError(
            f"the model's last Linear layer has {linears[-1].out_features} outputs but the dataset has "
            f"{num_classes} classes: give the model a head of {num_classes} outputs"
        )
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    in_channels = first_conv.in_channels if first_conv is not None else 3
    # Without known training statistics: ImageNet's for RGB, a symmetric [-1, 1] scaling otherwise.
    mean, std = (
        (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ((0.5,) * in_channels, (0.5,) * in_channels)
    )
    return Backbone(model, generic_layers(model), in_channels, mean, std)


__all__ = [
    "BACKBONES",
    "GRANULARITIES",
    "Backbone",
    "BackboneSpec",
    "Layer",
    "WeightsError",
    "build_backbone",
    "register_pretrained",
]
