"""Checkpoints: after every epoch a run saves all it needs to continue exactly, atomically.

A checkpoint holds the agent and its rollout position (or a fixed policy's acting loop),
the normalisation statistics, the environment (source and target weights, Adam's state,
data order, counters), the run's log so far, its clocks and every RNG state. On the CPU
a resumed run ends with the same weights, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import io
import pickle
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from finetune_gym.storage import atomic_torch_save

from .baselines import Baseline
from .recording import RunRecorder
from .registry import LEARNERS, Agent
from .timing import Timer

# What SB3 keeps between rollouts outside the saved model: where the rollout stands.
_LEARNER_ATTRS = (
    "_last_obs",
    "_last_episode_starts",
    "_last_original_obs",
    "num_timesteps",
    "_n_updates",
    "_episode_num",
    "_last_lstm_states",
)


class Checkpointer:
    """Saves a run's checkpoint to ``path``, writing on a background thread, one at a time.

    The snapshot (CPU copies of every tensor, the agent's bytes) is taken synchronously, so it
    is consistent; only serialising and writing it overlaps with the next epoch. For ResNet-50
    a checkpoint holds ~400 MB (target, source, Adam's two moments), seconds of disk writing
    that would otherwise stall every epoch. Each file is written atomically, so a kill
    mid-write leaves the previous checkpoint.
    """

    def __init__(self, path: Path, recorder: RunRecorder, timer: Timer) -> None:
        self.path, self.recorder, self.timer = path, recorder, timer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future | None = None

    def save(self, agent: Agent, venv: VecNormalize, steps: int, loop: dict[str, Any] | None = None) -> None:
        """Snapshot the run after ``steps`` steps; ``loop`` is a fixed policy's acting loop (None
        for a learning agent, whose rollout position is saved instead). Its time is counted."""
        started = time.perf_counter()
        payload: dict[str, Any] = {
            "steps": steps,
            "timing": self.timer.get_state(),
            "recorder": self.recorder.get_state(),
            "vecnormalize": pickle.dumps(venv),  # VecNormalize pickles its statistics, not the envs under it
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }
        if loop is None:  # a learning agent: the whole algorithm, and where its rollout stands
            buffer = io.BytesIO()
            agent.save(buffer)
            payload["agent_zip"] = buffer.getvalue()
            payload["agent_attrs"] = {a: getattr(agent, a, None) for a in _LEARNER_ATTRS}
        else:  # a fixed policy: the acting loop's position (observation, recurrent state) and its RNG
            payload["loop"] = dict(loop)  # the loop keeps stepping while the writer thread pickles
            payload["baseline_rng"] = agent.get_rng_state() if isinstance(agent, Baseline) else None
        self.wait()
        self._pending = self._pool.submit(atomic_torch_save, payload, self.path)
        self.timer.checkpoints_s += time.perf_counter() - started

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


def load_checkpoint(
    path: Path, algo: str, agent: Agent, venv: VecNormalize, recorder: RunRecorder, timer: Timer
) -> tuple[Agent, VecNormalize, dict[str, Any]]:
    """Restore a run saved by :class:`Checkpointer` into freshly built agent and environment;
    returns them and the payload (``steps``, and ``loop`` for a fixed policy)."""
    payload = torch.load(path, map_location="cpu", weights_only=False)  # our own file: pickled SB3 objects
    for env in venv.venv.envs:
        env.reset()  # marks the episode started in every wrapper; set_state then replaces it
    recorder.set_state(payload["recorder"])
    timer.resume(payload["timing"])
    venv = _restored_normalisation(payload["vecnormalize"], venv)
    if "agent_zip" in payload:
        agent = LEARNERS[algo].load(io.BytesIO(payload["agent_zip"]), env=venv, device="cpu")
        for attr, value in payload["agent_attrs"].items():
            setattr(agent, attr, value)
    elif isinstance(agent, Baseline):
        agent.set_rng_state(payload["baseline_rng"])
    venv.venv._reset_seeds()  # the first reset's seed was used long ago
    # Last: loading an SB3 agent reseeds the global generators.
    rng = payload["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return agent, venv, payload


def _restored_normalisation(pickled: bytes, venv: VecNormalize) -> VecNormalize:
    saved: VecNormalize = pickle.loads(pickled)
    saved.set_venv(venv.venv)
    return saved


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
