"""Batched augmentation on uint8 image tensors, on whatever device holds them.

torchvision.transforms.v2 draws one set of random parameters per call, so a
batch tensor gets the same crop for every image, and per-image calls are Python
loops over images. These transforms draw per-image parameters and apply them in
a few tensor ops (index gathers for padded crops, one ``grid_sample`` for
random-resized crops), so augmentation never becomes the step's bottleneck.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .arguments import check_choice

AUGMENTS = ("auto", "pad_crop", "resized_crop", "none")


def resolve_augment(augment: str, image_size: int) -> str:
    check_choice("augment", augment, AUGMENTS)
    if augment == "auto":
        return "pad_crop" if image_size <= 64 else "resized_crop"
    return augment


class BatchAugment:
    """uint8 ``(B, C, S, S)`` cache images -> normalised float ``(B, C, size, size)`` inputs.

    Training: ``pad_crop`` (pad by ``size // 8`` with zeros, random crop; CIFAR
    style) or ``resized_crop`` (area 8-100%, aspect 3/4-4/3, as ImageNet
    fine-tuning does), then a random horizontal flip if ``flip``. Evaluation:
    the centre ``size`` crop of the cache image.
    """

    def __init__(
        self, mode: str, size: int, mean, std, flip: bool, device: torch.device, channels_last: bool = False
    ) -> None:
        self.mode, self.size, self.flip = mode, size, flip
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        offset = (images.shape[-1] - self.size) // 2
        if offset:
            images = images[..., offset : offset + self.size, offset : offset + self.size]
        return self._normalise(images)

    def train(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.mode == "pad_crop":
            x = self._normalise(self._pad_crop(images, generator))
        elif self.mode == "resized_crop":
            x = self._resized_crop(self._normalise(images), generator)
        else:
            x = self.eval(images)
        if self.flip:
            mirror = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
            x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)
        return x

    def _pad_crop(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, size, pad = images.shape[0], self.size, max(1, self.size // 8)
        padded = F.pad(images, (pad,) * 4)
        extra = padded.shape[-1] - size
        offsets = torch.randint(0, extra + 1, (2, b), device=images.device, generator=generator)
        steps = torch.arange(size, device=images.device)
        rows = (offsets[0, :, None] + steps)[:, None, :, None]
        cols = (offsets[1, :, None] + steps)[:, None, None, :]
        batch = torch.arange(b, device=images.device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        return padded[batch, channel, rows, cols]

    def _resized_crop(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, device = x.shape[0], x.device
        area = torch.empty(b, device=device).uniform_(0.08, 1.0, generator=generator)
        log_ratio = torch.empty(b, device=device).uniform_(
            math.log(3 / 4), math.log(4 / 3), generator=generator
        )
        ratio = log_ratio.exp()
        # Width and height as fractions of the (square) source, clamped inside it.
        w = (area * ratio).sqrt().clamp(max=1.0)
        h = (area / ratio).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, device=device, generator=generator) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, device=device, generator=generator) * 2 - 1) * (1 - h)
        theta = torch.zeros(b, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
        grid = F.affine_grid(theta, [b, x.shape[1], self.size, self.size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return out.contiguous(memory_format=self.memory_format)
