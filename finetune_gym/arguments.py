"""Checks of the environment's constructor arguments, before anything is built.

A value from a command line arrives as a string when it does not parse as a Python literal
(``lr_max=abc``); without a check it fails deep inside, with a traceback that does not name
the argument. The accepted types are read from the constructor's own annotations.
"""

from __future__ import annotations

import inspect
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

# Annotation names -> what they accept. Bools are not numbers here, though Python says they are.
_ACCEPTS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "None": lambda v: v is None,
    "Path": lambda v: isinstance(v, os.PathLike),
    "nn.Module": lambda v: isinstance(v, nn.Module),
    "torch.device": lambda v: isinstance(v, torch.device),
    "list[float]": lambda v: isinstance(v, (list, tuple)),
    "list[str]": lambda v: isinstance(v, (list, tuple)),
    "dict[str, Any]": lambda v: isinstance(v, dict),
}


def check_types(function: Callable[..., Any], arguments: dict[str, Any]) -> None:
    """ValueError naming the first argument whose value its annotation does not admit."""
    for name, parameter in inspect.signature(function).parameters.items():
        if name not in arguments or not isinstance(parameter.annotation, str):
            continue
        options = [option.strip() for option in parameter.annotation.split("|")]
        if any(option not in _ACCEPTS for option in options):
            continue  # an annotation this check does not know: nothing is claimed
        value = arguments[name]
        if not any(_ACCEPTS[option](value) for option in options):
            raise ValueError(f"{name} must be {' or '.join(options)}, got {value!r} ({type(value).__name__})")


def check_choice(kind: str, value: Any, choices: Sequence[str]) -> Any:
    """``value`` if it is one of ``choices``; else a ValueError naming them all."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}: choose one of {', '.join(choices)}")
    return value


def check_positive_integers(**values: Any) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
