"""The ResNets served by name: torchvision's ImageNet ResNets, the CIFAR-10 ResNets and the built-in
digits ResNet-8, each with its pretrained weights by name and its stem/stages/head for the cut."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision import models as tvm

from .backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    fetch_torchvision,
    is_checkpoint_path,
    replace_head,
)
from .cifar_resnet import cifar_resnet, digits_resnet
from .layers import Layer, named_layers, resnet_layers
from .weights import WeightsError, download_state_dict, load_source_weights, read_state_dict

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

    def cut(self, network: nn.Module, granularity: str) -> list[Layer]:
        """The network's stem, stages of blocks and head at ``granularity``; also the cut of a
        network of this class built elsewhere (by import path, or passed as a module)."""
        return resnet_layers(
            network,
            stem=self.stem,
            stem_probe=self.stem_probe,
            stages=self.stages,
            head=self.head,
            granularity=granularity,
        )


def _torchvision_weights(depth: int, enum_name: str) -> Callable[[], dict[str, torch.Tensor]]:
    def fetch() -> dict[str, torch.Tensor]:
        return fetch_torchvision(
            getattr(tvm, f"ResNet{depth}_Weights")[enum_name], f"ImageNet ResNet-{depth}"
        )

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


def build_resnet(
    model: str,
    num_classes: int,
    weights: str | os.PathLike | None,
    granularity: str,
    layers: Sequence[str] | None,
) -> Backbone:
    """A ResNet of :data:`BACKBONES`: its weights, a new head, its cut (or ``layers``)."""
    spec = BACKBONES[model]
    network = spec.build()
    if weights is not None:
        state, source = _resolve_weights(model, spec, weights)
        load_source_weights(network, state, head=spec.head, source=source)
    replace_head(network, spec.head, num_classes)
    cut = named_layers(network, layers) if layers is not None else spec.cut(network, granularity)
    return Backbone(network, cut, spec.in_channels, spec.mean, spec.std)


def _resolve_weights(name: str, spec: BackboneSpec, weights: str | os.PathLike) -> tuple[dict, str]:
    if isinstance(weights, str) and weights in spec.pretrained:
        return spec.pretrained[weights](), f"{name} pretrained weights {weights!r}"
    if is_checkpoint_path(weights):
        return read_state_dict(weights), f"file {str(weights)!r}"
    names = ", ".join(repr(n) for n in spec.pretrained) or "none"
    raise WeightsError(
        f"unknown weights {weights!r} for model {name!r}: use a pretrained name ({names}), "
        "a checkpoint file path, or None for random initialisation"
    )
