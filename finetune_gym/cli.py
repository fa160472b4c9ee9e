"""Small helpers shared by the command lines (``python -m finetune_gym``, ``train.py``, ``evaluate.py``)."""

from __future__ import annotations

import ast
import sys


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


def require_agents(script: str) -> None:
    """Stop ``script`` with what to do when ``finetune_gym.agents`` cannot be imported.

    The repository keeps the agents in a top-level ``agents/`` folder that installs as
    ``finetune_gym.agents`` (pyproject.toml maps it): in a clone that was never installed,
    ``python train.py`` would otherwise end in a bare ModuleNotFoundError."""
    import importlib.util

    try:
        found = importlib.util.find_spec("finetune_gym.agents") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        print(
            f"{script}: error: finetune-gym is not installed in this Python ({sys.executable}): its "
            "agents import as finetune_gym.agents once installed. Run the README's install in the "
            'repository folder: pip install torch==2.14.1 torchvision==0.29.1 && pip install -e "."',
            file=sys.stderr,
        )
        raise SystemExit(2)  # as the command lines' other usage errors
