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
from typing import Any

from torch import nn

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
