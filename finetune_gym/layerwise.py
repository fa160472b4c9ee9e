"""One observation and action layout for every network: a token per layer, padded to a maximum.

A policy that learns across fine-tuning runs must act on networks of different depths (the
built-in digits' ResNet-8, the CIFAR ResNet-20, ResNet-50). :class:`LayerwiseView` rewrites a
:class:`~finetune_gym.env.FineTuneEnv`'s observation as ``max_layers`` tokens of
:data:`TOKEN_SIZE` features, one per layer, the rows past the network's depth zero with a mask of 0,
and takes ``max_layers`` actions of which it passes the first ``n_layers`` on. A policy shared
across layers (the same weights read each token) then serves any depth; that is why this layout and
not a fixed source architecture: the tasks it learns from need not share one.

Each layer's token (why each feature: it must mean the same on every network and dataset):

- ``obs_features`` pooled activation bins as ``sign(x) * log1p(|x|)`` (raw magnitudes differ by
  orders between networks; the log keeps them within a few units);
- the same, minus its value at the episode's first step (how far the layer has moved);
- the layer's relative depth in [0, 1] (0 the stem, 1 the head);
- the layer's last action as a position on the relative grid in [-1, 1] (0: the base rate, ±1:
  8x / 1/8x), 0 before the first step;
- the episode's progress, the batch loss, its running mean and their difference (the environment's
  ``progress`` and ``loss`` extras), the same in every token;
- 1 (the mask: a real layer).

The environment must use ``lr_scale="relative"`` (so that an action means "this multiple of the
base rate" on every task) and the ``progress`` and ``loss`` extras.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .env import FineTuneEnv
from .observation import OBS_LIMIT, extras_layout

DEFAULT_MAX_LAYERS = 64
GLOBAL_FEATURES = 4  # progress, loss, its running mean, their difference
PER_LAYER_FEATURES = 3  # relative depth, last action, mask


def token_size(obs_features: int) -> int:
    return 2 * obs_features + PER_LAYER_FEATURES + GLOBAL_FEATURES


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


class LayerwiseView(gym.Wrapper):
    """A FineTuneEnv seen as ``max_layers`` per-layer tokens (see the module's docstring)."""

    def __init__(self, env: gym.Env, max_layers: int = DEFAULT_MAX_LAYERS) -> None:
        super().__init__(env)
        base = env.unwrapped
        if not isinstance(base, FineTuneEnv):
            raise TypeError("LayerwiseView needs a FineTuneEnv (or a wrapper of one)")
        if base.config["lr_scale"] != "relative":
            raise ValueError(
                f"LayerwiseView needs lr_scale='relative' (an action must mean the same multiple of the base "
                f"rate on every network); this environment has lr_scale={base.config['lr_scale']!r}"
            )
        missing = {"progress", "loss"} - set(base.obs_extras)
        if missing:
            raise ValueError(
                f"LayerwiseView reads the observation extras 'progress' and 'loss'; add {sorted(missing)} "
                f"to obs_extras (this environment has {list(base.obs_extras)})"
            )
        if not isinstance(max_layers, int) or max_layers < 1:
            raise ValueError(f"max_layers must be a positive integer, got {max_layers!r}")
        if base.n_layers > max_layers:
            raise ValueError(
                f"the network has {base.n_layers} layers, more than max_layers={max_layers}: raise max_layers "
                "(a policy trained with fewer cannot act on it) or use a coarser granularity"
            )
        self.max_layers, self.n_layers, self.features = max_layers, base.n_layers, base.pooler.features
        self.n_actions = len(base.lr_map.rates)
        self.token_size = token_size(self.features)
        self.observation_space = spaces.Box(-OBS_LIMIT, OBS_LIMIT, (max_layers, self.token_size), np.float32)
        self.action_space = spaces.MultiDiscrete([self.n_actions] * max_layers)
        depth = np.arange(self.n_layers) / max(self.n_layers - 1, 1)
        self._depth = depth.astype(np.float32)
        self._start: np.ndarray | None = None
        self._last_action = np.zeros(self.n_layers, dtype=np.float32)

    def _split(self, observation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The flat observation's per-layer bins (n_layers, features) and the 4 global values."""
        base = self.env.unwrapped
        n, f = self.n_layers, self.features
        bins = observation[: n * f].reshape(n, f)
        layout = extras_layout(base.obs_extras, n, f)
        progress = float(observation[layout["progress"]][0]) if "progress" in layout else 0.0
        loss = observation[layout["loss"]]
        return bins, np.array([progress, *loss], dtype=np.float32)

    def _tokens(self, observation: np.ndarray) -> np.ndarray:
        bins, global_features = self._split(np.asarray(observation, dtype=np.float32))
        activations = _signed_log(bins)
        if self._start is None:
            self._start = activations.copy()
        tokens = np.zeros((self.max_layers, self.token_size), dtype=np.float32)
        f = self.features
        tokens[: self.n_layers, :f] = activations
        tokens[: self.n_layers, f : 2 * f] = activations - self._start
        tokens[: self.n_layers, 2 * f] = self._depth
        tokens[: self.n_layers, 2 * f + 1] = self._last_action
        tokens[: self.n_layers, 2 * f + 2 : 2 * f + 2 + GLOBAL_FEATURES] = global_features
        tokens[: self.n_layers, -1] = 1.0
        return np.clip(np.nan_to_num(tokens), -OBS_LIMIT, OBS_LIMIT)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        observation, info = self.env.reset(seed=seed, options=options)
        self._start = None
        self._last_action[:] = 0.0
        return self._tokens(observation), info

    def layer_action(self, action: object) -> np.ndarray:
        """The wrapped environment's action: the first ``n_layers`` entries (checked whole)."""
        action = np.asarray(action)
        if action.shape != (self.max_layers,):
            raise ValueError(f"action must have shape ({self.max_layers},), got {action.shape}")
        if not self.action_space.contains(action.astype(np.int64)):
            raise ValueError(f"action entries must be integers in [0, {self.n_actions - 1}], got {action}")
        return action[: self.n_layers].astype(np.int64)

    def get_state(self) -> dict[str, Any]:
        """What the tokens depend on besides the environment (for exact resume)."""
        return {
            "start": None if self._start is None else self._start.copy(),
            "last_action": self._last_action.copy(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._start = None if state["start"] is None else np.asarray(state["start"], dtype=np.float32)
        self._last_action = np.asarray(state["last_action"], dtype=np.float32)

    def step(self, action: object):
        layer_action = self.layer_action(action)
        observation, reward, terminated, truncated, info = self.env.step(layer_action)
        middle = (self.n_actions - 1) / 2
        self._last_action = ((layer_action - middle) / middle).astype(np.float32)
        return self._tokens(observation), reward, terminated, truncated, info
