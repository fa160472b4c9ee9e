"""A policy shared across layers, for :class:`~finetune_gym.layerwise.LayerwiseView` observations.

The same small network reads every layer's token and gives that layer's action logits; a context
vector (the mean of the real layers' encodings) tells each layer what the others look like, and the
critic reads that context. Its size does not depend on the network's depth, so one policy trained
on many fine-tuning runs (``FineTune-Tasks-v0``) acts on a network it never saw. Padded rows (mask 0)
get fixed logits that choose the grid's middle step with probability ~1: they add nothing to
log-probabilities or entropy, and the view drops their actions anyway.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from .distributions import use_grid_distribution

PAD_LOGIT = 30.0  # a padded layer's middle step: probability 1 - ~1e-13 * (steps - 1)


class LayerwiseNetwork(nn.Module):
    """Tokens ``(batch, max_layers, token)`` -> flat action logits (actor) and a context (critic)."""

    def __init__(self, max_layers: int, token_size: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.max_layers, self.token_size, self.n_actions = max_layers, token_size, n_actions
        self.encoder = nn.Sequential(
            nn.Linear(token_size, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.actor = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_actions))
        self.critic = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
        self.latent_dim_pi, self.latent_dim_vf = max_layers * n_actions, hidden
        pad = torch.full((n_actions,), -PAD_LOGIT)
        pad[(n_actions - 1) // 2] = PAD_LOGIT
        self.register_buffer("pad_logits", pad, persistent=False)

    def _encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens = features.reshape(-1, self.max_layers, self.token_size)
        mask = tokens[..., -1:]
        encoded = self.encoder(tokens) * mask
        context = encoded.sum(1) / mask.sum(1).clamp(min=1.0)
        return encoded, context, mask

    def _logits(self, encoded: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        both = torch.cat([encoded, context.unsqueeze(1).expand_as(encoded)], dim=-1)
        logits = torch.where(mask > 0, self.actor(both), self.pad_logits)
        return logits.flatten(1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded, context, mask = self._encode(features)
        return self._logits(encoded, context, mask), self.critic(context)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return self._logits(*self._encode(features))

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.critic(self._encode(features)[1])


class LayerwisePolicy(ActorCriticPolicy):
    """SB3 actor-critic over :class:`LayerwiseNetwork` (PPO, A2C); observations flattened by SB3."""

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.MultiDiscrete,
        lr_schedule: Schedule,
        hidden: int = 64,
        **kwargs: Any,
    ) -> None:
        if len(observation_space.shape) != 2:
            raise ValueError(
                f"LayerwisePolicy reads (max_layers, token) observations (LayerwiseView, FineTune-Tasks-v0); "
                f"got shape {observation_space.shape}"
            )
        if action_space.shape[0] != observation_space.shape[0]:
            raise ValueError("LayerwisePolicy needs one action per token row")
        self.hidden = hidden
        kwargs["ortho_init"] = False  # initialised below: SB3's init would scale the shared actor head
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
        use_grid_distribution(self)

    def _build_mlp_extractor(self) -> None:
        max_layers, token_size = self.observation_space.shape
        self.mlp_extractor = LayerwiseNetwork(
            max_layers, token_size, int(self.action_space.nvec[0]), self.hidden
        )

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        # The network's actor already gives the logits, one row per layer, with the padding applied:
        # SB3's action layer (a dense map of all layers' latents) would undo the sharing.
        self.action_net = nn.Identity()
        last = self.mlp_extractor.actor[-1]
        nn.init.orthogonal_(last.weight, gain=0.01)  # near-uniform at first, as SB3 does for its action layer
        nn.init.zeros_(last.bias)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "hidden": self.hidden}
