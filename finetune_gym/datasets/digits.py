"""scikit-learn's bundled handwritten digits: the built-in offline dataset.

1,797 real 8x8 grey-scale digits ship inside scikit-learn, so the default
environment runs anywhere with no download. A fixed, stratified 75/25 split
(seed 0, independent of the environment's seed) makes train and test stable
across runs; ``digit_classes`` picks which digits form the task, so the package
can pretrain its source network on 0-4 and fine-tune on 5-9.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .base import ArrayDecoder, ImageDataset, Split

SOURCE_DIGITS = (0, 1, 2, 3, 4)
TARGET_DIGITS = (5, 6, 7, 8, 9)
TEST_SHARE = 0.25


def load_digits(
    root: str | Path | None = None, download: bool = False, digit_classes: Sequence[int] = TARGET_DIGITS
) -> ImageDataset:
    """Digits ``digit_classes`` relabelled 0..k-1 (``root`` and ``download`` are unused)."""
    from sklearn.datasets import load_digits as sklearn_digits

    digit_classes = [int(d) for d in digit_classes]
    if (
        not digit_classes
        or len(set(digit_classes)) != len(digit_classes)
        or not set(digit_classes) <= set(range(10))
    ):
        raise ValueError(f"digit_classes must be distinct digits 0-9, got {digit_classes}")
    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    target = bunch.target.astype(np.int64)
    rng = np.random.default_rng(0)
    is_test = np.zeros(len(target), dtype=bool)
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(target == digit))
        is_test[members[: round(TEST_SHARE * len(members))]] = True
    relabel = {d: i for i, d in enumerate(digit_classes)}
    splits = {}
    for test in (False, True):
        keep = np.flatnonzero(np.isin(target, digit_classes) & (is_test == test))
        splits[test] = Split(
            labels=np.asarray([relabel[d] for d in target[keep]], dtype=np.int64),
            decoder=ArrayDecoder(torch.from_numpy(images[keep])),
        )
    return ImageDataset(
        "digits", [str(d) for d in digit_classes], splits[False], splits[True], channels=1, allow_flip=False
    )
