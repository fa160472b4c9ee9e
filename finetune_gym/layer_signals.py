"""Scale-free per-layer statistics of the updates: the observation extras ``grad_ratio``,
``drift``, ``grad_cosine`` and ``base_step`` (issue 25; layout in :mod:`.observation`).

They are what the step-size rules of the literature read (Auto-RGN's relative gradient norm,
DoG's distance from the start, the sign agreement of successive gradients, the base optimizer's
own step), and they do not depend on a layer's width or the weights' scale, so one policy can read
them on any network. All are computed on the device from tensors a step already has (the
gradients the update applies, the weights, the source weights): no extra forward or backward,
and no extra transfer (they travel in the step's one read-back with the activations).

- ``grad_ratio``: ``log10(||g|| / ||w||)`` of the gradient the last update applied, per layer.
- ``drift``: ``log10(||w - w0|| / ||w0||)`` of the weights now against the episode's start (the
  source weights); ``-8`` at the start.
- ``grad_cosine``: cosine between the last two gradients a layer was updated with, in [-1, 1]
  (0 until there are two in the episode).
- ``base_step``: ``log10`` of the base optimizer's current step size for the layer: its rate for
  Adam, AdamW, SGD and Schedule-Free; ``d * lr`` for Prodigy (one ``d``) and Prodigy per layer
  (the layer's ``d``); for L-DoG the geometric mean over the layer's tensors of their ``eta``
  (which includes the rate); for Mechanic its rate times the learned scale. ``-8`` for a rate of
  0 and before the first step.

Gradient statistics are of the update the last step made (the activations are of the batch the
next step trains on): a step's gradient exists only once the agent has chosen its rates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

GRADIENT_EXTRAS = ("grad_ratio", "drift", "grad_cosine", "base_step")
FLOOR = -8.0  # log10 of a value of 0 (and of values not yet defined)
_TINY = 1e-30


def _log10(values: np.ndarray) -> np.ndarray:
    return np.log10(np.maximum(np.asarray(values, dtype=np.float64), 10.0**FLOOR))


class LayerStatistics:
    """The device-side bookkeeping of the gradient extras for one network and its source weights."""

    def __init__(
        self,
        extras: Sequence[str],
        layers: Sequence[Sequence[nn.Parameter]],
        source: Sequence[Sequence[torch.Tensor]],
    ) -> None:
        self.extras = tuple(e for e in GRADIENT_EXTRAS if e in extras)
        self.n_layers = len(layers)
        self.params = [p for layer in layers for p in layer]
        self.source = [s for layer in source for s in layer]
        device = self.params[0].device if self.params else torch.device("cpu")
        # Which layer each tensor belongs to: per-layer sums of squares in one index_add.
        self.owner = torch.tensor(
            [i for i, layer in enumerate(layers) for _ in layer], dtype=torch.long, device=device
        )
        self.previous: list[torch.Tensor] | None = None  # the last applied gradient (grad_cosine)
        # Per layer: ||g||^2, ||w||^2, ||g - g_prev||^2, ||g_prev||^2 of the last update.
        self.last = torch.zeros(4, self.n_layers, device=device)
        self.updates = 0
        self._source_sq: torch.Tensor | None = None  # ||w0||^2 per layer: fixed within an episode

    @property
    def active(self) -> bool:
        return bool(self.extras)

    def reset(self) -> None:
        """A new episode: no update yet."""
        self.previous = None
        self.last = torch.zeros_like(self.last)
        self.updates = 0
        self._source_sq = None  # the source may have moved between episodes (the EMA scheme)

    def _per_layer(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        norms = torch.stack(torch._foreach_norm(list(tensors))).float()
        return torch.zeros(self.n_layers, device=norms.device).index_add_(0, self.owner, norms.square())

    @torch.no_grad()
    def record_update(self) -> None:
        """Before the optimizer's step: the statistics of the gradient it is about to apply."""
        if not ("grad_ratio" in self.extras or "grad_cosine" in self.extras):
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        rows = [self._per_layer(grads), self._per_layer([p.detach() for p in self.params])]
        if "grad_cosine" in self.extras:
            if self.previous is None:
                zeros = torch.zeros(self.n_layers, device=self.last.device)
                rows += [zeros, zeros]
                self.previous = [g.detach().clone() for g in grads]
            else:
                rows += [
                    self._per_layer(torch._foreach_sub(grads, self.previous)),
                    self._per_layer(self.previous),
                ]
                torch._foreach_copy_(self.previous, grads)
        else:
            rows += [self.last[2], self.last[3]]
        self.last = torch.stack(rows)
        self.updates += 1

    @torch.no_grad()
    def device_values(self, optimizer: Any) -> torch.Tensor:
        """What travels to the host with the step's observation (float32, on the device)."""
        parts = [self.last.flatten()]
        if "drift" in self.extras:
            if self._source_sq is None:
                self._source_sq = self._per_layer(self.source)
            parts += [
                self._per_layer(torch._foreach_sub([p.detach() for p in self.params], self.source)),
                self._source_sq,
            ]
        if "base_step" in self.extras:
            parts.append(self._device_steps(optimizer))
        return torch.cat(parts).float()

    def _device_steps(self, optimizer: Any) -> torch.Tensor:
        """Per layer, log10 of the step size of an optimizer that keeps it on the device (L-DoG's
        ``eta``, Mechanic's scale: ``device_step_sizes``); NaN where the host's values serve."""
        sizes = getattr(optimizer, "device_step_sizes", None)
        if sizes is None:
            return torch.full((self.n_layers,), math.nan, device=self.last.device)
        return sizes().to(self.last.device).float()

    def features(self, values: np.ndarray, optimizer: Any) -> np.ndarray:
        """The extras from :meth:`device_values` read back (float64 math, float32 out)."""
        n = self.n_layers
        grad_sq, weight_sq, diff_sq, previous_sq = values[: 4 * n].reshape(4, n).astype(np.float64)
        offset, parts = 4 * n, []
        if "grad_ratio" in self.extras:
            ratio = np.sqrt(grad_sq) / np.sqrt(np.maximum(weight_sq, _TINY))
            parts.append(_log10(ratio) if self.updates else np.full(n, FLOOR))
        if "drift" in self.extras:
            moved, start = values[offset : offset + n], values[offset + n : offset + 2 * n]
            offset += 2 * n
            parts.append(_log10(np.sqrt(moved) / np.sqrt(np.maximum(start, _TINY))))
        if "grad_cosine" in self.extras:
            norms = np.sqrt(grad_sq * previous_sq)
            cosine = np.where(
                norms > 0, (grad_sq + previous_sq - diff_sq) / (2 * np.maximum(norms, _TINY)), 0.0
            )
            parts.append(np.clip(cosine, -1.0, 1.0))
        if "base_step" in self.extras:
            parts.append(self._base_steps(values[offset : offset + n], optimizer))
        out = np.concatenate(parts) if parts else np.zeros(0)
        return np.nan_to_num(out, nan=0.0).astype(np.float32)

    def _base_steps(self, device_logs: np.ndarray, optimizer: Any) -> np.ndarray:
        steps = np.full(self.n_layers, FLOOR)
        groups = [] if optimizer is None else optimizer.param_groups
        kept_on_device = hasattr(optimizer, "device_step_sizes")
        for i, group in enumerate(groups[: self.n_layers]):
            if not math.isnan(device_logs[i]):
                steps[i] = max(FLOOR, float(device_logs[i]))
            elif not kept_on_device:  # (L-DoG before its first step has no eta yet: the floor)
                rate = float(group["lr"]) * float(group.get("d", 1.0))
                steps[i] = _log10(np.array([rate]))[0]
        return steps

    def get_state(self) -> dict[str, Any]:
        # Copies (``.cpu()`` of a CPU tensor is the tensor itself, which later steps update in place).
        return {
            "previous": None
            if self.previous is None
            else [t.detach().to("cpu", copy=True) for t in self.previous],
            "last": self.last.detach().to("cpu", copy=True),
            "updates": self.updates,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        device = self.last.device
        previous = state["previous"]
        self.previous = None if previous is None else [t.to(device, copy=True) for t in previous]
        self.last = state["last"].to(device, copy=True)
        self.updates = int(state["updates"])
