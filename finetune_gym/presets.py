"""Named environment presets: every default a task, an id or a benchmark shares, in one place.

A preset is a small function returning ``FineTuneEnv`` arguments; presets compose with ``|``
(``cifar_source(weights) | gtsrb(root) | relative("prodigy")``), so registration, the task
distribution, pretraining and the benchmarks are declarations over the same values instead of
copies of them (the digits task, the CIFAR/GTSRB protocol, the source checkpoint's file name, the
base rates and the data folder each live here once).

Presets return fresh plain dicts: the caller may change what it got without changing a preset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .models.resnets import CIFAR_FILES
from .optimizers import DEFAULT_LR

DATA_ENV_VAR = "FINETUNE_GYM_SHARED_DATA"
CIFAR_SOURCE_DIR = "resnet_cifar10"  # the CIFAR-10 ResNet checkpoints' folder under the data root
# The step grid of relative and residual rates: multiples 1/8..8 of the base's own rate, 1 in the
# middle (a policy that knows nothing reproduces the base).
RELATIVE_STEPS = 7


def published_rate(optimizer: str) -> float:
    """``optimizer``'s published rate (a multiplier for the parameter-free ones); a clear error for
    an optimizer that has none (Adam, SGD: their rate must be given)."""
    if optimizer not in DEFAULT_LR:
        raise ValueError(
            f"optimizer {optimizer!r} has no published default rate: give the rate (base_lr=... / lr=...), "
            f"or choose one of {sorted(DEFAULT_LR)}"
        )
    return DEFAULT_LR[optimizer]


def data_root() -> Path:
    """Where the real datasets and source checkpoints lie: ``$FINETUNE_GYM_SHARED_DATA``, else
    ``../shared/data`` beside the repository (this workplace's layout; see its README).

    The one place that knows it: the tests, the pretraining task sets and every benchmark read it
    here, so pointing the variable elsewhere moves all of them together."""
    if DATA_ENV_VAR in os.environ:
        return Path(os.environ[DATA_ENV_VAR]).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cifar_checkpoint(root: str | Path | None = None, depth: int = 20) -> Path:
    """The CIFAR-10 ResNet-``depth`` checkpoint under ``root`` (default :func:`data_root`), by the
    published file name (:data:`~finetune_gym.models.resnets.CIFAR_FILES`)."""
    if depth not in CIFAR_FILES:
        raise ValueError(f"no CIFAR-10 ResNet of depth {depth!r}: choose one of {sorted(CIFAR_FILES)}")
    return Path(data_root() if root is None else root) / CIFAR_SOURCE_DIR / CIFAR_FILES[depth]


def digits() -> dict[str, Any]:
    """The offline default: the built-in digits 5-9, fine-tuned from a ResNet-8 pretrained on
    digits 0-4 (trained on first use, then cached), on the CPU."""
    return {
        "model": "digits_resnet8",
        "weights": "digits",
        "dataset": "digits",
        "data_root": None,
        "image_size": 8,
        "val_fraction": 0.2,
        "device": "cpu",
    }


def cifar_source(weights: str | Path = "cifar10", depth: int = 20) -> dict[str, Any]:
    """A CIFAR-10 ResNet source read at its own 32 px: ``weights="cifar10"`` downloads the published
    checkpoint, a path loads one (:func:`cifar_checkpoint`)."""
    return {
        "model": f"cifar_resnet{depth}",
        "weights": str(weights),
        "image_size": 32,
        "val_fraction": 0.2,
    }


def gtsrb(root: str | Path | None = None) -> dict[str, Any]:
    """GTSRB with one frame per physical sign (the middle one of each track), so that no sign sits
    in both the training and the validation subset; ``root`` holds ``gtsrb/``."""
    preset: dict[str, Any] = {"dataset": "gtsrb", "dataset_kwargs": {"one_frame_per_track": True}}
    if root is not None:
        preset["data_root"] = str(root)
    return preset


def imagefolder(root: str | Path) -> dict[str, Any]:
    """A target dataset in torchvision's ImageFolder layout (``root/train``, ``root/test``)."""
    return {"dataset": "imagefolder", "data_root": str(root), "dataset_kwargs": {}}


def relative(optimizer: str = "schedulefree_adamw", base_lr: float | None = None) -> dict[str, Any]:
    """Actions as multiples 1/8..8 of ``optimizer``'s own rate (default: its published one,
    :data:`~finetune_gym.optimizers.DEFAULT_LR`): the action in the middle is the base itself."""
    return {
        "optimizer": optimizer,
        "lr_scale": "relative",
        "base_lr": published_rate(optimizer) if base_lr is None else base_lr,
        "n_lr_steps": RELATIVE_STEPS,
    }


def residual(
    optimizer: str = "prodigy_layerwise", n_lr_steps: int = 6, base_lr: float | None = None
) -> dict[str, Any]:
    """Actions as per-layer multipliers of a parameter-free base's own per-layer step: 0 (freeze)
    or a power of two around 1 (``n_lr_steps`` 6: 0, 1/4, 1/2, 1, 2, 4); all 1 is the base run."""
    return {
        "optimizer": optimizer,
        "lr_scale": "residual",
        "base_lr": published_rate(optimizer) if base_lr is None else base_lr,
        "n_lr_steps": n_lr_steps,
    }


def uniform(lr: float) -> dict[str, Any]:
    """Plain fine-tuning's grid: 0 and ``lr`` (exactly; a grid of 20 would round it)."""
    return {"lr_steps": [0.0, float(lr)]}


def cosine(lr: float, warmup: float = 0.0) -> dict[str, Any]:
    """One rate ``lr`` decayed to 0 by a cosine over the episode, after a linear warm-up over the
    fraction ``warmup`` of it: the tuned schedule practitioners use."""
    return {**uniform(lr), "schedule": "cosine", "warmup": float(warmup)}


def published(optimizer: str, lr: float | None = None) -> dict[str, Any]:
    """An optimizer that avoids a learning-rate search as its authors ship it: its published rate
    (or multiplier) ``lr`` by default, no schedule."""
    return {**uniform(published_rate(optimizer) if lr is None else lr), "optimizer": optimizer}
