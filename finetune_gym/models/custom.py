"""A user's own source network: by import path (rebuildable from a run folder) or as a module.

An import path ``"package.module:factory"`` names a function (or class) that returns the network,
the way gymnasium names entry points; ``model_kwargs`` are its keyword arguments, and a factory
that takes ``num_classes`` gets the target's class count. Being text, the path goes through the
CLI, ``config.json``, ``--resume``, ``evaluate.py`` and W&B like a built-in name. A module passed
as an object is copied (the caller's stays untouched) and recorded by class and size: a run
folder cannot rebuild it, and says so.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from .backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, is_checkpoint_path, replace_head
from .families import FAMILIES, family_of
from .layers import generic_layers, named_layers
from .weights import WeightsError, load_source_weights, read_state_dict

# The key of a recorded module in a configuration: {"module": "pkg.Class", "parameters": N, ...}.
RECORDED = "module"


def is_import_path(model: object) -> bool:
    return isinstance(model, str) and ":" in model


def load_factory(path: str) -> Any:
    """The object ``"package.module:attribute"`` names (dots after the colon walk attributes)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"model={path!r}: an import path is 'package.module:factory'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"model={path!r}: cannot import {module_name!r} ({error}); install the package that has it "
            "or put its folder on PYTHONPATH"
        ) from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"model={path!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model={path!r} names a {type(target).__name__}, not a function or class")
    return target


def build_from_import_path(path: str, num_classes: int, model_kwargs: dict[str, Any]) -> nn.Module:
    """Call the factory ``path`` names with ``model_kwargs`` (plus ``num_classes`` if it takes it)."""
    factory = load_factory(path)
    kwargs = dict(model_kwargs)
    try:
        takes = "num_classes" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        takes = False
    if takes and "num_classes" not in kwargs:
        kwargs["num_classes"] = num_classes
    try:
        network = factory(**kwargs)
    except TypeError as error:
        raise ValueError(f"model={path!r} with model_kwargs={model_kwargs!r}: {error}") from error
    except Exception as error:  # the user's own code failed: say whose, in one line
        raise ValueError(f"model={path!r}: the factory raised {type(error).__name__}: {error}") from error
    if not isinstance(network, nn.Module):
        raise ValueError(f"model={path!r} returned a {type(network).__name__}, not a torch.nn.Module")
    return network


def describe_module(module: nn.Module) -> dict[str, Any]:
    """What a configuration records of a module passed as an object (not its 10 kB repr)."""
    cls = type(module)
    return {
        RECORDED: f"{cls.__module__}.{cls.__qualname__}",
        "parameters": sum(p.numel() for p in module.parameters()),
        "rebuild": "a Python object: pass it again, or name its factory as model='package.module:factory'",
    }


def unrebuildable(recorded: dict[str, Any]) -> ValueError:
    return ValueError(
        f"this configuration's model was a Python object ({recorded.get(RECORDED)}, "
        f"{recorded.get('parameters')} parameters), which a run folder cannot rebuild: pass the module "
        "again (model=<nn.Module>), or give its factory as an import path, "
        "model='package.module:factory' with model_kwargs"
    )


def build_custom(
    model: nn.Module,
    num_classes: int,
    weights: str | os.PathLike | None,
    granularity: str,
    layers: Sequence[str] | None,
    what: str,
) -> Backbone:
    """A user's own network. A network of a family in :data:`families.FAMILIES` (a torchvision
    ResNet, MobileNet, EfficientNet, ConvNeXt or ViT, or a CIFAR ResNet, built by the user) gets its
    family's head and cut; any other network is used as given (its head must already fit), cut one
    layer per child with parameters, or as ``layers`` says."""
    family_name = family_of(model)
    family = FAMILIES.get(family_name) if family_name else None
    if weights is not None:
        if isinstance(weights, str) and not is_checkpoint_path(weights):
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
        replace_head(model, family.head, num_classes)
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
