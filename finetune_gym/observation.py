"""The agent's view of the network: per-layer mean activations, pooled on the device.

Layout of the observation (float32, length ``n_layers * features``): layer
``i`` occupies ``obs[i * features : (i + 1) * features]``. Each block is the
layer's output averaged over the batch and spatial positions (one value per
channel), then average-pooled over channels into ``features`` equal bins
(``adaptive_avg_pool1d``), so its size depends neither on the layer widths nor
on the dataset's number of classes. Values are clipped to ``[-OBS_LIMIT,
OBS_LIMIT]`` (NaN becomes 0) so a diverging network never feeds the agent a
non-finite number.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

OBS_LIMIT = 1e6


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

    def __init__(self, probes: Sequence[nn.Module], features: int) -> None:
        if features < 1:
            raise ValueError(f"obs_features must be at least 1, got {features}")
        self.features = features
        self.recording = False
        self._pooled: list[torch.Tensor | None] = [None] * len(probes)
        self._handles = [p.register_forward_hook(self._hook(i)) for i, p in enumerate(probes)]

    def _hook(self, index: int):
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if self.recording:
                per_channel = channel_means(output.detach())
                self._pooled[index] = F.adaptive_avg_pool1d(per_channel.view(1, 1, -1), self.features).view(
                    -1
                )

        return record

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
