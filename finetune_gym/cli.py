"""Small helpers shared by the command lines (``python -m finetune_gym``, ``train.py``, ``evaluate.py``)."""

from __future__ import annotations

import ast


def parse_kwargs(pairs: list[str], flag: str = "--env-kwargs") -> dict[str, object]:
    """``key=value`` pairs; values are Python literals where they parse, strings otherwise."""
    kwargs: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects key=value, got {pair!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs
