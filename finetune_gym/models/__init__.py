"""Source networks, with their pretrained weights, new head and layer cut.

``build_backbone("resnet50", num_classes=100, weights="imagenet")`` returns the
network with the source weights loaded and a new head, and the list of layers
the agent assigns learning rates to. Sources: the ResNets and CIFAR/digits ResNets here,
torchvision's other families by builder name (:mod:`.families`), or a network of your own by
import path or as a module (:mod:`.custom`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm

from .cifar_resnet import cifar_resnet, digits_resnet
from .custom import RECORDED, build_from_import_path, is_import_path, unrebuildable
from .families import BUILDERS, FAMILIES, family_of
from .layers import GRANULARITIES, Layer, check_granularity, generic_layers, named_layers, resnet_layers
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
        return _fetch(getattr(tvm, f"ResNet{depth}_Weights")[enum_name], f"ImageNet ResNet-{depth}")

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
            backbone = _named_backbone(model, num_classes, weights, granularity, layers)
        elif isinstance(model, str) and model in BUILDERS:
            backbone = _torchvision_backbone(
                model, num_classes, weights, granularity, image_size, dict(model_kwargs or {}), layers
            )
        elif is_import_path(model) or isinstance(model, nn.Module):
            network = (
                copy.deepcopy(model)
                if isinstance(model, nn.Module)
                else build_from_import_path(model, num_classes, dict(model_kwargs or {}))
            )
            backbone = _user_backbone(network, num_classes, weights, granularity, layers, _label(model))
        else:
            raise ValueError(
                f"unknown model {_label(model)!r}: choose one of {', '.join(model_names())}, give an import "
                "path 'package.module:factory', or pass an nn.Module"
            )
    if mean is not None or std is not None:
        backbone.mean, backbone.std = _statistics(mean, std, backbone)
    return backbone


def _label(model: object) -> str:
    return model if isinstance(model, str) else type(model).__name__


def _statistics(
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


def _named_backbone(
    model: str,
    num_classes: int,
    weights: str | os.PathLike | None,
    granularity: str,
    layers: Sequence[str] | None,
) -> Backbone:
    spec = BACKBONES[model]
    network = spec.build()
    if weights is not None:
        state, source = _resolve_weights(model, spec, weights)
        load_source_weights(network, state, head=spec.head, source=source)
    _replace_head(network, spec.head, num_classes)
    cut = (
        named_layers(network, layers)
        if layers is not None
        else resnet_layers(
            network,
            stem=spec.stem,
            stem_probe=spec.stem_probe,
            stages=spec.stages,
            head=spec.head,
            granularity=granularity,
        )
    )
    return Backbone(network, cut, spec.in_channels, spec.mean, spec.std)


def _replace_head(network: nn.Module, head: str, num_classes: int) -> None:
    old = network.get_submodule(head)
    network.set_submodule(head, nn.Linear(old.in_features, num_classes))


def _torchvision_backbone(
    model: str,
    num_classes: int,
    weights: str | os.PathLike | None,
    granularity: str,
    image_size: int,
    model_kwargs: dict[str, Any],
    layers: Sequence[str] | None,
) -> Backbone:
    """A torchvision builder by name: the family's head and cut, the weights enum's statistics."""
    family = FAMILIES[BUILDERS[model]]
    sized = {"image_size": image_size} if BUILDERS[model] == "vit" else {}
    network = getattr(tvm, model)(weights=None, **sized, **model_kwargs)
    enum = tvm.get_model_weights(model)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights is not None:
        names = {"imagenet": "DEFAULT", **{n: n for n in enum.__members__}}
        if isinstance(weights, str) and weights in names:
            chosen = enum[names[weights]]
            state = _fetch(chosen, f"ImageNet {model} ({chosen.name})")
            transform = chosen.transforms()
            mean, std = tuple(transform.mean), tuple(transform.std)
            source = f"torchvision {enum.__name__}.{chosen.name}"
        elif isinstance(weights, os.PathLike) or os.sep in str(weights) or os.path.splitext(str(weights))[1]:
            state, source = read_state_dict(weights), f"file {str(weights)!r}"
        else:
            raise WeightsError(
                f"unknown weights {weights!r} for model {model!r}: use 'imagenet' (its DEFAULT), a name of "
                f"{enum.__name__} ({', '.join(enum.__members__)}), a checkpoint file path, or None"
            )
        if sized and "encoder.pos_embedding" in state:
            state = _resize_position_embedding(network, state)
        load_source_weights(network, state, head=family.head, source=source)
    _replace_head(network, family.head, num_classes)
    cut = (
        named_layers(network, layers, tokens=family.tokens)
        if layers is not None
        else family.layers(network, granularity, model)
    )
    return Backbone(network, cut, 3, mean, std)


def _fetch(weights: Any, what: str) -> dict[str, torch.Tensor]:
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as error:
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", weights.url.rsplit("/", 1)[-1])
        raise pretrained_unavailable(what, weights.url, Path(cache), error) from error


def _resize_position_embedding(network: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ViT's pretrained position embedding interpolated to this network's image size
    (torchvision's own ``interpolate_embeddings``), so the weights serve any input size."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    if state["encoder.pos_embedding"].shape == network.encoder.pos_embedding.shape:
        return state
    return dict(interpolate_embeddings(network.image_size, network.patch_size, state))


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


def _user_backbone(
    model: nn.Module,
    num_classes: int,
    weights: str | os.PathLike | None,
    granularity: str,
    layers: Sequence[str] | None,
    what: str,
) -> Backbone:
    """A user's own network. A torchvision family (a ResNet, MobileNet, ... built by the user) gets
    its family's head and cut; any other network is used as given (its head must already fit),
    cut one layer per child with parameters, or as ``layers`` says."""
    family_name = family_of(model)
    family = FAMILIES.get(family_name) if family_name else None
    if weights is not None:
        if isinstance(weights, str) and not (os.sep in weights or os.path.splitext(weights)[1]):
            raise WeightsError(
                f"weights={weights!r}: a model of your own loads weights from a checkpoint file path "
                "(or load them into the module before passing it), not by name"
            )
        load_source_weights(
            model,
            read_state_dict(weights),
            head=family.head if family else None,
            source=f"file {str(weights)!r}",
        )
    if family is not None and model.get_submodule(family.head).out_features != num_classes:
        _replace_head(model, family.head, num_classes)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1].out_features != num_classes:
        raise ValueError(
            f"the model's last Linear layer has {linears[-1].out_features} outputs but the dataset has "
            f"{num_classes} classes: give the model a head of {num_classes} outputs"
        )
    if layers is not None:
        cut = named_layers(model, layers, tokens=family.tokens if family else lambda _n: False)
    elif family is not None:
        cut = family.layers(model, granularity, f"{what} ({family_name})")
    elif granularity != "block":
        raise ValueError(
            f"granularity={granularity!r} is not defined for {what}: a network of your own is cut one layer "
            "per child module with parameters (granularity='block'); name other cuts with layers=[...]"
        )
    else:
        cut = generic_layers(model)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    in_channels = first_conv.in_channels if first_conv is not None else 3
    # Without known training statistics: ImageNet's for RGB, a symmetric [-1, 1] scaling otherwise
    # (mean=/std= say otherwise).
    mean, std = (
        (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ((0.5,) * in_channels, (0.5,) * in_channels)
    )
    return Backbone(model, cut, in_channels, mean, std)


__all__ = [
    "BACKBONES",
    "BUILDERS",
    "GRANULARITIES",
    "Backbone",
    "BackboneSpec",
    "Layer",
    "WeightsError",
    "build_backbone",
    "model_names",
    "register_pretrained",
]
