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
- ``mechanic_adamw``: Mechanic (Cutkosky, Defazio & Mehta 2023) tuning the scale of AdamW's
  updates (:class:`MechanicAdamW`); the action multiplies each layer's AdamW rate, Mechanic the
  whole update by its learned scale.

Each of these can say its current step size per layer on the device (``device_step_sizes``, read
by the ``base_step`` observation extra without a transfer of its own).
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

    def device_step_sizes(self) -> torch.Tensor:
        """Per group, the mean log10 of its per-tensor ``eta`` (NaN before the first step)."""
        device = self.param_groups[0]["params"][0].device
        out = []
        for group in self.param_groups:
            eta = group.get("eta")
            if eta:
                out.append(
                    torch.stack([torch.as_tensor(e, device=device) for e in eta])
                    .float()
                    .clamp_min(1e-30)
                    .log10()
                    .mean()
                )
            else:
                out.append(torch.tensor(float("nan"), device=device))
        return torch.stack(out)

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


class MechanicAdamW(torch.optim.AdamW):
    """AdamW whose updates Mechanic scales (Cutkosky, Defazio & Mehta 2023, Algorithm 1).

    With the reference point ``x_ref`` (the start), the sum of the base's updates ``Delta`` and the
    scale ``s`` (one per beta; their sum scales), each step: ``h = <Delta, g + lambda ||g|| s x / ||x||>``,
    ``m = max(beta m, |h|)``, ``v = beta^2 v + h^2``, ``r = max(beta r - s h, 0)``,
    ``s = (s_init m / n + r) / (sqrt(v) + eps)``, then ``x = x_ref + sum(s) (Delta + u)`` with
    ``u`` AdamW's update. As the ``mechanic-pytorch`` package (its authors' code), ``Delta`` is read
    back from the weights (``(x - x_ref) / sum(s)``), so a layer at rate 0 is left where it is and
    stays there exactly (a frozen layer).

    Why not that package: it keys its state by the parameter objects under one string key, so its
    ``state_dict`` cannot be saved and loaded (no exact resume), and it reads ``x`` after the base
    step where the paper reads ``x_t``. Here the global state lives in the first group
    (``"mechanic"``) and the reference in each parameter's state: both go through PyTorch's
    ``state_dict``. Every quantity stays on the device (no sync per step).
    """

    BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        mechanic_decay: float = 0.01,
        s_init: float = 1e-8,
        mechanic_eps: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, lr=lr, **kwargs)
        self.mechanic_decay, self.s_init, self.mechanic_eps = (
            float(mechanic_decay),
            float(s_init),
            float(mechanic_eps),
        )
        device = self.param_groups[0]["params"][0].device
        n = len(self.BETAS)
        self.param_groups[0]["mechanic"] = {
            "betas": torch.tensor(self.BETAS, device=device),
            "s": torch.zeros(n, device=device),
            "v": torch.zeros(n, device=device),
            "r": torch.zeros(n, device=device),
            "m": torch.full((n,), 1e-6, device=device),  # the package's start (the paper's 0 divides by 0)
        }

    @property
    def scale(self) -> torch.Tensor:
        """The factor Mechanic applies to the base's updates (a device scalar, >= 0)."""
        return self.param_groups[0]["mechanic"]["s"].sum().clamp_min(0.0)

    def device_step_sizes(self) -> torch.Tensor:
        """Per group, log10 of its rate times Mechanic's scale (-inf at rate 0)."""
        rates = torch.tensor([float(g["lr"]) for g in self.param_groups], device=self.scale.device)
        return (rates * self.scale).clamp_min(1e-30).log10()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        tuner = self.param_groups[0]["mechanic"]
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return loss
        s_sum = tuner["s"].sum()
        refs = [self.state[p].get("mechanic_ref") for p in params]
        refs = [p.detach().clone() if ref is None else ref for p, ref in zip(params, refs, strict=True)]
        before = [p.detach().clone() for p in params]
        grads = [p.grad for p in params]
        deltas = torch._foreach_div(torch._foreach_sub(before, refs), s_sum + self.mechanic_eps)
        grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        x_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(before)))
        decay = self.mechanic_decay * s_sum * grad_norm / (x_norm + self.mechanic_eps)
        h = sum(
            (
                torch.dot(d.flatten(), g.flatten() + decay * x.flatten())
                for d, g, x in zip(deltas, grads, before, strict=True)
            ),
            torch.zeros((), device=s_sum.device),
        )
        super().step()
        for p, ref in zip(params, refs, strict=True):
            self.state[p]["mechanic_ref"] = ref  # after AdamW made its own state (it starts on an empty one)
        updates = torch._foreach_sub([p.detach() for p in params], before)
        betas = tuner["betas"]
        tuner["m"] = torch.maximum(betas * tuner["m"], h.abs())
        tuner["v"] = betas.square() * tuner["v"] + h.square()
        tuner["r"] = (betas * tuner["r"] - tuner["s"] * h).clamp_min(0.0)
        tuner["s"] = (self.s_init / len(betas) * tuner["m"] + tuner["r"]) / (
            tuner["v"].sqrt() + self.mechanic_eps
        )
        scale = tuner["s"].sum().clamp_min(0.0)
        trained = {id(p) for group in self.param_groups if group["lr"] != 0 for p in group["params"]}
        for p, ref, delta, update, old in zip(params, refs, deltas, updates, before, strict=True):
            if id(p) in trained:
                p.copy_(ref + scale * (delta + update))
            else:
                p.copy_(old)  # frozen: exactly where it was
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        device = self.param_groups[0]["params"][0].device
        tuner = self.param_groups[0]["mechanic"]
        for key, value in tuner.items():
            tuner[key] = value.to(device)


def mechanic_adamw(groups: Sequence[dict[str, Any]], **kwargs: Any) -> MechanicAdamW:
    """``mechanic_adamw``: Mechanic over AdamW at the authors' settings (lambda 0.01, s_init 1e-8,
    six betas), AdamW at PyTorch's defaults; the rate a multiplier (1.0)."""
    return MechanicAdamW(list(groups), **kwargs)


def ldog(groups: Sequence[dict[str, Any]], **kwargs: Any) -> AveragedLDoG:
    """``ldog``: L-DoG at its published settings (``reps_rel`` 1e-4, the value its authors suggest
    for networks with BatchNorm), averaged."""
    return AveragedLDoG(list(groups), **{"reps_rel": 1e-4, **kwargs})
