"""The registered environment ids, their default configurations, and the factory behind them."""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym

from . import presets
from .arguments import check_choice
from .env import FineTuneEnv
from .wrappers import DEFAULT_EMA, EMAEpisodeWrapper, check_ema


class DatasetDefaults(dict):
    """An id's default ``dataset_kwargs``, which belong to its default dataset: with another
    ``dataset`` they are dropped (a plain dict, given by the user, is always kept)."""

    def __init__(self, dataset: str, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.dataset = dataset

    def __deepcopy__(self, memo: dict[int, Any]) -> DatasetDefaults:
        return DatasetDefaults(self.dataset, copy.deepcopy(dict(self), memo))

    def __reduce__(self):
        return DatasetDefaults, (self.dataset, dict(self))


def dataset_options(dataset: str | None, options: dict[str, Any] | None) -> dict[str, Any] | None:
    """The options to load ``dataset`` with: an id's defaults only for the dataset they belong to."""
    if isinstance(options, DatasetDefaults):
        return dict(options) if options.dataset == dataset else None
    return options


_OVERRIDES: dict[str, dict[str, Any]] = {
    # The paper: ImageNet ResNet-50 fine-tuned on FGVC Aircraft (or CUB, Cars) at 224 px.
    "FineTune-ResNet50-v0": {},
    # CIFAR-10 ResNets on GTSRB at 32 px; pass weights="cifar10" (downloads) or a checkpoint path.
    # The id's GTSRB options are dropped when another dataset is given (DatasetDefaults).
    "FineTune-CIFARResNet-v0": {
        **presets.cifar_source("cifar10"),
        "dataset": "gtsrb",
        "dataset_kwargs": DatasetDefaults("gtsrb", presets.gtsrb()["dataset_kwargs"]),
    },
    # Offline built-in default: digits 0-4 pretrained source, fine-tuned on digits 5-9.
    "FineTune-Digits-v0": {**presets.digits(), "obs_features": 4},
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
    if "dataset_kwargs" in kwargs:
        kwargs["dataset_kwargs"] = dataset_options(kwargs.get("dataset"), kwargs["dataset_kwargs"])
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
