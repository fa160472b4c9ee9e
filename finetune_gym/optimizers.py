"""The base optimizer the agent's learning rates drive: one param group per layer.

``adam`` is the paper's. ``adamw`` and ``sgd`` (momentum 0.9, Nesterov) are the usual
alternatives; ``schedulefree_adamw`` (the ``schedulefree`` package) and ``prodigy``
(``prodigyopt``) are what practitioners use to avoid a learning-rate search. The action always
sets each group's ``lr``: for Prodigy that is its multiplier of the learning rate it estimates
(1.0 is its published default). Prodigy estimates one step size for every group and its package
refuses groups at different rates; here a layer at a lower rate takes that fraction of the step
Prodigy takes for it at the highest rate (:class:`LayerScaledProdigy`), so an action is a
per-layer multiplier of Prodigy's one global step, and a uniform action is Prodigy bit for bit.
``prodigy_layerwise`` and ``ldog`` (:mod:`finetune_gym.parameter_free`) estimate a step size per
layer (per tensor for L-DoG): there the action is each layer's multiplier of its own estimate;
``mechanic_adamw`` learns one scale for AdamW's updates, which the action spreads over the layers.

Schedule-Free trains at one point (``y``) and is evaluated at another (``x``, an average), and so
does averaged L-DoG (its polynomial-decay average): :func:`evaluation_point` switches the
parameters there and recomputes BatchNorm statistics, as Schedule-Free's documentation says, then
restores both, so the training run goes on unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from prodigyopt import Prodigy
from torch import nn
from torch.optim.swa_utils import update_bn

from .arguments import check_choice
from .parameter_free import ldog, mechanic_adamw, prodigy_per_layer
from .training import frozen_buffers

# Per-layer parameter-free bases: the action multiplies each layer's own estimate (1: as published).
PARAMETER_FREE = ("prodigy_layerwise", "ldog", "mechanic_adamw")
OPTIMIZERS = ("adam", "adamw", "sgd", "schedulefree_adamw", "prodigy", *PARAMETER_FREE)
# Published default rates, for baselines that run an optimizer as its authors ship it.
DEFAULT_LR = {
    "schedulefree_adamw": 0.0025,
    "prodigy": 1.0,
    "prodigy_layerwise": 1.0,
    "ldog": 1.0,
    "mechanic_adamw": 1.0,
}


class LayerScaledProdigy(Prodigy):
    """Prodigy whose groups may run at different rates: each group at rate ``r`` moves by
    ``r / r_max`` of the step Prodigy takes for it at the highest rate ``r_max``.

    Why not the package's: ``prodigyopt`` raises when groups' rates differ (other than 0), because
    its one estimate ``d`` sums every group's contribution at a single rate. Here that estimate is
    formed at ``r_max`` for every trained group, as Prodigy does, and only the displacement is
    scaled afterwards (``p = p_old + (r / r_max) (p_new - p_old)``; Adam-type steps are linear in
    the rate, so this is the rate ``r`` with Prodigy's own ``d``). With equal rates (or 0) no
    copy is made and the step is the package's, bit for bit.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        top = max(group["lr"] for group in self.param_groups)
        scaled = [group for group in self.param_groups if 0.0 < group["lr"] < top]
        if not scaled:
            return super().step(closure)
        before = [
            (
                group,
                group["lr"] / top,
                [(p, p.detach().clone()) for p in group["params"] if p.grad is not None],
            )
            for group in scaled
        ]
        rates = [group["lr"] for group in scaled]
        for group in scaled:
            group["lr"] = top
        try:
            loss = super().step(closure)
        finally:
            for group, rate in zip(scaled, rates, strict=True):
                group["lr"] = rate
        for _group, fraction, pairs in before:
            for parameter, old in pairs:
                parameter.copy_(old.lerp_(parameter, fraction))
        return loss


def check_optimizer(name: str) -> str:
    return check_choice("optimizer", name, OPTIMIZERS)


def layer_optimizer(
    name: str,
    layers: Sequence[tuple[str, Sequence[nn.Parameter]]],
    device: torch.device,
    lr: float = 0.0,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Optimizer ``name`` with one param group per ``(name, parameters)`` layer, each at ``lr``
    until a step sets its own; fused kernels on CUDA where PyTorch has them."""
    groups = [{"params": list(params), "lr": lr, "name": layer} for layer, params in layers]
    check_optimizer(name)
    if name in ("adam", "adamw", "sgd") and device.type == "cuda":
        kwargs.setdefault("fused", True)
    try:
        if name == "adam":
            return torch.optim.Adam(groups, **kwargs)
        if name == "adamw":
            return torch.optim.AdamW(groups, **kwargs)
        if name == "sgd":
            return torch.optim.SGD(groups, **{"momentum": 0.9, "nesterov": True, **kwargs})
        if name == "schedulefree_adamw":
            from schedulefree import AdamWScheduleFree

            optimizer = AdamWScheduleFree(groups, **kwargs)
            optimizer.train()  # it refuses to step until told it is training
            return optimizer
        if name == "prodigy_layerwise":
            return prodigy_per_layer(groups, **kwargs)
        if name == "ldog":
            return ldog(groups, **kwargs)
        if name == "mechanic_adamw":
            return mechanic_adamw(groups, **kwargs)
        return LayerScaledProdigy(groups, **kwargs)
    except TypeError as error:
        raise ValueError(f"optimizer {name!r} does not take {sorted(kwargs)}: {error}") from error


def has_evaluation_point(optimizer: object) -> bool:
    """Whether the optimizer is evaluated somewhere else than where it trains: it has ``eval()``
    and ``train()`` switching its parameters there and back (Schedule-Free's ``x``, averaged
    L-DoG's polynomial average; PyTorch's optimizers have neither)."""
    return callable(getattr(optimizer, "eval", None)) and callable(getattr(optimizer, "train", None))


@contextmanager
def evaluation_point(
    optimizer: torch.optim.Optimizer | None,
    model: nn.Module,
    batches: Callable[[], Iterable[torch.Tensor]],
) -> Iterator[None]:
    """The model at the optimizer's evaluation point inside the block, restored after.

    For Schedule-Free (and averaged L-DoG): parameters at the average and BatchNorm statistics
    recomputed there over ``batches()`` (``torch.optim.swa_utils.update_bn``). Every other
    optimizer evaluates where it trains: nothing changes.
    """
    if not has_evaluation_point(optimizer):
        yield
        return
    # Switching back (y = lerp(x, z)) is exact only up to rounding: keep y and restore it bit for
    # bit, so a run that evaluates trains exactly as one that does not.
    training_point = [p.detach().clone() for p in model.parameters()]
    was_training = model.training
    optimizer.eval()
    try:
        with frozen_buffers(model):
            update_bn(batches(), model)
            yield
    finally:
        optimizer.train()
        with torch.no_grad():
            for parameter, value in zip(model.parameters(), training_point, strict=True):
                parameter.copy_(value)
        model.train(was_training)
