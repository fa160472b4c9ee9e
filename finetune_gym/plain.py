"""Plain fine-tuning over an environment's data: the loop RL-Tune's cost is measured against.

It trains a copy of the environment's source network (no observation hooks) with one Adam
param group per layer at one fixed rate, drawing batches from a fork of the environment's
training stream (the same cache and augmentation, generators of its own), and runs the same
forward and backward as the environment's step (:mod:`finetune_gym.training`). What the
environment adds on top of it is what a benchmark of the environment's overhead measures.
"""

from __future__ import annotations

import copy

import torch

from .env import FineTuneEnv
from .optimizers import layer_optimizer
from .training import backward, train_forward


class PlainFineTuning:
    """One fixed learning rate for every layer with the environment's optimizer, no agent, no
    environment step."""

    def __init__(self, env: FineTuneEnv, lr: float = 1e-3, seed: int = 0) -> None:
        self.env = env
        self.model = copy.deepcopy(env.source_model).train().requires_grad_(True)
        own = dict(self.model.named_parameters())
        name_of = {id(p): n for n, p in env.model.named_parameters()}
        # The environment's layer cut, on this copy's parameters.
        layers = [(layer.name, [own[name_of[id(p)]] for p in layer.parameters]) for layer in env.layers]
        self.optimizer = layer_optimizer(
            env.optimizer_name, layers, env.device, lr=float(lr), **env.optimizer_kwargs
        )
        self.stream = env.stream.fork(seed)

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The data pipeline alone: the next batch from the uint8 cache, augmented on the device."""
        batch = self.stream.load()
        self.stream.advance()
        return batch

    def step(self) -> None:
        """One update: forward, loss, backward, Adam step."""
        backward(train_forward(self.model, *self.data(), self.env.amp_dtype))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def epoch(self) -> None:
        """As many steps as an epoch has (the stream's epochs start where the last one ended)."""
        for _ in range(self.stream.steps_per_epoch):
            self.step()
