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

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

OBS_LIMIT = 1e6


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
                out = output.detach()
                # Accumulate in fp32 without first copying a bf16 activation to fp32.
                per_channel = out.mean(dim=[0, *range(2, out.ndim)], dtype=torch.float32)
                self._pooled[index] = F.adaptive_avg_pool1d(per_channel.view(1, 1, -1), self.features).view(
                    -1
                )

        return record

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
