"""A run's progress: a bar over the whole run on a terminal, one line per episode otherwise.

SB3's ``progress_bar=True`` counts timesteps only and does not exist for the
non-learning baselines; this listens to the run recorder, so every agent gets the
same one. A bar written into a log file is kilobytes of carriage returns, so when
the output is not a terminal (or the bar is turned off) a run prints one line per
episode instead.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


class RunProgress:
    def __init__(
        self,
        total_steps: int,
        episodes: int,
        epochs_per_episode: int,
        initial: int = 0,
        bar: bool = True,
        lines: bool = True,
    ) -> None:
        """``bar``: a tqdm bar, where the output is a terminal; ``lines``: else one line per episode."""
        self.total, self.episodes, self.epochs = total_steps, episodes, epochs_per_episode
        interactive = bar and sys.stderr.isatty()
        self.bar = (
            tqdm(total=total_steps, initial=initial, unit="step", dynamic_ncols=True) if interactive else None
        )
        self.lines = lines and not interactive
        self.rewards: list[float] = []
        self.postfix: dict[str, Any] = {}

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        if event == "step":
            self.rewards.append(payload["reward"])
            self.postfix.update(
                ep=f"{payload['episode'] + 1}/{self.episodes}", epoch=f"{payload['epoch'] + 1}/{self.epochs}"
            )
            if payload["skipped_updates"]:
                self.postfix["skipped"] = payload["skipped_updates"]
            if self.bar is not None:
                self.bar.update(1)
                if len(self.rewards) % 10 == 0:
                    self.postfix["reward"] = f"{sum(self.rewards[-50:]) / len(self.rewards[-50:]):.3f}"
                    self.bar.set_postfix(self.postfix, refresh=False)
        elif event == "epoch":
            self.postfix["train_acc"] = f"{payload['train_accuracy']:.3f}"
            if self.bar is not None:
                self.bar.set_postfix(self.postfix)
        elif event == "episode":
            val = payload.get("val_accuracy")
            if val is not None:
                self.postfix["val_acc"] = f"{val:.3f}"
            if self.bar is not None:
                self.bar.set_postfix(self.postfix)
            elif self.lines:
                print(
                    f"episode {payload['episode'] + 1}/{self.episodes} (step {payload['step']}/{self.total}): "
                    f"mean reward {payload['mean_reward']:.4f}, train accuracy {self.postfix.get('train_acc', 'n/a')}, "
                    f"validation {'n/a' if val is None else f'{val:.4f}'}"
                    + (f", {self.postfix['skipped']} updates skipped" if "skipped" in self.postfix else ""),
                    flush=True,
                )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
