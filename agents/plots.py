"""The run's PNG plots: learning rate by layer and step, accuracy over epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def lr_heatmap(schedule: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Heatmap of the learning rate each layer got, by step (short runs) or as each epoch's mean
    (long runs, where steps would be a barcode); a log colour scale where rates span decades;
    epochs marked with thin lines, episodes with thick ones."""
    rates, names = schedule["learning_rates"], [str(n) for n in schedule["layer_names"]]
    episode, epoch = schedule["episode"], schedule["epoch"]
    per_epoch = len(rates) > 200
    if per_epoch:  # one column per (episode, epoch), in run order
        keys = episode * (epoch.max(initial=0) + 1) + epoch
        columns = np.unique(keys)
        rates = np.stack([rates[keys == k].mean(axis=0) for k in columns]) if len(columns) else rates
        episode = columns // (schedule["epoch"].max(initial=0) + 1)
        epoch_edges = np.arange(len(columns) - 1) + 0.5
    else:
        epoch_edges = np.flatnonzero(np.diff(epoch) != 0) + 0.5
    positive = rates[rates > 0]
    norm = None
    if positive.size and positive.max() / positive.min() > 10:
        from matplotlib.colors import LogNorm

        norm = LogNorm(vmin=positive.min(), vmax=positive.max())
    fig, ax = plt.subplots(
        figsize=(max(6.0, min(16.0, rates.shape[0] / 40)), max(3.0, 0.25 * len(names) + 1.5))
    )
    image = ax.imshow(
        (np.where(rates > 0, rates, np.nan) if norm else rates).T,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        origin="upper",
        norm=norm,
    )
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("epoch (mean rate over its steps)" if per_epoch else "step")
    if len(epoch_edges) <= 200:
        for boundary in epoch_edges:
            ax.axvline(boundary, color="white", linewidth=0.3, alpha=0.5)
    for boundary in np.flatnonzero(np.diff(episode)) + 0.5:
        ax.axvline(boundary, color="white", linewidth=1.2)
    fig.colorbar(image, ax=ax, label="learning rate" + (" (log scale; 0 blank)" if norm else ""))
    ax.set_title(title or "learning rate by layer (thin lines: epochs, thick: episodes)", fontsize=9)
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
