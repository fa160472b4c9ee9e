"""What every target dataset provides: listed splits that are decoded only where sampled.

Listing (labels and groups) is separated from decoding (pixels) so that a 15%
sample of a large training set decodes 15% of its images, and the test split is
decoded only when first evaluated.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where the user said; the message says how to get them."""


class Decoder(Protocol):
    def decode(self, indices: np.ndarray, size: int) -> torch.Tensor:
        """uint8 images ``(n, C, size, size)``: shorter side resized to ``size``, centre-cropped."""
        ...


@dataclass(frozen=True)
class Split:
    """One split, listed: labels, optional groups (images that must stay together), a decoder."""

    labels: np.ndarray
    decoder: Decoder
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class ImageDataset:
    """A target dataset: class names, train and test splits, and how it may be augmented."""

    name: str
    classes: list[str]
    train: Split
    test: Split
    channels: int = 3
    allow_flip: bool = True

    def __post_init__(self) -> None:
        counts = np.bincount(self.train.labels, minlength=len(self.classes))
        empty = [self.classes[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise ValueError(
                f"dataset {self.name!r} has classes without training images: {empty[:10]}"
                f"{' ...' if len(empty) > 10 else ''}; remove those classes or add images"
            )


def fit_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and centre-crop a square (a no-op when already there)."""
    if tuple(image.shape[-2:]) != (size, size):
        image = TF.resize(image, size, antialias=True)
        image = TF.center_crop(image, [size, size])
    return image


class _FileImages(Dataset):
    def __init__(self, paths: Sequence[str], size: int, mode: str) -> None:
        self.paths, self.size, self.mode = paths, size, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as image:
            tensor = TF.pil_to_tensor(to_8bit(image).convert(self.mode))
        return fit_square(tensor, self.size)


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale (PNG, TIFF) scaled to 8 bits; other images as they are.

    PIL's ``convert("L")`` clips 16-bit values at 255 instead of scaling them, so a 16-bit
    scan would decode almost white.
    """
    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8))  # mode L
    return image


class FileDecoder:
    """Decodes image files with PIL, in parallel worker processes for large selections."""

    def __init__(self, paths: Sequence[str], channels: int = 3) -> None:
        self.paths = list(paths)
        self.mode = "RGB" if channels == 3 else "L"

    def decode(self, indices: np.ndarray, size: int) -> torch.Tensor:
        files = _FileImages([self.paths[i] for i in indices], size, self.mode)
        workers = min(8, os.cpu_count() or 1) if len(files) > 512 else 0
        if multiprocessing.current_process().daemon:
            # A daemonic process may not start children (SB3's SubprocVecEnv runs each environment
            # in one, as multiprocessing.Pool does its workers): decode here, in this process.
            workers = 0
        loader = DataLoader(files, batch_size=256, num_workers=workers)
        batches = list(loader)
        if not batches:
            return torch.empty(0, len(self.mode), size, size, dtype=torch.uint8)
        return torch.cat(batches)


class ArrayDecoder:
    """Images already in memory as a uint8 ``(N, C, H, W)`` tensor."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("ArrayDecoder needs a uint8 tensor of shape (N, C, H, W)")
        self.images = images

    def decode(self, indices: np.ndarray, size: int) -> torch.Tensor:
        return fit_square(self.images[torch.as_tensor(indices, dtype=torch.long)], size)
