"""Base optimizers that estimate a step size for each layer by themselves (issue 25).

The strongest one-run methods for fine-tuning spread the step across layers on their own. Two are
here, each with the action's rate as a multiplier of the layer's own estimate (1 = as published,
0 = frozen), so a policy can act on top of them:

- ``prodigy_layerwise``: one Prodigy (``prodigyopt``) per layer. One Prodigy instance sums its
  estimate ``d`` over all its param groups (one ``d`` for the network, which is why the plain
  ``prodigy`` base refuses per-layer multipliers); one instance per layer gives each layer its own.
  :class:`PerLayer` makes the instances one optimizer: their param groups in layer order (the
  environment sets each group's ``lr``), one ``step``, one ``state_dict``.
- ``ldog``: L-DoG (Ivgi et al. 2023, the ``dog-optimizer`` package): a step per tensor, its largest
  distance from the start over the root of its summed squared gradients. Its authors call iterate
  averaging crucial; :class:`AveragedLDoG` keeps their polynomial-decay average (gamma 8) in the
  optimizer's state and evaluates there, as Schedule-Free evaluates at its average. The package's
  ``load_state_dict`` moves its step-size tensors to the CPU (a resumed CUDA run would fail on the
  next step); the subclass keeps them with their parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from dog import LDoG
from prodigyopt import Prodigy


class PerLayer:
    """Several optimizers, one per layer, behaving as one: ``param_groups`` lists their groups (the
    same dicts: setting a group's ``lr`` sets that optimizer's), ``step`` steps each, the state dict
    holds each one's. Why not ``torch.optim.Optimizer``: its constructor would copy the groups,
    which must stay the inner optimizers' own."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)
        self.param_groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"per_layer": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        states = state["per_layer"]
        if len(states) != len(self.optimizers):
            raise ValueError(
                f"the state holds {len(states)} layers' optimizers, this one has {len(self.optimizers)}"
            )
        for optimizer, one in zip(self.optimizers, states, strict=True):
            optimizer.load_state_dict(one)


def prodigy_per_layer(groups: Sequence[dict[str, Any]], **kwargs: Any) -> PerLayer:
    """``prodigy_layerwise``: a Prodigy for each layer's param group, so each has its own ``d``."""
    return PerLayer([Prodigy([group], **kwargs) for group in groups])


class AveragedLDoG(LDoG):
    """L-DoG with its authors' polynomial-decay iterate average as the evaluation point.

    After step ``t`` the average moves towards the weights by ``(gamma + 1) / (t + gamma)``
    (Shamir & Zhang 2013; ``t`` from 1, so the first average is the first iterate). ``eval()``
    swaps every parameter with its average and ``train()`` swaps back, bit for bit; the averages
    live in the per-parameter state, so checkpoints carry them.
    """

    def __init__(self, params: Any, gamma: float = 8.0, **kwargs: Any) -> None:
        if gamma < 0:
            raise ValueError(f"ldog: the averaging's gamma must be >= 0, got {gamma!r}")
        super().__init__(params, **kwargs)
        self.gamma = float(gamma)
        self.evaluating = False

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if self.evaluating:
            raise RuntimeError("ldog: step() at the evaluation point; call train() first")
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if "average" not in state:
                    state["average"], state["averaged"] = (
                        p.detach().clone(),
                        torch.zeros((), dtype=torch.float64),
                    )
                state["averaged"] += 1
                weight = (self.gamma + 1) / (float(state["averaged"]) + self.gamma)
                state["average"].lerp_(p.detach(), weight)
        return loss

    @torch.no_grad()
    def _swap(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                average = self.state[p].get("average")
                if average is not None:
                    kept = p.detach().clone()
                    p.copy_(average)
                    average.copy_(kept)

    def eval(self) -> None:
        """Parameters at their averages (no-op before the first step, or if already there)."""
        if not self.evaluating:
            self._swap()
            self.evaluating = True

    def train(self) -> None:
        """Parameters back at the training point."""
        if self.evaluating:
            self._swap()
            self.evaluating = False

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # The package moved rbar, G and eta to the CPU; keep each group's with its parameters.
        for group in self.param_groups:
            device = group["params"][0].device
            for key, value in group.items():
                if isinstance(value, torch.Tensor):
                    group[key] = value.to(device)
                elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                    group[key] = [v.to(device) for v in value]


def ldog(groups: Sequence[dict[str, Any]], **kwargs: Any) -> AveragedLDoG:
    """``ldog``: L-DoG at its published settings (``reps_rel`` 1e-4, the value its authors suggest
    for networks with BatchNorm), averaged."""
    return AveragedLDoG(list(groups), **{"reps_rel": 1e-4, **kwargs})
