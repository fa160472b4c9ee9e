"""The paper's episodic moving-average control, as a gymnasium wrapper."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .env import FineTuneEnv

DEFAULT_EMA = 0.2  # the paper's weight of the fine-tuned target


def check_ema(ema: float | None) -> float | None:
    """``ema`` as a float in (0, 1], or None (no EMA scheme); a clear error otherwise."""
    if ema is None:
        return None
    if not (0.0 < float(ema) <= 1.0):
        raise ValueError(f"ema must be in (0, 1], the weight of the fine-tuned target, or None; got {ema}")
    return float(ema)


class EMAEpisodeWrapper(gym.Wrapper):
    """Between episodes, move the source weights towards the fine-tuned target.

    On the first ``reset`` after an episode has terminated, every parameter and
    BatchNorm buffer of the source is updated as::

        source <- (1 - ema) * source + ema * target

    and the target then restarts from the new source. ``ema`` (0.2 in the paper)
    is the weight of the newly fine-tuned target, the smoothing factor of the
    usual EMA ``S_t = a * x_t + (1 - a) * S_{t-1}``: with 0.2, each episode moves
    the starting point a fifth of the way to where fine-tuning went, so the
    source accumulates what several episodes agree on while staying close to the
    pretrained weights (after 5 episodes the first source still weighs
    0.8**5 = 33%). Integer buffers (``num_batches_tracked``) are averaged too and
    truncated. A reset during an unfinished episode does not average.

    The average is computed by ``torch.optim.swa_utils.AveragedModel`` with
    ``get_ema_multi_avg_fn(decay=1 - ema)``; the environment's source network
    stays the one source of truth, so a source loaded from a checkpoint is used.
    """

    def __init__(self, env: gym.Env, ema: float = DEFAULT_EMA) -> None:
        super().__init__(env)
        if not isinstance(env.unwrapped, FineTuneEnv):
            raise TypeError("EMAEpisodeWrapper needs a FineTuneEnv (or a wrapper of one)")
        if ema is None:
            raise ValueError("EMAEpisodeWrapper needs an ema in (0, 1]; without the scheme, do not wrap")
        self.ema = check_ema(ema)
        self._average: AveragedModel | None = None  # built at the first update
        self._episode_finished = False
        self.ema_updates = 0

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        if terminated:
            self._episode_finished = True
        return observation, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if self._episode_finished:
            self.update_source()
        return self.env.reset(seed=seed, options=options)

    def __getstate__(self) -> dict[str, Any]:
        # torch's EMA function is a closure, which pickle cannot save: the average is rebuilt.
        return {**self.__dict__, "_average": None}

    def get_state(self) -> dict[str, Any]:
        """Wrapper and environment state, for checkpoints."""
        return {
            "episode_finished": self._episode_finished,
            "ema_updates": self.ema_updates,
            "env": self.env.unwrapped.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._episode_finished, self.ema_updates = state["episode_finished"], state["ema_updates"]
        self.env.unwrapped.set_state(state["env"])

    @torch.no_grad()
    def update_source(self) -> None:
        """Apply the EMA now: source <- (1 - ema) * source + ema * fine-tuned target."""
        base: FineTuneEnv = self.env.unwrapped
        if self._average is None:
            self._average = AveragedModel(
                base.source_model, multi_avg_fn=get_ema_multi_avg_fn(1.0 - self.ema), use_buffers=True
            )
        self._average.module.load_state_dict(base.source_model.state_dict())
        # n_averaged > 0 makes AveragedModel average rather than copy the target over the source.
        self._average.n_averaged.fill_(1)
        with base.evaluation_weights():  # the fine-tuned model as a run reports it
            self._average.update_parameters(base.model)
        base.load_source_state_dict(self._average.module.state_dict())
        self._episode_finished = False
        self.ema_updates += 1
