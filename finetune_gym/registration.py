"""The registered environment ids, their default configurations, and the factory behind them."""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym

from .arguments import check_choice
from .env import FineTuneEnv
from .wrappers import DEFAULT_EMA, EMAEpisodeWrapper, check_ema

_OVERRIDES: dict[str, dict[str, Any]] = {
    # The paper: ImageNet ResNet-50 fine-tuned on FGVC Aircraft (or CUB, Cars) at 224 px.
    "FineTune-ResNet50-v0": {},
    # CIFAR-10 ResNets on GTSRB at 32 px; pass weights="cifar10" (downloads) or a checkpoint path.
    "FineTune-CIFARResNet-v0": {
        "model": "cifar_resnet20",
        "weights": "cifar10",
        "dataset": "gtsrb",
        "dataset_kwargs": {"one_frame_per_track": True},
        "image_size": 32,
        "val_fraction": 0.2,
    },
    # Offline built-in default: digits 0-4 pretrained source, fine-tuned on digits 5-9.
    "FineTune-Digits-v0": {
        "model": "digits_resnet8",
        "weights": "digits",
        "dataset": "digits",
        "data_root": None,
        "image_size": 8,
        "val_fraction": 0.2,
        "obs_features": 4,
        "device": "cpu",
    },
}
ENV_IDS: list[str] = list(_OVERRIDES)
# Environments over many fine-tuning runs (a new task at every reset): not a single run's
# configuration, so train.py's single-run ids (ENV_IDS) do not include them.
TASK_ENV_IDS: list[str] = ["FineTune-Tasks-v0"]


def check_env_id(env_id: str) -> str:
    """``env_id`` if this package registers it; a clear error naming the ids otherwise."""
    return check_choice("env id", env_id, ENV_IDS)


def default_config(env_id: str) -> dict[str, Any]:
    """Every constructor argument of ``env_id`` with its default, ``ema`` included."""
    check_env_id(env_id)
    return {**FineTuneEnv.default_config(), **copy.deepcopy(_OVERRIDES[env_id]), "ema": DEFAULT_EMA}


def make_env(ema: float | None = DEFAULT_EMA, **kwargs: Any) -> gym.Env:
    """A :class:`FineTuneEnv`, wrapped in :class:`EMAEpisodeWrapper` unless ``ema`` is None."""
    ema = check_ema(ema)  # before the environment decodes its data
    env = FineTuneEnv(**kwargs)
    return env if ema is None else EMAEpisodeWrapper(env, ema=ema)


# Gymnasium reads the entry point's metadata (render modes) before it calls it.
make_env.metadata = FineTuneEnv.metadata  # type: ignore[attr-defined]


def register_envs() -> None:
    for env_id in ENV_IDS:
        if env_id in gym.registry:
            continue
        kwargs = default_config(env_id)
        gym.register(
            id=env_id, entry_point="finetune_gym.registration:make_env", kwargs=kwargs, nondeterministic=True
        )
    for env_id in TASK_ENV_IDS:
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="finetune_gym.tasks:FineTuneTasksEnv", nondeterministic=True)
