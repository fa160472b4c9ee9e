"""Low-data subsets and validation splits that respect classes and groups.

Both work on whole groups (GTSRB tracks: ~30 near-identical frames of one sign):
a group split across sample and validation would leak the validation images
into training and inflate validation accuracy.
"""

from __future__ import annotations

import numpy as np


def check_sampling_rate(rate: float) -> float:
    rate = float(rate)
    if not (0.0 < rate <= 1.0):
        raise ValueError(
            f"sampling_rate must be in (0, 1], the fraction of the training set kept; got {rate}"
        )
    return rate


def check_val_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not (0.0 <= fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), the share held out for validation; got {fraction}")
    return fraction


def _class_groups(labels: np.ndarray, groups: np.ndarray | None, cls: int) -> list[np.ndarray]:
    """Indices of class ``cls``, one array per group, in a fixed order."""
    members = np.flatnonzero(labels == cls)
    if groups is None:
        return [members[i : i + 1] for i in range(len(members))]
    keys = groups[members]
    order = np.argsort(keys, kind="stable")
    members, keys = members[order], keys[order]
    cuts = np.flatnonzero(np.diff(keys)) + 1
    return np.split(members, cuts)


def sample_per_class(
    labels: np.ndarray, groups: np.ndarray | None, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Keep about ``rate`` of each class, by whole groups, and at least one group per class."""
    rate = check_sampling_rate(rate)
    if rate == 1.0:
        return np.arange(len(labels))
    kept: list[np.ndarray] = []
    for cls in np.unique(labels):
        class_groups = _class_groups(labels, groups, cls)
        target = max(1, round(rate * sum(len(g) for g in class_groups)))
        count = 0
        for g in rng.permutation(len(class_groups)):
            if count >= target:
                break
            kept.append(class_groups[g])
            count += len(class_groups[g])
    return np.sort(np.concatenate(kept))


def split_validation(
    indices: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    fraction: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (train, val) per class by whole groups.

    Each class sends ``fraction`` of its groups to validation, rounded
    stochastically so the expected share is exact even with 2-5 groups per
    class, and always keeps at least one group for training.
    """
    fraction = check_val_fraction(fraction)
    if fraction == 0.0:
        return np.sort(indices), np.empty(0, dtype=np.int64)
    sub_labels = labels[indices]
    sub_groups = None if groups is None else groups[indices]
    train, val = [], []
    for cls in np.unique(sub_labels):
        class_groups = [indices[g] for g in _class_groups(sub_labels, sub_groups, cls)]
        order = rng.permutation(len(class_groups))
        n_val = min(int(np.floor(fraction * len(class_groups) + rng.random())), len(class_groups) - 1)
        val += [class_groups[g] for g in order[:n_val]]
        train += [class_groups[g] for g in order[n_val:]]
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(train)), val_idx


def sample_and_split(
    labels: np.ndarray, groups: np.ndarray | None, rate: float, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The low-data training sample and its validation hold-out, both drawn from ``seed``.
    Training keeps at least 2 images (a batch of one breaks BatchNorm)."""
    rng = np.random.default_rng(seed)
    train, val = split_validation(
        sample_per_class(labels, groups, rate, rng), labels, groups, val_fraction, rng
    )
    if len(train) < 2:
        raise ValueError("the sampled training set has fewer than 2 images: raise sampling_rate")
    return train, val
