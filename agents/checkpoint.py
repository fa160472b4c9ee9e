"""Checkpoints: after every epoch a run saves all it needs to continue exactly, atomically.

A checkpoint holds the agent's learned state and rollout position (or a fixed policy's acting
loop), the normalisation statistics, the environment (source and target weights, Adam's state,
data order, counters), the run's log so far, its clocks, the environment's thread count and
every RNG state. On the CPU a resumed run ends with the same weights, bit for bit, as an
uninterrupted one. The file loads with ``weights_only=True`` (:mod:`finetune_gym.agents.safe_state`): a
crafted checkpoint cannot run code.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from finetune_gym.storage import UnreadableFile, atomic_torch_save, load_tensors

from .baselines import Baseline
from .config import RunConfig
from .recording import RunState
from .registry import Agent
from .rundir import RunDirectoryError
from .safe_state import (
    learner_state,
    load_learner_state,
    load_normalisation_state,
    normalisation_state,
    plain,
    unplain,
)
from .sb3_internals import forget_reset_seeds
from .timing import Timer

FORMAT = "finetune-gym-checkpoint-2"


class Checkpointer:
    """Saves a run's checkpoint to ``path``, writing on a background thread, one at a time.

    The snapshot (CPU copies of every tensor) is taken synchronously, so it is consistent; only
    serialising and writing it overlaps with the next epoch. For ResNet-50 a checkpoint holds
    ~400 MB (target, source, Adam's two moments), seconds of disk writing that would otherwise
    stall every epoch. Each file is written atomically, so a kill mid-write leaves the previous
    checkpoint.
    """

    def __init__(
        self,
        path: Path,
        config: RunConfig,
        state: RunState,
        timer: Timer,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        """``config`` is written into every checkpoint, so that ``--resume`` refuses one that another
        run wrote (a file copied between run folders). ``on_written`` is called (on the writer
        thread) once a checkpoint is on disk: the run an ``--overwrite`` replaced may go then
        (:meth:`RunDirectory.drop_replaced`)."""
        self.path, self.state, self.timer = path, state, timer
        self.config = json.dumps(config.to_json(), sort_keys=True)
        self.on_written = on_written
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future | None = None
        self.saved = 0  # checkpoints this process has on disk (a failed write does not count)

    def save(self, agent: Agent, venv: VecNormalize, steps: int, loop: dict[str, Any] | None = None) -> None:
        """Snapshot the run after ``steps`` steps; ``loop`` is a fixed policy's acting loop (None
        for a learning agent, whose rollout position is saved instead). Its time is counted."""
        started = time.perf_counter()
        payload: dict[str, Any] = {
            "format": FORMAT,
            "config": self.config,
            "steps": steps,
            "threads": self.state.recorder.env_threads,
            "timing": self.timer.get_state(),
            "recorder": plain(self.state.get_state()),
            "vecnormalize": normalisation_state(venv),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": plain(np.random.get_state()),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }
        if loop is None:  # a learning agent: its weights, optimizer, and where its rollout stands
            payload["learner"] = learner_state(agent)
        else:  # a fixed policy: the acting loop's position (observation, recurrent state) and its RNG
            payload["loop"] = plain(loop)  # copies: the loop keeps stepping while the writer saves
            payload["baseline_rng"] = agent.get_rng_state() if isinstance(agent, Baseline) else None
        self.wait()
        self._pending = self._pool.submit(self._write, payload)
        self.timer.checkpoints_s += time.perf_counter() - started

    def _write(self, payload: dict[str, Any]) -> None:
        atomic_torch_save(payload, self.path)
        self.saved += 1  # read only after wait(): the writer is done
        if self.on_written is not None:
            self.on_written()

    def wait(self) -> None:
        """Block until the last checkpoint is on disk (re-raising its error, if any)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded without unpickling any object (nothing in it can run code)."""
    try:
        payload = load_tensors(path)
    except UnreadableFile as error:
        raise RunDirectoryError(f"checkpoint {error}; start the run again with --overwrite") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RunDirectoryError(
            f"{str(path)!r} is not a checkpoint of this version of finetune-gym; "
            "start the run again with --overwrite"
        )
    return payload


def check_written_by(payload: dict[str, Any], path: Path, config: RunConfig) -> None:
    """A checkpoint continues only the run that wrote it: one copied from another run folder
    (another algorithm, seed or setting) would load into the wrong agent and fail, or worse
    continue, far into the run. Checkpoints written before the configuration was recorded pass."""
    if "config" not in payload:
        return
    try:
        writer = RunConfig.from_json(json.loads(payload["config"]))
    except (TypeError, ValueError) as error:
        raise RunDirectoryError(f"{str(path)!r} records an unreadable configuration ({error})") from error
    differences = writer.differences(config)
    if differences:
        raise RunDirectoryError(
            f"{str(path)!r} does not match the run's configuration: {'; '.join(differences)} (the "
            "checkpoint's run -> config.json): it was written by another run, or config.json was "
            "edited. Put back the run's own files, or start it again with --overwrite"
        )


def load_checkpoint(
    payload: dict[str, Any], path: Path, agent: Agent, venv: VecNormalize, state: RunState, timer: Timer
) -> dict[str, Any] | None:
    """Restore a run saved by :class:`Checkpointer` into the freshly built agent and environment
    of the same configuration; returns a fixed policy's acting loop (None for a learning agent)."""
    state.recorder.env_threads = payload["threads"]  # the same reductions, so the same numbers
    try:
        for env in venv.venv.envs:
            env.reset()  # marks the episode started in every wrapper; set_state then replaces it
        state.set_state(unplain(payload["recorder"]))
        load_normalisation_state(venv, payload["vecnormalize"])
        if "learner" in payload:
            load_learner_state(agent, payload["learner"])
        elif isinstance(agent, Baseline):
            agent.set_rng_state(payload["baseline_rng"])
    except (KeyError, ValueError, RuntimeError, TypeError) as error:
        raise RunDirectoryError(
            f"{str(path)!r} does not match the run's configuration ({type(error).__name__}: "
            f"{str(error)[:160]}); start the run again with --overwrite"
        ) from error
    timer.resume(payload["timing"])
    forget_reset_seeds(venv.venv)  # the first reset's seed was used long ago
    # Last: building an SB3 agent seeds the global generators.
    rng = payload["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(unplain(rng["numpy"]))
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return None if "loop" not in payload else unplain(payload["loop"])


class EpochCheckpoint(BaseCallback):
    """Saves a checkpoint at the start of each rollout, i.e. right after each epoch's update."""

    def __init__(self, checkpointer: Checkpointer, last_saved: int) -> None:
        super().__init__()
        self.checkpointer, self.last_saved = checkpointer, last_saved

    def _on_rollout_start(self) -> None:
        if self.model.num_timesteps > self.last_saved:
            self.checkpointer.save(self.model, self.model.get_env(), self.model.num_timesteps)
            self.last_saved = self.model.num_timesteps

    def _on_step(self) -> bool:
        return True
