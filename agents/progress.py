"""A progress bar over the whole run: steps, with episode, epoch, mean reward and accuracy.

SB3's ``progress_bar=True`` counts timesteps only and does not exist for the
non-learning baselines; this bar listens to the run recorder, so every agent
gets the same one.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


class RunProgress:
    def __init__(self, total_steps: int, initial: int = 0, disable: bool = False) -> None:
        self.bar = tqdm(total=total_steps, initial=initial, unit="step", disable=disable, dynamic_ncols=True)
        self.rewards: list[float] = []
        self.postfix: dict[str, Any] = {}

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        if event == "step":
            self.rewards.append(payload["reward"])
            self.postfix.update(ep=payload["episode"], epoch=payload["epoch"])
            if payload["skipped_updates"]:
                self.postfix["skipped"] = payload["skipped_updates"]
            self.bar.update(1)
            if len(self.rewards) % 10 == 0:
                self.postfix["reward"] = f"{sum(self.rewards[-50:]) / len(self.rewards[-50:]):.3f}"
                self.bar.set_postfix(self.postfix, refresh=False)
        elif event == "epoch":
            self.postfix["train_acc"] = f"{payload['train_accuracy']:.3f}"
            self.bar.set_postfix(self.postfix)
        elif event == "episode" and payload.get("val_accuracy") is not None:
            self.postfix["val_acc"] = f"{payload['val_accuracy']:.3f}"
            self.bar.set_postfix(self.postfix)

    def close(self) -> None:
        self.bar.close()
