"""The held-out splits: validation and test images, decoded once, and top-1 accuracy on them.

Validation (held out of the sampled training set) is decoded with the environment, since
every episode ends with it; the test set only on its first use, since a run evaluates it
once at the end and it can be far larger than the sample (GTSRB: 12,630 test images).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .augment import BatchAugment
from .datasets import ImageDataset
from .device import autocast, place_cache

SPLITS = ("val", "test")


class HeldOutSplits:
    """uint8 caches of the validation and test images, evaluated in eval mode, centre crop,
    batched, without gradients."""

    def __init__(
        self,
        dataset: ImageDataset,
        val_indices: np.ndarray,
        cache_size: int,
        augmenter: BatchAugment,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        batch_size: int,
    ) -> None:
        self.dataset, self.cache_size, self.augmenter = dataset, cache_size, augmenter
        self.device, self.amp_dtype, self.batch_size = device, amp_dtype, batch_size
        self._sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if len(val_indices):
            self._sets["val"] = self._decode(dataset.train, val_indices)

    @property
    def has_val(self) -> bool:
        return "val" in self._sets

    def accuracy(self, model: nn.Module, split: str) -> float:
        """Top-1 accuracy of ``model`` on ``split``; the model's train/eval mode is restored."""
        images, labels = self._split(split)
        was_training = model.training
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            for start in range(0, len(labels), self.batch_size):
                x = images[start : start + self.batch_size].to(self.device, non_blocking=True)
                logits = model(self.augmenter.eval(x))
                correct += (logits.argmax(1) == labels[start : start + self.batch_size]).sum()
        model.train(was_training)
        return correct.item() / len(labels)

    def clear(self) -> None:
        self._sets.clear()

    def _decode(self, split, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            place_cache(split.decoder.decode(indices, self.cache_size), self.device),
            torch.as_tensor(split.labels[indices], device=self.device),
        )

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in SPLITS:
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if split == "test" and "test" not in self._sets:
            self._sets["test"] = self._decode(self.dataset.test, np.arange(len(self.dataset.test)))
        if split not in self._sets:
            raise ValueError("this environment has no validation split: construct it with val_fraction > 0")
        return self._sets[split]
