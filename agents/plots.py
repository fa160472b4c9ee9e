"""The run's PNG plots: learning rate by layer and step, accuracy over epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def lr_heatmap(schedule: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Heatmap of the learning rate each layer got at each step, episodes marked."""
    rates, names = schedule["learning_rates"], [str(n) for n in schedule["layer_names"]]
    fig, ax = plt.subplots(
        figsize=(max(6.0, min(16.0, rates.shape[0] / 40)), max(3.0, 0.25 * len(names) + 1.5))
    )
    image = ax.imshow(rates.T, aspect="auto", interpolation="nearest", cmap="viridis", origin="upper")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("step")
    for boundary in np.flatnonzero(np.diff(schedule["episode"])) + 0.5:
        ax.axvline(boundary, color="white", linewidth=0.8)
    fig.colorbar(image, ax=ax, label="learning rate")
    ax.set_title(title or "learning rate by layer and step (white lines: episodes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def accuracy_curves(
    epochs: list[dict[str, Any]],
    episodes: list[dict[str, Any]],
    path: str | Path,
    epochs_per_episode: int,
    title: str = "",
) -> Path:
    """Training accuracy per epoch and validation accuracy at the end of each episode."""
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [e["global_epoch"] + 1 for e in epochs]
    ax.plot(x, [e["train_accuracy"] for e in epochs], marker=".", label="training (epoch)")
    val = [(i + 1) * epochs_per_episode for i, e in enumerate(episodes) if e.get("val_accuracy") is not None]
    ax.plot(
        val,
        [e["val_accuracy"] for e in episodes if e.get("val_accuracy") is not None],
        marker="o",
        label="validation (end of episode)",
    )
    for i in range(1, len(episodes)):
        ax.axvline(i * epochs_per_episode + 0.5, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    ax.set_title(title or "accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
