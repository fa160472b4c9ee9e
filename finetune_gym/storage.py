"""Where the package keeps what it makes itself, and how it writes files safely."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def cache_dir() -> Path:
    """``$FINETUNE_GYM_HOME``, else ``$XDG_CACHE_HOME/finetune_gym``, else ``~/.cache/finetune_gym``."""
    if "FINETUNE_GYM_HOME" in os.environ:
        return Path(os.environ["FINETUNE_GYM_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "finetune_gym"


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cpu_copy(obj: Any) -> Any:
    """Deep copy with every tensor cloned to the CPU (a saved state must not alias live tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)
