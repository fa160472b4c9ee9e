"""Reading source weights: checkpoint files, downloads, and the key check before loading.

The check exists because ``load_state_dict(strict=False)`` would silently leave a
mis-named checkpoint unused and fine-tune a random network instead; a user must
hear which keys do not fit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..storage import UnreadableFile, load_tensors

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
IGNORED_SUFFIXES = ("num_batches_tracked",)


class WeightsError(ValueError):
    """A weights file or name that cannot be used for the chosen model."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint file into a flat ``name -> tensor`` dict on the CPU.

    Accepts a bare state dict or one wrapped under ``state_dict``/``model`` (as the
    CIFAR ResNet and many training scripts save them) and strips the ``module.``
    prefix that ``DataParallel`` adds.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {str(path)!r} does not exist: pass an existing checkpoint path, "
            "a pretrained-weights name of the model, or weights=None for random initialisation"
        )
    try:
        obj = load_tensors(path)
    except UnreadableFile as error:
        raise WeightsError(f"weights file {error}") from error
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{source} does not hold a state dict (a mapping of parameter names to tensors); "
            f"found {type(obj).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_source_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, head: str | None, source: str
) -> None:
    """Copy ``state`` into ``model`` after checking that every key and shape fits.

    The source head (``head.*``) is skipped on both sides: it is replaced by a new
    head sized to the target classes. ``num_batches_tracked`` buffers may be absent
    (older checkpoints); every other mismatch raises :class:`WeightsError`.
    """
    prefix = f"{head}." if head else None

    def keep(key: str) -> bool:
        return not (prefix and key.startswith(prefix))

    expected = {k: v for k, v in model.state_dict().items() if keep(k)}
    given = {k: v for k, v in state.items() if keep(k)}
    missing = sorted(k for k in expected if k not in given and not k.endswith(IGNORED_SUFFIXES))
    unexpected = sorted(k for k in given if k not in expected)
    wrong_shape = sorted(
        f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in given.keys() & expected.keys()
        if given[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label} keys: {shown}")
        raise WeightsError(
            f"weights from {source} do not fit {type(model).__name__}: "
            + "; ".join(parts)
            + ". Check that the file was saved from the same architecture and depth."
        )
    with torch.no_grad():
        for key, tensor in expected.items():
            if key in given:
                tensor.copy_(given[key])


def download_state_dict(url: str, *, what: str) -> dict[str, torch.Tensor]:
    """Fetch (or reuse from the torch hub cache) a checkpoint, with a usable error offline."""
    file_name = url.rsplit("/", 1)[-1]
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        obj = torch.hub.load_state_dict_from_url(
            url,
            model_dir=str(cache_dir),
            map_location="cpu",
            progress=False,
            check_hash=True,
            weights_only=True,
        )
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad hash a RuntimeError
        raise pretrained_unavailable(what, url, cache_dir / file_name, error) from error
    return unwrap_state_dict(obj, source=url)


class WeightsUnavailable(WeightsError):
    """Named pretrained weights that could not be fetched (no network) and are not cached."""


def pretrained_unavailable(what: str, url: str, cache_file: Path, error: Exception) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"could not get the {what} weights ({type(error).__name__}: {error}). Without internet, "
        f"pre-download {url} to {cache_file} (the torch hub cache; set TORCH_HOME to move it), "
        "pass weights=<path to a local checkpoint>, or use weights=None for random initialisation."
    )
