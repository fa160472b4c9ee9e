"""A network of a user's own, named by import path in tests ("tiny_models:small_cnn")."""

from __future__ import annotations

from torch import nn


def small_cnn(num_classes: int, in_channels: int = 3, width: int = 8, dropout: float = 0.2) -> nn.Module:
    """Two conv blocks and a head, with dropout: the smallest network a user would bring."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
        nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU()),
        nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, num_classes)
        ),
    )


NOT_A_FACTORY = 3
