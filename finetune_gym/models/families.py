"""Torchvision's other ImageNet families as sources: MobileNetV2/V3, EfficientNet, ConvNeXt, ViT,
built by name (:func:`build_family`: the weights enum's weights and statistics, a new head, the cut).

Each family says where its new head goes and how it is cut into layers at each granularity
("stage": resolution stages, "block": each residual block, "conv": each conv with its norm). A
granularity a family has no meaning for (a ViT has no stages and no convs to speak of) is an
error, never a silent fallback. The ResNets are built by name in :mod:`.resnets`; their classes
are families here too, so that a ResNet built by import path or passed as a module gets the same
head and cut as one built by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
from .cifar_resnet import CifarResNet
from .layers import Layer, check_partition, conv_units, named_layers
from .resnets import BACKBONES
from .weights import WeightsError, load_source_weights, read_state_dict

Cut = Callable[[nn.Module, str], list[Layer]]


@dataclass(frozen=True)
class Family:
    """A torchvision family: its classes, head, cut and the granularities the cut knows."""

    classes: tuple[type[nn.Module], ...]
    head: str  # the Linear replaced by a new head sized to the target classes
    cut: Cut
    granularities: tuple[str, ...]
    tokens: Callable[[str], bool] = lambda _name: False  # which modules output (batch, tokens, ch)

    def layers(self, model: nn.Module, granularity: str, what: str) -> list[Layer]:
        if granularity not in self.granularities:
            raise ValueError(
                f"granularity={granularity!r} is not defined for {what}: use one of "
                f"{', '.join(self.granularities)}, or name the layers yourself with layers=[module names]"
            )
        layers = self.cut(model, granularity)
        check_partition(model, layers)
        return layers


def _one(model: nn.Module, name: str, tokens: bool = False) -> Layer:
    """A layer of the one module named ``name``, read at its output."""
    module = model.get_submodule(name)
    return Layer(name, [module], module, tokens=tokens)


def _units(model: nn.Module, prefix: str) -> list[Layer]:
    block = model.get_submodule(prefix)
    return [Layer(f"{prefix}.{name}", mods, mods[-1]) for name, mods in conv_units(block)]


def _head_layers(model: nn.Module, classifier: str) -> list[Layer]:
    """The classifier's Linears, each its own layer (MobileNetV3 has a hidden one before the head);
    a norm inside the classifier (ConvNeXt) goes with the first of them."""
    layers: list[Layer] = []
    pending: list[nn.Module] = []
    for name, module in model.get_submodule(classifier).named_children():
        if isinstance(module, nn.Linear):
            layers.append(Layer(f"{classifier}.{name}", [*pending, module], module))
            pending = []
        elif any(True for _ in module.parameters()):
            pending.append(module)
    layers[-1].name = "head"
    return layers


def _inverted_residual_cut(model: nn.Module, granularity: str) -> list[Layer]:
    """MobileNetV2/V3: ``features`` = stem conv, inverted-residual blocks, last 1x1 conv; a stage
    is a run of blocks of the same output width (same resolution and channels)."""
    features = list(model.features.named_children())
    blocks = features[1:-1]
    layers = [_one(model, "features.0")]
    if granularity == "block":
        layers += [_one(model, f"features.{name}") for name, _ in blocks]
    elif granularity == "conv":
        for name, _ in blocks:
            layers += _units(model, f"features.{name}")
    else:
        runs: list[list[str]] = []
        for name, block in blocks:
            if runs and model.get_submodule(f"features.{runs[-1][-1]}").out_channels == block.out_channels:
                runs[-1].append(name)
            else:
                runs.append([name])
        for run in runs:
            modules = [model.get_submodule(f"features.{n}") for n in run]
            name = f"features.{run[0]}" + (f"-{run[-1]}" if len(run) > 1 else "")
            layers.append(Layer(name, modules, modules[-1]))
    layers.append(_one(model, f"features.{features[-1][0]}"))
    return layers + _head_layers(model, "classifier")


def _efficientnet_cut(model: nn.Module, granularity: str) -> list[Layer]:
    """EfficientNet: ``features`` = stem conv, seven stages of MBConv blocks, last 1x1 conv."""
    names = [name for name, _ in model.features.named_children()]
    layers = [_one(model, "features.0")]
    for stage in names[1:-1]:
        prefix = f"features.{stage}"
        if granularity == "stage":
            layers.append(_one(model, prefix))
        else:
            for block, _ in model.get_submodule(prefix).named_children():
                full = f"{prefix}.{block}"
                layers += [_one(model, full)] if granularity == "block" else _units(model, full)
    layers.append(_one(model, f"features.{names[-1]}"))
    return layers + _head_layers(model, "classifier")


def _convnext_cut(model: nn.Module, granularity: str) -> list[Layer]:
    """ConvNeXt: ``features`` = stem, then four stages of CNBlocks with a downsampling layer before
    each of the last three. "stage": a stage with the downsampling before it; "block": each CNBlock,
    each downsampling its own layer. The classifier's LayerNorm goes with the head."""
    names = [name for name, _ in model.features.named_children()]
    layers = [_one(model, "features.0")]
    for i, name in enumerate(names[1:], start=1):
        prefix = f"features.{name}"
        is_stage = i % 2 == 1
        if granularity == "stage":
            if is_stage:
                down = [f"features.{names[i - 1]}"] if i > 1 else []
                layers.append(
                    Layer(
                        prefix, [model.get_submodule(n) for n in (*down, prefix)], model.get_submodule(prefix)
                    )
                )
        elif is_stage:
            layers += [
                _one(model, f"{prefix}.{block}") for block, _ in model.get_submodule(prefix).named_children()
            ]
        else:
            layers.append(_one(model, prefix))
    return layers + _head_layers(model, "classifier")


def _vit_cut(model: nn.Module, granularity: str) -> list[Layer]:
    """ViT: the patch embedding with the class token and position embedding, each encoder block
    (outputs are tokens), and the head with the encoder's final LayerNorm."""
    stem = Layer(
        "conv_proj",
        [model.conv_proj],
        model.conv_proj,
        [model.class_token, model.encoder.pos_embedding],
    )
    blocks = [
        _one(model, f"encoder.layers.{name}", tokens=True)
        for name, _ in model.encoder.layers.named_children()
    ]
    head = Layer("head", [model.encoder.ln, model.heads], model.heads.head)
    return [stem, *blocks, head]


FAMILIES: dict[str, Family] = {
    # Any depth: the cut reads each stage's children, so one spec serves every member of the class.
    "resnet": Family((tvm.ResNet,), "fc", BACKBONES["resnet50"].cut, ("stage", "block", "conv")),
    "cifar_resnet": Family(
        (CifarResNet,), "linear", BACKBONES["cifar_resnet20"].cut, ("stage", "block", "conv")
    ),
    "mobilenet_v2": Family(
        (tvm.MobileNetV2,), "classifier.1", _inverted_residual_cut, ("stage", "block", "conv")
    ),
    "mobilenet_v3": Family(
        (tvm.MobileNetV3,), "classifier.3", _inverted_residual_cut, ("stage", "block", "conv")
    ),
    "efficientnet": Family(
        (tvm.EfficientNet,), "classifier.1", _efficientnet_cut, ("stage", "block", "conv")
    ),
    "convnext": Family((tvm.ConvNeXt,), "classifier.2", _convnext_cut, ("stage", "block")),
    "vit": Family(
        (tvm.VisionTransformer,),
        "heads.head",
        _vit_cut,
        ("block",),
        tokens=lambda name: name == "encoder" or name.startswith("encoder."),
    ),
}
# The torchvision builders served by name: model="<builder>" (weights: "imagenet" is the family's
# DEFAULT weights; any name of the builder's weights enum works too).
BUILDERS: dict[str, str] = {
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3_small": "mobilenet_v3",
    "mobilenet_v3_large": "mobilenet_v3",
    **{f"efficientnet_b{i}": "efficientnet" for i in range(8)},
    **{f"convnext_{size}": "convnext" for size in ("tiny", "small", "base", "large")},
    **{f"vit_{size}": "vit" for size in ("b_16", "b_32", "l_16", "l_32")},
}


def family_of(model: nn.Module) -> str | None:
    """The family of a torchvision network (built here, by import path, or passed in), if any."""
    for name, family in FAMILIES.items():
        if isinstance(model, family.classes):
            return name
    return None


def build_family(
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
    try:
        network = getattr(tvm, model)(weights=None, **{**sized, **model_kwargs})
    except TypeError as error:  # a keyword the builder does not take
        raise ValueError(f"model={model!r} with model_kwargs={model_kwargs!r}: {error}") from error
    enum = tvm.get_model_weights(model)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights is not None:
        names = {"imagenet": "DEFAULT", **{n: n for n in enum.__members__}}
        if isinstance(weights, str) and weights in names:
            chosen = enum[names[weights]]
            state = fetch_torchvision(chosen, f"ImageNet {model} ({chosen.name})")
            transform = chosen.transforms()
            mean, std = tuple(transform.mean), tuple(transform.std)
            source = f"torchvision {enum.__name__}.{chosen.name}"
        elif is_checkpoint_path(weights):
            state, source = read_state_dict(weights), f"file {str(weights)!r}"
        else:
            raise WeightsError(
                f"unknown weights {weights!r} for model {model!r}: use 'imagenet' (its DEFAULT), a name of "
                f"{enum.__name__} ({', '.join(enum.__members__)}), a checkpoint file path, or None"
            )
        if sized and "encoder.pos_embedding" in state:
            state = _resize_position_embedding(network, state)
        load_source_weights(network, state, head=family.head, source=source)
    replace_head(network, family.head, num_classes)
    cut = (
        named_layers(network, layers, tokens=family.tokens)
        if layers is not None
        else family.layers(network, granularity, model)
    )
    return Backbone(network, cut, 3, mean, std)


def _resize_position_embedding(network: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ViT's pretrained position embedding interpolated to this network's image size
    (torchvision's own ``interpolate_embeddings``), so the weights serve any input size."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    if state["encoder.pos_embedding"].shape == network.encoder.pos_embedding.shape:
        return state
    return dict(interpolate_embeddings(network.image_size, network.patch_size, state))
