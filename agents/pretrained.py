"""A pretrained learning-rate policy as one file: the weights of a :class:`LayerwisePolicy` and
its card (what it was trained on, how long, by which commit and command, and the environment
options its actions and observations assume).

The file loads with ``torch.load(..., weights_only=True)``: tensors and plain values only, so a
policy downloaded from anyone cannot run code when loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from finetune_gym.layerwise import token_size
from finetune_gym.storage import UnreadableFile, atomic_torch_save, load_tensors

from .baselines import Baseline
from .layerwise_policy import LayerwisePolicy

FORMAT = "finetune-gym-policy-1"
# The policy shipped inside the package, the default of ``rl_tune_pretrained`` (``policy="default"``
# or no policy given): pretrained by ``benchmarks/transfer.py`` without GTSRB, the one whose transfer
# to an unseen dataset is measured (benchmarks/results/transfer.md); its card is the file beside it.
DEFAULT_POLICY = "default"
SHIPPED_POLICY = Path(__file__).resolve().parent / "pretrained_policies" / "sf_rel_no_gtsrb.pt"


def resolve_policy(policy: str | None) -> tuple[str, Path]:
    """What to record for ``policy`` (``"default"`` for the shipped one, so the record is the same on
    every machine) and the file to read."""
    if policy is None or policy == DEFAULT_POLICY:
        return DEFAULT_POLICY, SHIPPED_POLICY
    path = Path(policy).expanduser().resolve()
    return str(path), path


# What the policy's architecture is rebuilt from (the rest of the card is for people).
ARCHITECTURE_KEYS = ("max_layers", "obs_features", "n_actions", "hidden")
# The card's environment options that a deployment takes over: what the policy's actions mean (the
# rate grid around which base), what its observations hold and what it was rewarded for. The
# others (the source network, data, device, batch size) describe the pretraining and are not
# applied: the deployment's own are. So a card never names a model, and cannot make a run import
# code (a file is anyone's; :mod:`.trust`).
CARD_OPTIONS = (
    "optimizer",
    "optimizer_kwargs",
    "base_lr",
    "lr_scale",
    "n_lr_steps",
    "lr_max",
    "lr_min",
    "lr_steps",
    "schedule",
    "warmup",
    "cooldown",
    "obs_extras",
    "obs_features",
    "reward",
)


class PolicyFileError(ValueError):
    """A file that is not a pretrained policy, or one that cannot serve this environment."""


def policy_spaces(card: dict[str, Any]) -> tuple[gym.spaces.Box, gym.spaces.MultiDiscrete]:
    """The observation and action spaces the policy in ``card`` was built for."""
    max_layers, features, n_actions = (int(card[k]) for k in ("max_layers", "obs_features", "n_actions"))
    observation = gym.spaces.Box(-np.inf, np.inf, (max_layers, token_size(features)), np.float32)
    return observation, gym.spaces.MultiDiscrete([n_actions] * max_layers)


def save_policy(policy: LayerwisePolicy, card: dict[str, Any], path: str | Path) -> Path:
    """Write the policy's weights and ``card`` to ``path`` (atomically) and the card beside it as
    ``<path>.json`` for people."""
    missing = [k for k in ARCHITECTURE_KEYS if k not in card]
    if missing:
        raise ValueError(f"the card misses {missing}, which rebuild the policy")
    json.dumps(card)  # plain values only: the file must load with weights_only=True
    path = Path(path)
    payload = {
        "format": FORMAT,
        "card": card,
        "state_dict": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, path)
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def load_policy(path: str | Path) -> tuple[LayerwisePolicy, dict[str, Any]]:
    """The policy in ``path`` (on the CPU, in eval mode) and its card; no file is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise PolicyFileError(
            f"no pretrained policy at {str(path)!r}: give the file written by train.py pretrain"
        )
    try:
        payload = load_tensors(path)
    except UnreadableFile as error:
        raise PolicyFileError(f"pretrained policy file {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PolicyFileError(f"{str(path)!r} is not a {FORMAT} file")
    card = payload["card"]
    observation_space, action_space = policy_spaces(card)
    policy = LayerwisePolicy(observation_space, action_space, lambda _: 0.0, hidden=int(card["hidden"]))
    try:
        policy.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise PolicyFileError(f"{str(path)!r}: its weights do not fit its card ({error})") from error
    policy.set_training_mode(False)
    return policy, card


class PretrainedPolicyAgent(Baseline):
    """``rl_tune_pretrained``: a pretrained policy acting in a new fine-tuning run.

    Frozen (``learn=False``) it is a fixed policy like the baselines; with ``learn=True`` the
    registry turns it into PPO starting from these weights (:meth:`learner`). Either way the
    environment is built with the options the policy was trained with (:meth:`env_overrides`)
    and seen through :class:`~finetune_gym.layerwise.LayerwiseView` (:attr:`max_layers`).
    """

    name = "rl_tune_pretrained"

    def __init__(
        self, seed: int = 0, policy: str | None = DEFAULT_POLICY, learn: bool = False, **ppo: Any
    ) -> None:
        if not isinstance(learn, bool):
            raise ValueError(f"rl_tune_pretrained: learn must be True or False, got {learn!r}")
        recorded, path = resolve_policy(policy)
        self.policy, self.card = load_policy(path)
        super().__init__(seed, policy=recorded, learn=learn, **ppo)
        self.max_layers = int(self.card["max_layers"])

    def env_overrides(self) -> dict[str, Any]:
        """The card's :data:`CARD_OPTIONS`: the rest of its settings are the pretraining's."""
        settings = self.card.get("env_kwargs")
        if not isinstance(settings, dict):
            raise PolicyFileError(f"the policy card's env_kwargs must be a dict, got {settings!r}")
        taken = {k: v for k, v in settings.items() if k in CARD_OPTIONS}
        return {**taken, "obs_features": int(self.card["obs_features"])}

    def bind(
        self, n_layers: int, rates: np.ndarray, layer_names: Sequence[str] | None = None
    ) -> PretrainedPolicyAgent:
        if len(rates) != int(self.card["n_actions"]):
            raise ValueError(
                f"the policy chooses among {self.card['n_actions']} steps, this environment has {len(rates)}: "
                "do not override n_lr_steps for rl_tune_pretrained"
            )
        self.n_layers, self.rates, self.layer_names = int(n_layers), np.asarray(rates), layer_names
        return self

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        actions, _ = self.policy.predict(np.asarray(observation), deterministic=deterministic)
        return actions, state
