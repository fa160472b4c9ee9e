"""TensorBoard logging of a run (``--tensorboard DIR``), with or without W&B.

The environment's metrics (per step, epoch and episode, for every agent, baselines included)
go through a listener on the run recorder; a learning agent's own statistics (policy and value
loss, entropy, ...) through SB3's ``TensorBoardOutputFormat``. Both write under ``DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch's writer needs the tensorboard package
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install tensorboard (or the [tensorboard] extra)"
        ) from error
    return SummaryWriter(str(log_dir))


class TensorBoardListener:
    """Writes the run recorder's events as TensorBoard scalars, indexed by the run's step."""

    def __init__(self, log_dir: str | Path, layer_names: list[str]) -> None:
        self.log_dir = Path(log_dir)
        self.writer = _writer(self.log_dir / "env")
        self.layer_names = layer_names

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        step = int(payload["step"])
        if event == "step":
            rates = np.asarray(payload["learning_rates"], dtype=np.float64)
            self.writer.add_scalar("step/reward", payload["reward"], step)
            self.writer.add_scalar("step/loss", payload["loss"], step)
            self.writer.add_scalar("lr/mean", float(rates.mean()), step)
            for name, rate in zip(self.layer_names, rates, strict=True):
                self.writer.add_scalar(f"lr/{name}", float(rate), step)
        elif event == "epoch":
            self.writer.add_scalar("epoch/train_accuracy", payload["train_accuracy"], step)
        elif event == "episode":
            self.writer.add_scalar("episode/mean_reward", payload["mean_reward"], step)
            if payload.get("val_accuracy") is not None:
                self.writer.add_scalar("episode/val_accuracy", payload["val_accuracy"], step)

    def agent_output(self):
        """SB3's TensorBoard output for the agent's own statistics, in the same folder."""
        from stable_baselines3.common.logger import TensorBoardOutputFormat

        return TensorBoardOutputFormat(str(self.log_dir / "agent"))

    def close(self) -> None:
        self.writer.close()
