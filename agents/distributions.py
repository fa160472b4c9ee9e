"""One categorical distribution over every layer's learning-rate step, instead of one per layer.

Stable-Baselines3's ``MultiCategoricalDistribution`` builds one
``torch.distributions.Categorical`` per action dimension (with argument
validation) and loops over them to sample, score and take the entropy. With
ResNet-50's 18 layers that loop is most of the agent's cost per step
(``benchmarks/step_overhead.py``, "agent alone"): 18 distribution objects,
18 ``multinomial`` calls and 18 ``log_prob`` calls for one action. Our action
spaces give every layer the same number of steps, so the logits reshape to
``(batch, n_layers, n_steps)`` and one batched ``Categorical`` does the same
mathematics in a few kernel calls. It subclasses SB3's class so that every
``isinstance`` check in SB3 and sb3-contrib still holds.
"""

from __future__ import annotations

import torch
from stable_baselines3.common.distributions import MultiCategoricalDistribution
from torch.distributions import Categorical


class GridMultiCategoricalDistribution(MultiCategoricalDistribution):
    """Independent categoricals of equal size, one per action dimension, batched as one.

    Same log-probabilities, entropies and modes as the parent class (tested);
    samples follow the same distribution but draw differently from the RNG.
    Not for TRPO: SB3's ``kl_divergence`` iterates over the parent's list of
    per-dimension distributions.
    """

    distribution: Categorical  # type: ignore[assignment]

    def __init__(self, action_dims: list[int]) -> None:
        if len(set(action_dims)) != 1:
            raise ValueError(f"every action dimension must have the same size, got {list(action_dims)}")
        super().__init__(list(action_dims))
        self.n_dims, self.n_choices = len(action_dims), int(action_dims[0])

    def proba_distribution(self, action_logits: torch.Tensor) -> GridMultiCategoricalDistribution:
        logits = action_logits.reshape(-1, self.n_dims, self.n_choices)
        self.distribution = Categorical(logits=logits, validate_args=False)
        return self

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return self.distribution.log_prob(actions).sum(dim=1)

    def entropy(self) -> torch.Tensor:
        return self.distribution.entropy().sum(dim=1)

    def sample(self) -> torch.Tensor:
        return self.distribution.sample()

    def mode(self) -> torch.Tensor:
        return torch.argmax(self.distribution.probs, dim=-1)


def use_grid_distribution(policy: torch.nn.Module) -> None:
    """Swap a policy's SB3 multi-categorical for the batched one when every dimension has the
    same size (the action layer is unchanged: both map the latent to ``sum(action_dims)`` logits)."""
    dist = getattr(policy, "action_dist", None)
    if type(dist) is MultiCategoricalDistribution and len(set(dist.action_dims)) == 1:
        policy.action_dist = GridMultiCategoricalDistribution(list(dist.action_dims))
