"""How a network is cut into the "layers" that RL-Tune gives learning rates to.

A layer is a set of modules whose parameters share one learning rate (one Adam
param group) plus one module whose output is pooled into the observation. The
cut is described once per architecture family and checked for the invariant the
optimizer relies on: every trainable parameter belongs to exactly one layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from ..arguments import check_choice

Granularity = Literal["stage", "block", "conv"]
GRANULARITIES: tuple[str, ...] = ("stage", "block", "conv")


@dataclass
class Layer:
    """One learning-rate unit: its parameters and the module whose output the agent sees.

    ``parameters`` may name tensors that belong to no module of their own (a ViT's class token and
    position embedding); ``tokens`` says the probe's output is ``(batch, tokens, channels)``, so
    the observation averages its tokens rather than treating them as channels.
    """

    name: str
    modules: list[nn.Module]
    probe: nn.Module
    parameters: list[nn.Parameter] = field(default_factory=list)
    tokens: bool = False

    def __post_init__(self) -> None:
        own, self.parameters = list(self.parameters), []
        seen: set[int] = set()
        for p in [*own, *(q for module in self.modules for q in module.parameters())]:
            if id(p) not in seen:
                seen.add(id(p))
                self.parameters.append(p)


def check_granularity(granularity: str) -> None:
    check_choice("granularity", granularity, GRANULARITIES)


def resnet_layers(
    model: nn.Module,
    *,
    stem: Sequence[str],
    stem_probe: str,
    stages: Sequence[str],
    head: str,
    granularity: str,
) -> list[Layer]:
    """Cut a ResNet-shaped network (stem, residual stages of blocks, linear head).

    - "stage": stem, one layer per stage, head.
    - "block": stem, one layer per residual block, head (torchvision ResNet-50: 18).
    - "conv": stem, each conv with the BatchNorm that follows it, each projection
      shortcut, head. The probe of a conv layer is its BatchNorm (the block's
      ReLU module is shared between convs, so it cannot be hooked per conv).
    """
    check_granularity(granularity)
    get = model.get_submodule
    layers = [Layer("stem", [get(name) for name in stem], get(stem_probe))]
    for stage_name in stages:
        stage = get(stage_name)
        if granularity == "stage":
            layers.append(Layer(stage_name, [stage], stage))
            continue
        for block_name, block in stage.named_children():
            full = f"{stage_name}.{block_name}"
            if granularity == "block":
                layers.append(Layer(full, [block], block))
                continue
            for child_name, child in block.named_children():
                if isinstance(child, nn.Conv2d):
                    bn_name = "bn" + child_name.removeprefix("conv")
                    bn = getattr(block, bn_name, None)
                    modules = [child] + ([bn] if isinstance(bn, nn.BatchNorm2d) else [])
                    layers.append(Layer(f"{full}.{child_name}", modules, modules[-1]))
                elif any(True for _ in child.parameters()) and not isinstance(child, nn.BatchNorm2d):
                    layers.append(Layer(f"{full}.{child_name}", [child], child))
    layers.append(Layer("head", [get(head)], get(head)))
    check_partition(model, layers)
    return layers


def conv_units(module: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """A convolutional block cut at "conv" granularity, in forward order: each conv with the norm
    that follows it (torchvision's ``Conv2dNormActivation`` whole), each squeeze-excitation whole."""
    from torchvision.ops import Conv2dNormActivation, SqueezeExcitation

    units: list[tuple[str, list[nn.Module]]] = []

    def walk(prefix: str, parent: nn.Module) -> None:
        for name, child in parent.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, (Conv2dNormActivation, SqueezeExcitation, nn.Conv2d)):
                units.append((full, [child]))
            elif isinstance(child, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and units:
                units[-1][1].append(child)
            elif any(True for _ in child.parameters(recurse=False)):
                units.append((full, [child]))
            else:
                walk(full, child)

    walk("", module)
    return units


def named_layers(
    model: nn.Module, specs: Sequence[str], *, tokens: Callable[[str], bool] = lambda _name: False
) -> list[Layer]:
    """The cut ``layers=[...]`` asks for: each entry one layer, made of one module or parameter
    name, or several joined by ``+`` (``"conv_proj+class_token"``); its last module is what the
    observation reads."""
    if isinstance(specs, str) or not specs:
        raise ValueError(f"layers must be a non-empty list of module names, got {specs!r}")
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    layers = []
    for spec in specs:
        parts = [part.strip() for part in str(spec).split("+")]
        unknown = [part for part in parts if part not in modules and part not in params]
        if unknown:
            some = ", ".join(name for name in modules if name and "." not in name)
            raise ValueError(
                f"layers: {unknown} name no module or parameter of {type(model).__name__} (its top-level "
                f"modules: {some}; list all with model.named_modules())"
            )
        mods = [modules[part] for part in parts if part in modules]
        if not mods:
            raise ValueError(f"layers: {spec!r} has no module whose output the observation could read")
        probe = parts[max(i for i, part in enumerate(parts) if part in modules)]
        layers.append(
            Layer(
                str(spec),
                mods,
                modules[probe],
                [params[part] for part in parts if part not in modules],
                tokens=tokens(probe),
            )
        )
    check_partition(model, layers)
    return layers


def generic_layers(model: nn.Module) -> list[Layer]:
    """Fallback for a user's own module: each direct child with parameters is a layer."""
    layers = [
        Layer(name, [child], child)
        for name, child in model.named_children()
        if any(True for _ in child.parameters())
    ]
    if not layers:
        raise ValueError("the model has no child module with parameters to fine-tune")
    check_partition(model, layers)
    return layers


def check_partition(model: nn.Module, layers: Sequence[Layer]) -> None:
    """Every trainable parameter in exactly one layer, or the optimizer would double-step it."""
    owner: dict[int, str] = {}
    for layer in layers:
        for p in layer.parameters:
            if id(p) in owner:
                raise ValueError(f"parameter shared by layers {owner[id(p)]!r} and {layer.name!r}")
            owner[id(p)] = layer.name
    orphans = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in owner]
    if orphans:
        raise ValueError(
            f"parameters not assigned to any layer: {orphans[:10]}"
            + (f" ... ({len(orphans)} in all)" if len(orphans) > 10 else "")
            + ": name their modules in layers=[...], or freeze them (requires_grad=False)"
        )
