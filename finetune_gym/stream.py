"""The training stream: the sampled training images as augmented batches, reshuffled every epoch.

One object answers "what does fine-tuning train on next" for both the environment's
steps and a plain fine-tuning loop (:mod:`finetune_gym.plain`), so the two compare on
the same data pipeline: a uint8 cache (on the device when it fits), a fresh random
order each epoch, per-image augmentation on tensors. Its state (the two generators,
the epoch's order, the position in it) restores it exactly from a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from .augment import BatchAugment


class TrainingStream:
    """Batches of ``batch_size`` images from ``images``/``labels``, augmented by ``augmenter``.

    A lone leftover image is dropped from an epoch (it waits for the next one, reshuffled):
    a batch of one breaks BatchNorm on 1x1 feature maps. So the stream needs at least two images
    (the environment checks it before it builds anything).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        augmenter: BatchAugment,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        self.images, self.labels = images, labels
        self.augmenter, self.batch_size, self.device = augmenter, int(batch_size), device
        self.order_generator = torch.Generator()
        self.augment_generator = torch.Generator(device=device)
        # One seed per batch for the network's own randomness (dropout, stochastic depth).
        self.noise_generator = torch.Generator()
        self.seed(seed)
        self.batches: list[torch.Tensor] = []  # this epoch's index batches
        self.position = 0  # the batch to train on next

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def steps_per_epoch(self) -> int:
        n = len(self)
        return math.ceil(n / self.batch_size) - (1 if n % self.batch_size == 1 else 0)

    def seed(self, seed: int) -> None:
        """Restart the generators: the data order from ``seed``, augmentation from ``seed + 1``,
        the batches' noise seeds from ``seed + 2``."""
        self.order_generator.manual_seed(int(seed))
        self.augment_generator.manual_seed(int(seed) + 1)
        self.noise_generator.manual_seed(int(seed) + 2)

    def noise_seed(self) -> int:
        """A seed for the network's randomness in the next training forward (a CPU draw, no sync)."""
        return int(torch.randint(0, 2**62, (1,), generator=self.noise_generator))

    def fork(self, seed: int) -> TrainingStream:
        """The same cached data with generators of its own (a second consumer, e.g. a plain loop)."""
        return TrainingStream(self.images, self.labels, self.augmenter, self.batch_size, self.device, seed)

    def new_epoch(self) -> None:
        """Start a pass over the data in a new random order."""
        n = len(self)
        order = torch.randperm(n, generator=self.order_generator)
        if n % self.batch_size == 1:
            order = order[:-1]
        self.batches = list(order.to(self.images.device).split(self.batch_size))  # one copy per epoch
        self.position = 0

    def advance(self) -> bool:
        """Move to the next batch; at the end of the epoch start a new one and return True."""
        self.position += 1
        if self.position < len(self.batches):
            return False
        self.new_epoch()
        return True

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented inputs (on the device) and labels of the current batch."""
        if not self.batches:
            self.new_epoch()
        batch = self.batches[self.position]
        images = self.images[batch].to(self.device, non_blocking=True)
        labels = self.labels[batch.to(self.labels.device)]
        return self.augmenter.train(images, self.augment_generator), labels

    def inputs(self, seed: int, max_batches: int) -> Iterator[torch.Tensor]:
        """Augmented inputs of up to ``max_batches`` batches of one pass, from a fork seeded
        ``seed`` (this stream does not move): e.g. to recompute BatchNorm statistics."""
        fork = self.fork(seed)
        fork.new_epoch()
        for _ in range(min(max_batches, self.steps_per_epoch)):
            yield fork.load()[0]
            fork.advance()

    def get_state(self) -> dict[str, Any]:
        return {
            "order_generator": self.order_generator.get_state(),
            "augment_generator": self.augment_generator.get_state().cpu(),
            "noise_generator": self.noise_generator.get_state(),
            "batches": [b.cpu() for b in self.batches],
            "position": self.position,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.order_generator.set_state(state["order_generator"])
        self.augment_generator.set_state(state["augment_generator"])
        if "noise_generator" in state:  # absent from checkpoints written before it existed
            self.noise_generator.set_state(state["noise_generator"])
        self.batches = [b.to(self.images.device) for b in state["batches"]]
        self.position = state["position"]
