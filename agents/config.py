"""``RunConfig``: everything that defines a training run, checked before anything is built.

Saved as ``config.json`` in the run directory and reused by ``--resume``; ``train.py``
takes its defaults from here and the environment's from :mod:`finetune_gym`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from finetune_gym import FineTuneEnv
from finetune_gym.arguments import check_choice
from finetune_gym.registration import check_env_id, default_config
from finetune_gym.wrappers import DEFAULT_EMA, check_ema

from .registry import baseline_env_overrides, canonical_name

WANDB_MODES = ("disabled", "offline", "online")
RUN_OWNED = {"seed", "epochs_per_episode", "ema"}  # environment arguments the run sets itself
# Environment arguments a run's folder name and table key carry already, or that say only where
# the data lies: never part of what tells two settings apart.
KEYED_ENV = ("dataset", "sampling_rate", "data_root")


def leaves_result_alone(field: str) -> bool:
    """Whether a configuration field only says where the run logs or how many threads it uses."""
    return field in ("tensorboard_dir", "threads") or field.startswith("wandb_")


# What every config.json has held since the first release (later fields may be absent: defaults).
ESSENTIAL = ("env_id", "algo", "seed", "episodes", "epochs_per_episode", "ema", "env_kwargs", "agent_kwargs")


def method_name(algo: str, label: str | None, agent_kwargs: dict[str, Any]) -> str:
    """A run's method in tables, W&B groups and default folders: ``label``, else the algorithm with
    its hyperparameter overrides (``uniform[lr=0.001]``), so that settings never merge."""
    if label:
        return label
    overrides = ",".join(f"{k}={v}" for k, v in sorted(agent_kwargs.items()))
    return f"{algo}[{overrides}]" if overrides else algo


def _plain(value: Any) -> Any:
    """JSON for what is not: a module passed as the model is recorded by class and size (a run
    folder cannot rebuild it, and says so on --resume), anything else as its text."""
    from torch import nn

    from finetune_gym.models.custom import describe_module

    return describe_module(value) if isinstance(value, nn.Module) else str(value)


@dataclass
class RunConfig:
    """A run: which environment and agent, how long, and where it is logged."""

    env_id: str = "FineTune-Digits-v0"
    algo: str = "rl_tune"
    seed: int = 0
    episodes: int = 5
    epochs_per_episode: int = FineTuneEnv.default_config()["epochs_per_episode"]
    ema: float | None = DEFAULT_EMA
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # the method's name in tables (default: algo)
    replay_agent: str | None = None  # a saved agent directory: act with it, frozen, instead of training one
    wandb_mode: str = "disabled"
    wandb_project: str = "finetune-gym"
    wandb_entity: str | None = None
    wandb_group: str | None = None
    wandb_tags: list[str] = field(default_factory=list)
    tensorboard_dir: str | None = None  # TensorBoard event files go here (with or without W&B)
    threads: int | None = None  # the environment's CPU threads (None: PyTorch's default, one per core)
    # A run stops with an error after this many consecutive updates skipped for a non-finite loss.
    max_skipped_in_a_row: int = 10

    def __post_init__(self) -> None:
        self.algo = canonical_name(self.algo)
        check_env_id(self.env_id)
        if self.episodes < 1 or self.epochs_per_episode < 1:
            raise ValueError("episodes and epochs_per_episode must be at least 1")
        self.ema = check_ema(self.ema)
        owned = sorted(set(self.env_kwargs) & RUN_OWNED)
        if owned:
            raise ValueError(
                f"set {', '.join(owned)} as the run's own setting (--{owned[0].replace('_', '-')}), not in "
                "env_kwargs: the run applies it to every episode and records it"
            )
        if int(self.max_skipped_in_a_row) != self.max_skipped_in_a_row or self.max_skipped_in_a_row < 1:
            raise ValueError(
                f"max_skipped_in_a_row must be a positive integer, got {self.max_skipped_in_a_row!r}"
            )
        check_choice("W&B mode", self.wandb_mode, WANDB_MODES)
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")

    @property
    def method(self) -> str:
        return method_name(self.algo, self.label, self.agent_kwargs)

    def setting_digest(self) -> str:
        """A short hash of what the folder name and the method leave out (episodes, EMA, other
        environment arguments), or "" where all of it is the default: two settings of a sweep
        get their own folder and their own W&B group."""
        named = ("env_id", "algo", "seed", "label", "agent_kwargs")  # in the name already
        mine, default = self.to_json(), RunConfig(env_id=self.env_id).to_json()
        for config in (mine, default):
            config["env_kwargs"] = {k: v for k, v in config["env_kwargs"].items() if k not in KEYED_ENV}
        rest = {k: v for k, v in mine.items() if k not in named and not leaves_result_alone(k)}
        if all(rest[k] == default[k] for k in rest):
            return ""
        return hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]

    def default_run_dir(self) -> str:
        """``runs/<env>-<dataset>-r<rate>-<method>-s<seed>``, plus :meth:`setting_digest` when the
        rest of the configuration is not the default, so that two settings never share a folder."""
        env = {**default_config(self.env_id), **self.env_kwargs}
        digest = self.setting_digest()
        method = re.sub(r"[^\w.=-]+", "_", self.method).strip("_")  # no shell glob characters
        return f"runs/{self.env_id}-{env['dataset']}-r{env['sampling_rate']:g}-{method}-s{self.seed}" + (
            f"-{digest}" if digest else ""
        )

    def differences(self, other: RunConfig) -> list[str]:
        """What ``other`` changes of this configuration, one ``field: this -> other`` each, besides
        where it logs (W&B, TensorBoard): a resumed run may log elsewhere without changing what it
        computes."""
        mine, theirs = self.to_json(), other.to_json()
        out = []
        for key in mine:
            if key.startswith("wandb_") or key == "tensorboard_dir":
                continue
            if isinstance(mine[key], dict) and isinstance(theirs[key], dict):
                out += [
                    f"{key}.{k}: {mine[key].get(k, '(unset)')!r} -> {theirs[key].get(k, '(unset)')!r}"
                    for k in sorted(set(mine[key]) | set(theirs[key]))
                    if mine[key].get(k, "(unset)") != theirs[key].get(k, "(unset)")
                ]
            elif mine[key] != theirs[key]:
                out.append(f"{key}: {mine[key]!r} -> {theirs[key]!r}")
        return out

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=_plain))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        """A configuration as :meth:`to_json` wrote it. The fields every version wrote must be
        there: one missing would silently become its default (another dataset, another length)."""
        if not isinstance(data, dict):
            raise ValueError(f"a run configuration is a JSON object, not {type(data).__name__}")
        missing = [k for k in ESSENTIAL if k not in data]
        if missing:
            raise ValueError(f"the run configuration lacks {', '.join(missing)}")
        return cls(**data)

    def full_env_kwargs(self) -> dict[str, Any]:
        """What the environment is built with: user arguments, the run's seed and epochs, and
        what a baseline needs (its exact learning-rate grid)."""
        kwargs = {**self.env_kwargs, "seed": self.seed, "epochs_per_episode": self.epochs_per_episode}
        kwargs.update(baseline_env_overrides(self.algo, **self.agent_kwargs))
        return kwargs
