"""The agent's view of the network: per-layer mean activations, pooled on the device.

Layout of the observation (float32, length ``n_layers * features``): layer
``i`` occupies ``obs[i * features : (i + 1) * features]``. Each block is the
layer's output averaged over the batch and spatial positions (one value per
channel), then average-pooled over channels into ``features`` equal bins
(``adaptive_avg_pool1d``), so its size depends neither on the layer widths nor
on the dataset's number of classes. Values are clipped to ``[-OBS_LIMIT,
OBS_LIMIT]`` (NaN becomes 0) so a diverging network never feeds the agent a
non-finite number.

Opt-in extras (``obs_extras``), appended after the layers' blocks in this order, for agents
that must know where training stands (the paper's observation has none of them):

- ``"progress"``: one value, the fraction of the episode's steps done, in [0, 1].
- ``"lr"``: one value per layer, ``log10`` of the rate the last step gave it (``-8`` for a rate
  of 0 and before the first step).
- ``"loss"``: three values, the training loss of the batch just forwarded, its running mean
  (exponential, weight 0.1 for the newest) and their difference, each as ``log1p`` of a loss
  (difference: of each loss) so that they stay in a few units whatever the dataset.
- ``"grad_ratio"``, ``"drift"``, ``"grad_cosine"``, ``"base_step"``: one value per layer each,
  scale-free statistics of the updates (relative gradient norm, relative distance from the
  episode's start, cosine of successive gradients, the base optimizer's own step size); defined
  and computed in :mod:`finetune_gym.layer_signals`, without an extra forward, backward or
  transfer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OBS_LIMIT = 1e6
OBS_EXTRAS = ("progress", "lr", "loss", "grad_ratio", "drift", "grad_cosine", "base_step")
PER_LAYER_EXTRAS = ("lr", "grad_ratio", "drift", "grad_cosine", "base_step")


def channel_means(out: torch.Tensor) -> torch.Tensor:
    """``out``'s mean over the batch and spatial positions, one fp32 value per channel.

    One reduction on CUDA (it accumulates a bf16 activation in fp32 without copying it). On the
    CPU that single reduction first copies a bf16 or channels-last activation to fp32: averaging
    over space, then over the batch, is the same mean without the copy, and costs a half to a
    quarter as much there; plain contiguous fp32 keeps the single reduction, which is faster for it.
    """
    spatial = list(range(2, out.ndim))
    if out.device.type == "cuda" or (out.dtype == torch.float32 and out.is_contiguous()) or not spatial:
        return out.mean(dim=[0, *spatial], dtype=torch.float32)
    return out.mean(dim=spatial, dtype=torch.float32).mean(0)


class ActivationPooler:
    """Forward hooks that record each probe's pooled output while ``recording`` is on."""

    def __init__(
        self, probes: Sequence[nn.Module], features: int, tokens: Sequence[bool] | None = None
    ) -> None:
        if features < 1:
            raise ValueError(f"obs_features must be at least 1, got {features}")
        self.features = features
        # Probes whose output is (batch, tokens, channels), a transformer's: averaged over tokens.
        self._tokens = list(tokens) if tokens is not None else [False] * len(probes)
        self.recording = False
        self._pooled: list[torch.Tensor | None] = [None] * len(probes)
        self._handles = [p.register_forward_hook(self._hook(i)) for i, p in enumerate(probes)]

    def _hook(self, index: int) -> Callable[..., None]:
        # A partial of a method, not a closure: the hooks live on the network's modules, and a
        # network whose hooks pickle can be deep-copied and sent to subprocesses with its env.
        return functools.partial(self._record, index)

    def _record(self, index: int, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if self.recording:
            out = output.detach()
            per_channel = (
                out.mean(dim=(0, 1), dtype=torch.float32) if self._tokens[index] else channel_means(out)
            )
            self._pooled[index] = F.adaptive_avg_pool1d(per_channel.view(1, 1, -1), self.features).view(-1)

    @contextmanager
    def record(self) -> Iterator[None]:
        """Record the forwards inside the block (the training forwards, not evaluations)."""
        self.recording = True
        try:
            yield
        finally:
            self.recording = False

    def observation(self) -> torch.Tensor:
        """The last recorded forward as one finite float32 vector, still on the device."""
        missing = [i for i, t in enumerate(self._pooled) if t is None]
        if missing:
            raise RuntimeError(f"layers {missing} produced no output in the last forward pass")
        pooled = torch.cat(self._pooled)  # type: ignore[arg-type]
        return torch.nan_to_num(pooled, nan=0.0).clamp_(-OBS_LIMIT, OBS_LIMIT)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def check_obs_extras(extras: Sequence[str] | None) -> tuple[str, ...]:
    extras = tuple(extras or ())
    unknown = sorted(set(extras) - set(OBS_EXTRAS))
    if unknown or len(set(extras)) != len(extras):
        raise ValueError(
            f"obs_extras must be distinct names among {', '.join(OBS_EXTRAS)}; got {list(extras)}"
        )
    return tuple(e for e in OBS_EXTRAS if e in extras)  # one layout whatever the order given


def _extra_size(extra: str, n_layers: int) -> int:
    return n_layers if extra in PER_LAYER_EXTRAS else {"progress": 1, "loss": 3}[extra]


def extras_size(extras: Sequence[str], n_layers: int) -> int:
    return sum(_extra_size(e, n_layers) for e in extras)


def extras_layout(extras: Sequence[str], n_layers: int, obs_features: int) -> dict[str, slice]:
    """Where each extra sits in the flat observation (after the layers' blocks): the one reading
    of the layout that every consumer (LayerwiseView, the rules that read an extra) shares."""
    layout, start = {}, n_layers * obs_features
    for extra in check_obs_extras(extras):
        size = _extra_size(extra, n_layers)
        layout[extra] = slice(start, start + size)
        start += size
    return layout


class TrainingSignals:
    """What the extras and the ``loss_improvement`` reward read, kept across steps: the rates the
    last step gave each layer and the running mean of training losses (non-finite ones skipped)."""

    def __init__(self, extras: Sequence[str], n_layers: int) -> None:
        self.extras, self.n_layers = tuple(e for e in extras if e in ("progress", "lr", "loss")), n_layers
        self.reset()

    def reset(self) -> None:
        self.rates = np.zeros(self.n_layers)
        self.loss_mean = self.previous_mean = math.nan

    def record_loss(self, loss: float) -> None:
        """Take in a training loss; :attr:`previous_mean` keeps the mean from before it."""
        self.previous_mean = self.loss_mean
        if math.isfinite(loss):
            self.loss_mean = loss if math.isnan(self.loss_mean) else 0.9 * self.loss_mean + 0.1 * loss

    def features(self, progress: float, loss: float) -> np.ndarray:
        """The extras this class keeps (progress, lr, loss; see the module's docstring), finite
        float32; the gradient extras come after them, from :mod:`.layer_signals`."""
        parts: list[np.ndarray] = []
        if "progress" in self.extras:
            parts.append(np.array([progress]))
        if "lr" in self.extras:
            parts.append(np.log10(np.maximum(np.asarray(self.rates, dtype=np.float64), 1e-8)))
        if "loss" in self.extras:
            now, mean = math.log1p(max(loss, 0.0)), math.log1p(max(self.loss_mean, 0.0))
            parts.append(np.array([now, mean, now - mean]))
        out = np.concatenate(parts) if parts else np.zeros(0)
        return np.clip(np.nan_to_num(out, nan=0.0), -OBS_LIMIT, OBS_LIMIT).astype(np.float32)

    def get_state(self) -> dict:
        return {"rates": self.rates.copy(), "loss_mean": self.loss_mean, "previous_mean": self.previous_mean}

    def set_state(self, state: dict) -> None:
        self.rates = np.asarray(state["rates"], dtype=np.float64)
        self.loss_mean, self.previous_mean = state["loss_mean"], state["previous_mean"]
