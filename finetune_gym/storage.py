"""Where the package keeps what it makes itself, and how it writes files safely."""

from __future__ import annotations

import copy
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch


def cache_dir() -> Path:
    """``$FINETUNE_GYM_HOME``, else ``$XDG_CACHE_HOME/finetune_gym``, else ``~/.cache/finetune_gym``."""
    if "FINETUNE_GYM_HOME" in os.environ:
        return Path(os.environ["FINETUNE_GYM_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "finetune_gym"


class _WholeWrites:
    """A file handle for ``torch.save`` that writes every byte or raises the system's OSError.

    PyTorch's zip writer turns a short write (a full disk, ``ulimit -f``) into
    ``RuntimeError: [enforce fail at inline_container.cc ...] unexpected pos``, which names
    neither the file nor the cause; writing the rest of each chunk surfaces the real error
    (ENOSPC, EFBIG), kept here to be raised instead.
    """

    def __init__(self, handle: Any, path: Path) -> None:
        self.handle, self.path = handle, path
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += self.handle.write(view[done:]) or 0
        except OSError as error:
            self.error = OSError(error.errno, error.strerror, str(self.path))
            raise
        return done

    def flush(self) -> None:
        self.handle.flush()


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file.

    A write that fails (disk full, file size limit) raises ``OSError`` naming ``path`` and leaves
    no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    writer = None
    try:
        with os.fdopen(fd, "wb", buffering=0) as handle:
            writer = _WholeWrites(handle, path)
            torch.save(obj, writer)
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if writer is not None and writer.error is not None and not isinstance(error, OSError):
            raise writer.error from error
        raise


class UnreadableFile(ValueError):
    """A file that does not load as tensors and plain values (``torch.load(weights_only=True)``)."""


def load_tensors(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain values, never a pickled
    object (which could run code). A failure is one line (:class:`UnreadableFile`): PyTorch's own
    message spans a dozen lines and suggests ``weights_only=False``, the one thing not to do with a
    file of unknown origin."""
    try:
        with warnings.catch_warnings():  # a raw pickle's protocol warning: the error says it all
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a truncated, empty or foreign file
        raise UnreadableFile(f"{str(path)!r} {why_unreadable(error)}") from error


def why_unreadable(error: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused a file."""
    if isinstance(error, FileNotFoundError):
        return "does not exist"
    if isinstance(error, IsADirectoryError):
        return "is a folder, not a file"
    text = " ".join(str(error).split())
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"holds a pickled Python object ({found.group(1)}), which could run code when loaded: "
            "refused (only tensors and plain values are read)"
        )
    detail = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    reason = detail.group(1).strip() if detail else text
    return (
        "is not a PyTorch checkpoint of tensors and plain values (torch.save) "
        f"({type(error).__name__}: {reason[:160] or 'empty message'})"
    )


def cpu_copy(obj: Any) -> Any:
    """Deep copy with every tensor cloned to the CPU (a saved state must not alias live tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)
