"""Code named in a file runs only when the person at the command line asked for it.

A source network may be given as an import path, ``model="package.module:factory"``: importing it
runs that module's code. Typed on the command line or in the user's own Python, that is the user's
choice. Read back from a file (a run's ``config.json`` on ``--resume`` or ``evaluate.py --agent``,
the settings stored in ``final_model.pt``), it is anyone's: a run folder downloaded from someone
else would execute whatever it names. So every place that rebuilds an environment from a file
checks it here first, and imports it only with ``--trust-code`` (``trust_code=True`` in Python;
the ``trust_remote_code`` convention of Hugging Face) or when the command line names the same path.

A policy card never reaches here: it sets only the options its actions and observations assume
(:data:`finetune_gym.agents.pretrained.CARD_OPTIONS`), never a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from finetune_gym.models.custom import is_import_path

TRUST_FLAG = "--trust-code"
CODE_KEYS = ("model",)  # the settings whose value may be an import path (the env imports it)


class UntrustedCodeError(ValueError):
    """A file names code to import, and nobody at the command line asked for it."""


def named_code(settings: Any) -> Iterator[str]:
    """Every import path under a :data:`CODE_KEYS` key of ``settings``, at any depth (task lists
    of a pretraining configuration included)."""
    if isinstance(settings, dict):
        for key, value in settings.items():
            if key in CODE_KEYS and is_import_path(value):
                yield value
            else:
                yield from named_code(value)
    elif isinstance(settings, (list, tuple)):
        for value in settings:
            yield from named_code(value)


def check_code(settings: Any, source: str, *, trust_code: bool = False, given: Iterable[str] = ()) -> None:
    """Refuse (one line, :class:`UntrustedCodeError`) if ``settings``, read from ``source``, name an
    import path that is neither trusted (``trust_code``) nor ``given`` on the command line."""
    if trust_code:
        return
    allowed = set(given)
    for path in named_code(settings):
        if path not in allowed:
            raise UntrustedCodeError(
                f"{source} names code to import and run, model={path!r}, which runs only if you ask for "
                f"it: pass {TRUST_FLAG} if you trust that file (trust_code=True in Python), or give "
                f"model={path} on the command line yourself"
            )
