"""The paper's agent network, as Stable-Baselines3 policy parts."""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


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
