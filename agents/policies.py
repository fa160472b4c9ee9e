"""The paper's agent network, as Stable-Baselines3 policy parts."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from .distributions import use_grid_distribution


class LinearFeatures(BaseFeaturesExtractor):
    """One linear layer over the pooled activations: the first layer of RL-Tune's actor.

    RecurrentPPO feeds its output to the actor's LSTM and, with
    ``enable_critic_lstm=False``, to an MLP critic.
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 64) -> None:
        super().__init__(observation_space, features_dim)
        self.linear = nn.Linear(int(observation_space.shape[0]), features_dim)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(observations)


class LstmPolicy(RecurrentActorCriticPolicy):
    """sb3-contrib's ``MlpLstmPolicy`` with the batched per-layer action distribution."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        use_grid_distribution(self)


class MlpPolicy(ActorCriticPolicy):
    """SB3's ``MlpPolicy`` with the batched per-layer action distribution (PPO, A2C)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        use_grid_distribution(self)
