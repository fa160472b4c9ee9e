"""What one fine-tuning environment is built from, checked against each other.

The target data (listed, sampled, split into training and validation subsets, decoded onto the
device at the size augmentation needs) and the source model (its weights, a new head, the cut into
layers) depend on each other: the head needs the class count, the augmentation the network's
normalisation, the network the images' channels. :func:`assemble` builds them in that order and
checks what must agree, so :class:`~finetune_gym.env.FineTuneEnv` keeps only what an episode
changes (the optimizer, the pending batch, the counters).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .augment import BatchAugment, resolve_augment
from .datasets import load_dataset, sample_and_split
from .device import place_cache
from .evaluation import HeldOutSplits
from .models import build_backbone
from .models.layers import Layer
from .stream import TrainingStream


@dataclass
class Assembly:
    """The built pieces: the dataset and its subsets, the model on its device, its layers, and the
    training stream and held-out splits that feed it."""

    dataset: Any
    train_indices: np.ndarray
    val_indices: np.ndarray
    cache_size: int  # the side the images are decoded at (larger than image_size for random crops)
    model: nn.Module
    layers: list[Layer]
    layer_names: list[str]
    augmenter: BatchAugment
    stream: TrainingStream
    held_out: HeldOutSplits


def assemble(
    *,
    model: str | nn.Module,
    weights: str | Path | None,
    model_kwargs: dict[str, Any] | None,
    layers: list[Any] | None,
    mean: Any,
    std: Any,
    dataset: str,
    data_root: str | Path | None,
    download: bool,
    dataset_kwargs: dict[str, Any] | None,
    sampling_rate: float,
    val_fraction: float,
    seed: int,
    batch_size: int,
    image_size: int,
    granularity: str,
    augment: str,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    eval_batch_size: int,
) -> Assembly:
    """Data, then model, then what feeds one into the other (arguments as FineTuneEnv's)."""
    # Data: list, sample, split, decode what is used.
    target = load_dataset(dataset, data_root, download, **(dataset_kwargs or {}))
    train = target.train
    train_indices, val_indices = sample_and_split(
        train.labels, train.groups, sampling_rate, val_fraction, seed
    )
    augment_mode = resolve_augment(augment, image_size)
    cache_size = image_size if augment_mode != "resized_crop" else round(image_size * 8 / 7)

    # Model: source weights, new head, layer cut.
    backbone = build_backbone(
        model,
        len(target.classes),
        weights=weights,
        granularity=granularity,
        seed=seed,
        image_size=image_size,
        model_kwargs=model_kwargs,
        layers=layers,
        mean=mean,
        std=std,
    )
    if backbone.in_channels != target.channels:
        raise ValueError(
            f"model {model if isinstance(model, str) else type(model).__name__!r} takes "
            f"{backbone.in_channels}-channel images but dataset {dataset!r} has {target.channels}"
            + (
                f" (an image folder decodes as {backbone.in_channels}-channel with "
                f"dataset_kwargs={{'channels': {backbone.in_channels}}})"
                if dataset == "imagefolder" and backbone.in_channels in (1, 3)
                else ""
            )
        )
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    network = backbone.model.to(device, memory_format=memory_format)

    # What feeds the data to the model: augmentation with the network's normalisation.
    augmenter = BatchAugment(
        augment_mode, image_size, backbone.mean, backbone.std, target.allow_flip, device, channels_last
    )
    stream = TrainingStream(
        place_cache(train.decoder.decode(train_indices, cache_size), device),
        torch.as_tensor(train.labels[train_indices], device=device),
        augmenter,
        batch_size,
        device,
        seed,
    )
    held_out = HeldOutSplits(target, val_indices, cache_size, augmenter, device, amp_dtype, eval_batch_size)
    return Assembly(
        target,
        train_indices,
        val_indices,
        cache_size,
        network,
        backbone.layers,
        backbone.layer_names,
        augmenter,
        stream,
        held_out,
    )
