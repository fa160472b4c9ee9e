"""What a run keeps of its environment: learning-rate log, accuracies, and the final model.

The recorder sits directly under the vectorised environment, so it sees each
episode's last step before SB3's automatic reset restores the target from the
source weights: that is where the final fine-tuned model is captured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from .threads import torch_threads

Listener = Callable[[str, dict[str, Any]], None]


class TrainingDiverged(RuntimeError):
    """The loss stayed non-finite for too many updates in a row: the run cannot recover."""


class RunRecorder(gym.Wrapper):
    """Logs every step and captures the model at the end of episode ``final_episode``.

    Counts updates the environment skipped for a non-finite loss, and stops the run with
    :class:`TrainingDiverged` after ``max_skipped_in_a_row`` of them in a row (the weights
    that produced them are unchanged by a skip, so later batches would fail alike).

    Events sent to listeners: ``("step", ...)`` every step, ``("epoch", ...)``
    at the end of each epoch, ``("episode", ...)`` at the end of each episode.
    """

    def __init__(
        self,
        env: gym.Env,
        final_episode: int,
        max_skipped_in_a_row: int = 10,
        env_threads: int | None = None,
    ) -> None:
        """``env_threads``: intra-op threads for the environment's steps and resets (None: the
        process's setting); a run sets it while the agent works on one (agents/threads.py)."""
        super().__init__(env)
        self.final_episode = int(final_episode)
        self.max_skipped_in_a_row = int(max_skipped_in_a_row)
        self.env_threads = env_threads
        self.skipped_updates = 0
        self.skipped_in_a_row = 0
        self.listeners: list[Listener] = []
        self.episode = 0
        self.global_step = 0
        self.learning_rates: list[np.ndarray] = []
        self.step_log: dict[str, list[float]] = {
            "reward": [],
            "loss": [],
            "episode": [],
            "epoch": [],
            "images": [],
        }
        self.epochs: list[dict[str, Any]] = []
        self.episodes: list[dict[str, Any]] = []
        self._episode_rewards: list[float] = []
        self.final: dict[str, Any] | None = None
        self.env_seconds = 0.0  # time inside the environment's steps and resets (kept across resumes)
        self.test_seconds = 0.0  # the final model's test evaluation

    @contextmanager
    def _environment_work(self, counter: str) -> Iterator[None]:
        """Run the block on the environment's threads and add its time to ``self.<counter>``
        (the environment syncs with the device once per step, so wall time is its time)."""
        started = time.perf_counter()
        try:
            with torch_threads(self.env_threads):
                yield
        finally:
            setattr(self, counter, getattr(self, counter) + time.perf_counter() - started)

    def reset(self, **kwargs):
        with self._environment_work("env_seconds"):  # the EMA update and the first forward
            return self.env.reset(**kwargs)

    def step(self, action):
        with self._environment_work("env_seconds"):
            observation, reward, terminated, truncated, info = self.env.step(action)
        base = self.env.unwrapped
        self.learning_rates.append(np.asarray(info["learning_rates"], dtype=np.float32))
        for key, value in (
            ("reward", reward),
            ("loss", info["loss"]),
            ("episode", self.episode),
            ("epoch", info["epoch"]),
            ("images", info["batch_size"]),
        ):
            self.step_log[key].append(float(value))
        self._episode_rewards.append(float(reward))
        self.global_step += 1
        if info["skipped_update"]:
            self.skipped_updates += 1
            self.skipped_in_a_row += 1
            if self.skipped_in_a_row >= self.max_skipped_in_a_row:
                rates = np.asarray(info["learning_rates"])
                raise TrainingDiverged(
                    f"{self.skipped_in_a_row} updates in a row were skipped at step {self.global_step}: the "
                    f"loss is not finite (learning rates {rates.min():.3g}-{rates.max():.3g} at the last "
                    "step). Lower the learning rates (lr_max, or the agent's rate) and start again"
                )
        else:
            self.skipped_in_a_row = 0
        self._emit(
            "step",
            {
                "step": self.global_step,
                "episode": self.episode,
                "epoch": info["epoch"],
                "reward": float(reward),
                "loss": float(info["loss"]),
                "learning_rates": info["learning_rates"],
                "skipped": info["skipped_update"],
                "skipped_updates": self.skipped_updates,
            },
        )
        if "epoch_train_accuracy" in info:
            record = {
                "step": self.global_step,
                "episode": self.episode,
                "epoch": info["epoch"],
                "global_epoch": len(self.epochs),
                "train_accuracy": info["epoch_train_accuracy"],
            }
            if terminated and "val_accuracy" in info:
                record["val_accuracy"] = info["val_accuracy"]
            self.epochs.append(record)
            self._emit("epoch", record)
        if terminated:
            record = {
                "step": self.global_step,
                "episode": self.episode,
                "mean_reward": float(np.mean(self._episode_rewards)),
                "val_accuracy": info.get("val_accuracy"),
            }
            if self.episode == self.final_episode:
                self.final = {
                    "state_dict": base.fine_tuned_state_dict(),
                    "val_accuracy": info.get("val_accuracy"),
                    "test_accuracy": self._timed_test(base),
                    "episode": self.episode,
                    "step": self.global_step,
                }
                record["test_accuracy"] = self.final["test_accuracy"]
            self.episodes.append(record)
            self._emit("episode", record)
            self.episode += 1
            self._episode_rewards = []
        return observation, reward, terminated, truncated, info

    def _timed_test(self, base) -> float:
        with self._environment_work("test_seconds"):
            return base.evaluate("test")

    def subscribe(self, listener: Listener) -> None:
        """Send every later event to ``listener`` (the progress bar, W&B, TensorBoard)."""
        self.listeners.append(listener)

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(event, payload)

    def lr_schedule(self) -> dict[str, np.ndarray]:
        """Arrays for ``lr_schedule.npz``: learning rate per step and layer, with step coordinates."""
        n_layers = self.env.unwrapped.n_layers
        rates = np.stack(self.learning_rates) if self.learning_rates else np.zeros((0, n_layers), np.float32)
        return {
            "learning_rates": rates,
            "episode": np.asarray(self.step_log["episode"], dtype=np.int64),
            "epoch": np.asarray(self.step_log["epoch"], dtype=np.int64),
            "reward": np.asarray(self.step_log["reward"], dtype=np.float32),
            "loss": np.asarray(self.step_log["loss"], dtype=np.float32),
            "layer_names": np.asarray(self.env.unwrapped.layer_names),
        }

    # -- checkpoints --------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return {
            "episode": self.episode,
            "global_step": self.global_step,
            "learning_rates": list(self.learning_rates),
            "step_log": {k: list(v) for k, v in self.step_log.items()},
            "epochs": list(self.epochs),
            "episodes": list(self.episodes),
            "episode_rewards": list(self._episode_rewards),
            "final": self.final,
            "env_seconds": self.env_seconds,
            "skipped": (self.skipped_updates, self.skipped_in_a_row),
            # The outermost wrapper below that saves state (the EMA wrapper, else the environment).
            "env": self.env.get_wrapper_attr("get_state")(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`. Reset the outermost wrapper first, so that order-enforcing
        wrappers (gymnasium's, SB3's Monitor) see a started episode; this then replaces it."""
        with torch_threads(self.env_threads):  # it recomputes the pending forward
            self.env.get_wrapper_attr("set_state")(state["env"])
        self.episode, self.global_step = state["episode"], state["global_step"]
        self.learning_rates = list(state["learning_rates"])
        self.step_log = {k: list(v) for k, v in state["step_log"].items()}
        self.epochs, self.episodes = list(state["epochs"]), list(state["episodes"])
        self._episode_rewards, self.final = list(state["episode_rewards"]), state["final"]
        self.env_seconds = state["env_seconds"]
        self.skipped_updates, self.skipped_in_a_row = state["skipped"]


@dataclass
class RunState:
    """What a checkpoint holds of the environment's side of a run, listed once: the recorder (its
    log, and through it the environment's own state) and, for an agent that reads per-layer
    tokens, the :class:`~finetune_gym.layerwise.LayerwiseView` above it (its running statistics)."""

    recorder: RunRecorder
    view: Any = None  # LayerwiseView | None

    def get_state(self) -> dict[str, Any]:
        return {**self.recorder.get_state(), "view": None if self.view is None else self.view.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`: the environment first, then the view (which reads it)."""
        self.recorder.set_state(state)
        if self.view is not None:
            self.view.set_state(state["view"])
