"""One training run: RL-Tune (or another agent) over episodes of fine-tuning, with checkpoints.

``run_training(config, run_dir)`` is what ``train.py`` calls. A run executes
``episodes x epochs_per_episode`` epochs of fine-tuning under the agent, the EMA
scheme between episodes, the agent learning online (once per epoch), then writes
the run directory: ``results.json``, ``final_model.pt``, ``agent/``,
``lr_schedule.npz`` and plots. After every epoch it saves ``checkpoint.pt``
(atomically) so ``resume=True`` continues exactly where a killed run stopped.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import finetune_gym  # noqa: F401  (registers the environment ids)
from finetune_gym.storage import atomic_torch_save

from . import plots
from .baselines import Baseline
from .progress import RunProgress
from .recording import RunRecorder
from .registry import (
    LEARNERS,
    Agent,
    baseline_env_overrides,
    canonical_name,
    is_learning,
    load_agent,
    make_agent,
    save_agent,
)
from .threads import AGENT_THREADS, torch_threads

CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"
CONFIG = "config.json"


@dataclass
class RunConfig:
    """Everything that defines a run; saved as ``config.json`` and reused by ``resume``."""

    env_id: str = "FineTune-Digits-v0"
    algo: str = "rl_tune"
    seed: int = 0
    episodes: int = 5
    epochs_per_episode: int = 10
    ema: float | None = 0.2
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # the method's name in tables (default: algo)
    replay_agent: str | None = None  # a saved agent directory: act with it, frozen, instead of training one
    wandb_mode: str = "disabled"
    wandb_project: str = "finetune-gym"
    wandb_entity: str | None = None
    wandb_group: str | None = None
    wandb_tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.algo = canonical_name(self.algo)
        if self.env_id not in finetune_gym.ENV_IDS:
            raise ValueError(
                f"unknown env id {self.env_id!r}: choose one of {', '.join(finetune_gym.ENV_IDS)}"
            )
        if self.episodes < 1 or self.epochs_per_episode < 1:
            raise ValueError("episodes and epochs_per_episode must be at least 1")
        if self.ema is not None and not (0.0 < self.ema <= 1.0):
            raise ValueError(f"ema must be in (0, 1] or None, got {self.ema}")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        return cls(**data)

    def full_env_kwargs(self) -> dict[str, Any]:
        """What the environment is built with: user arguments, the run's seed and epochs, and
        what a baseline needs (its exact learning-rate grid)."""
        kwargs = {**self.env_kwargs, "seed": self.seed, "epochs_per_episode": self.epochs_per_episode}
        kwargs.update(baseline_env_overrides(self.algo, **self.agent_kwargs))
        return kwargs


# -------------------------------------------------------------------------------- run directory


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (exists, or has nothing to resume)."""


def prepare_run_dir(run_dir: Path, config: RunConfig, resume: bool, overwrite: bool) -> RunConfig:
    """Create, clear or reopen ``run_dir``; on resume the saved configuration wins."""
    if resume and overwrite:
        raise RunDirectoryError("--resume and --overwrite exclude each other")
    if resume:
        if (run_dir / RESULTS).is_file():
            raise RunDirectoryError(f"{str(run_dir)!r} holds a finished run ({RESULTS}); nothing to resume")
        if not (run_dir / CHECKPOINT).is_file():
            raise RunDirectoryError(
                f"{str(run_dir)!r} has no {CHECKPOINT} to resume from; start it again with --overwrite"
            )
        return RunConfig.from_json(json.loads((run_dir / CONFIG).read_text()))
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirectoryError(
                f"run directory {str(run_dir)!r} already exists and is not empty: pass --resume to continue "
                "it, --overwrite to replace it, or choose another --run-dir"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(json.dumps(config.to_json(), indent=2))
    return config


# -------------------------------------------------------------------------------- environment


def build_env(config: RunConfig) -> tuple[VecNormalize, RunRecorder]:
    """VecNormalize(DummyVecEnv([Monitor(RunRecorder(gym.make(env_id)))])), observations only."""
    kwargs = config.full_env_kwargs()

    def make() -> gym.Env:
        env = gym.make(config.env_id, ema=config.ema, **kwargs)
        return Monitor(RunRecorder(env, final_episode=config.episodes - 1))

    dummy = DummyVecEnv([make])
    recorder = dummy.envs[0].env
    assert isinstance(recorder, RunRecorder)
    return VecNormalize(dummy, norm_obs=True, norm_reward=False), recorder


# -------------------------------------------------------------------------------- checkpoints

_LEARNER_ATTRS = (
    "_last_obs",
    "_last_episode_starts",
    "_last_original_obs",
    "num_timesteps",
    "_n_updates",
    "_episode_num",
    "_last_lstm_states",
)


class CheckpointWriter:
    """Writes checkpoints on a background thread, one at a time.

    The snapshot (CPU copies of every tensor, the agent's bytes) is taken synchronously, so it is
    consistent; only serialising and writing it overlaps with the next epoch. For ResNet-50 a
    checkpoint holds ~400 MB (target, source, Adam's two moments), seconds of disk writing that
    would otherwise stall every epoch. Each file is written atomically, so a kill mid-write leaves
    the previous checkpoint.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future | None = None

    def write(self, payload: dict[str, Any], path: Path) -> None:
        self.wait()
        self._pending = self._pool.submit(atomic_torch_save, payload, path)

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


def save_checkpoint(
    path: Path,
    agent: Agent,
    venv: VecNormalize,
    recorder: RunRecorder,
    steps: int,
    wall_time_s: float,
    writer: CheckpointWriter,
    timer: Timer,
    loop: dict[str, Any] | None = None,
) -> None:
    """Agent, its rollout position, environment, normalisation statistics, RNG states and where
    the run's time went so far, atomically."""
    payload: dict[str, Any] = {
        "steps": steps,
        "wall_time_s": wall_time_s,
        "timing": timer.get_state(),
        "recorder": recorder.get_state(),
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
    writer.write(payload, path)


def load_checkpoint(
    path: Path, config: RunConfig, agent: Agent, venv: VecNormalize, recorder: RunRecorder
) -> tuple[Agent, VecNormalize, dict[str, Any]]:
    """Restore a run saved by :func:`save_checkpoint` into freshly built agent and environment."""
    payload = torch.load(path, map_location="cpu", weights_only=False)  # our own file: pickled SB3 objects
    for env in venv.venv.envs:
        env.reset()  # marks the episode started in every wrapper; set_state then replaces it
    recorder.set_state(payload["recorder"])
    saved_norm: VecNormalize = pickle.loads(payload["vecnormalize"])
    saved_norm.set_venv(venv.venv)
    venv = saved_norm
    if "agent_zip" in payload:
        agent = LEARNERS[config.algo].load(io.BytesIO(payload["agent_zip"]), env=venv, device="cpu")
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


class Timer:
    """Where a run's time goes: the training loop, agent updates, checkpoints. A resumed run starts
    from the totals its checkpoint saved, so its timing covers the whole run (work redone after an
    interruption counts once, like ``wall_time_s``)."""

    def __init__(self, state: dict[str, float] | None = None) -> None:
        state = state or {}
        self.updates_s = state.get("updates_s", 0.0)
        self.checkpoints_s = state.get("checkpoints_s", 0.0)
        self._loop_before = state.get("loop_s", 0.0)
        self._loop_started: float | None = None

    def start_loop(self) -> None:
        self._loop_started = time.perf_counter()

    def loop_s(self) -> float:
        """The training loop's time: this process's since :meth:`start_loop`, plus earlier processes'."""
        running = 0.0 if self._loop_started is None else time.perf_counter() - self._loop_started
        return self._loop_before + running

    def get_state(self) -> dict[str, float]:
        # Saved before the checkpoint being written adds its own time: that much is left out.
        return {"loop_s": self.loop_s(), "updates_s": self.updates_s, "checkpoints_s": self.checkpoints_s}


class AgentUpdates(BaseCallback):
    """Times each agent update: from the end of a rollout to the start of the next, or the end."""

    def __init__(self, timer: Timer) -> None:
        super().__init__()
        self.timer, self._rollout_end = timer, None

    def _close(self) -> None:
        if self._rollout_end is not None:
            self.timer.updates_s += time.perf_counter() - self._rollout_end
            self._rollout_end = None

    def _on_rollout_end(self) -> None:
        self._rollout_end = time.perf_counter()

    def _on_rollout_start(self) -> None:
        self._close()

    def _on_training_end(self) -> None:
        self._close()

    def _on_step(self) -> bool:
        return True


class EpochCheckpoint(BaseCallback):
    """Saves a checkpoint at the start of each rollout, i.e. right after each epoch's update."""

    def __init__(
        self,
        path: Path,
        recorder: RunRecorder,
        last_saved: int,
        clock: Callable[[], float],
        timer: Timer,
        writer: CheckpointWriter,
    ) -> None:
        super().__init__()
        self.path, self.recorder, self.last_saved, self.clock = path, recorder, last_saved, clock
        self.timer, self.writer = timer, writer

    def _on_rollout_start(self) -> None:
        if self.model.num_timesteps > self.last_saved:
            started = time.perf_counter()
            save_checkpoint(
                self.path,
                self.model,
                self.model.get_env(),
                self.recorder,
                self.model.num_timesteps,
                self.clock(),
                self.writer,
                self.timer,
            )
            self.last_saved = self.model.num_timesteps
            self.timer.checkpoints_s += time.perf_counter() - started

    def _on_step(self) -> bool:
        return True


# -------------------------------------------------------------------------------- the run


def run_training(
    config: RunConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """Execute (or continue) a run and write its directory; returns the contents of ``results.json``."""
    run_dir = Path(run_dir)
    config = prepare_run_dir(run_dir, config, resume, overwrite)
    run_started = time.perf_counter()
    venv, recorder = build_env(config)
    base = recorder.env.unwrapped
    steps_per_epoch, total_steps = base.steps_per_epoch, base.episode_steps * config.episodes
    set_random_seed(config.seed)
    if config.replay_agent:
        agent, venv = _load_replayed(config.replay_agent, venv)
    else:
        agent = make_agent(config.algo, venv, seed=config.seed, **config.agent_kwargs)
    learning = is_learning(agent) and not config.replay_agent
    done_steps, elapsed_before = 0, 0.0
    loop: dict[str, Any] | None = None
    timer = Timer()
    if resume:
        agent, venv, payload = load_checkpoint(run_dir / CHECKPOINT, config, agent, venv, recorder)
        done_steps, loop = payload["steps"], payload.get("loop")
        elapsed_before = payload["wall_time_s"]
        timer = Timer(payload.get("timing"))  # absent from checkpoints written before it was saved
        if verbose:
            print(f"resuming {run_dir} at step {done_steps} of {total_steps}")
    else:
        venv.seed(config.seed)

    def clock() -> float:
        return elapsed_before + time.perf_counter() - run_started

    listeners = []
    bar = RunProgress(total_steps, initial=done_steps, disable=not progress)
    listeners.append(bar)
    wandb_run = _start_wandb(config, run_dir, base) if config.wandb_mode != "disabled" else None
    if wandb_run is not None:
        listeners.append(wandb_run)
    recorder.listeners = listeners

    writer = CheckpointWriter()
    recorder.env_threads = torch.get_num_threads()  # the environment's; the agent gets one
    timer.start_loop()
    try:
        with torch_threads(AGENT_THREADS):
            if learning:
                callbacks: list[BaseCallback] = [
                    AgentUpdates(timer),  # first: an update ends before the checkpoint starts
                    EpochCheckpoint(run_dir / CHECKPOINT, recorder, done_steps, clock, timer, writer),
                ]
                _learn(agent, total_steps - done_steps, callbacks, resume, wandb_run)
            else:

                def save(step: int, loop: dict[str, Any]) -> None:
                    saving = time.perf_counter()
                    save_checkpoint(
                        run_dir / CHECKPOINT, agent, venv, recorder, step, clock(), writer, timer, loop=loop
                    )
                    timer.checkpoints_s += time.perf_counter() - saving

                _act_fixed(agent, venv, loop, range(done_steps, total_steps), steps_per_epoch, save)
    except BaseException:
        bar.close()
        writer.close()
        if wandb_run is not None:
            wandb_run.abort()
        raise
    bar.close()
    loop_s = timer.loop_s()
    writer.close()  # the last checkpoint is complete before the outputs (and its removal)
    timing = {
        "loop_s": loop_s,
        "env_steps_s": recorder.env_seconds,  # steps and resets (EMA update, first forward)
        "agent_updates_s": timer.updates_s,
        "checkpoints_s": timer.checkpoints_s,
        "test_evaluation_s": recorder.test_seconds,
        # Policy inference plus the vectorised-env wrappers (VecNormalize, Monitor) and SB3's bookkeeping.
        "agent_acting_s": loop_s
        - recorder.env_seconds
        - recorder.test_seconds
        - timer.updates_s
        - timer.checkpoints_s,
        "resumed": resume,
        # Resumed runs carry their earlier processes' time (older code counted only the last one).
        "whole_run": True,
    }

    if recorder.final is None:
        raise RuntimeError("the run ended without capturing the final model: the last episode did not finish")
    results = _write_outputs(run_dir, config, agent, recorder, base, clock(), wandb_run, timing)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    venv.close()
    if verbose:
        print(
            f"run directory: {run_dir}\nfinal test accuracy: {results['final_test_accuracy']:.4f} "
            f"(validation {_fmt(results['final_val_accuracy'])}, {results['wall_time_s']:.1f} s)"
        )
    return results


def _learn(
    agent: Agent, steps: int, callbacks: list[BaseCallback], resume: bool, wandb_run: Any | None
) -> None:
    """A learning agent trains for ``steps`` more steps (SB3's loop), logging to W&B if asked."""
    if wandb_run is not None:
        from wandb.integration.sb3 import WandbCallback

        from .wandb_logging import WandbKVWriter

        agent.set_logger(Logger(folder=None, output_formats=[WandbKVWriter()]))
        callbacks = [*callbacks, WandbCallback(verbose=0)]
    agent.learn(steps, callback=CallbackList(callbacks), reset_num_timesteps=not resume)
    if wandb_run is not None:
        agent.logger.dump(agent.num_timesteps)  # SB3 dumps a rollout's stats at the next one


def _act_fixed(
    agent: Agent,
    venv: VecNormalize,
    loop: dict[str, Any] | None,
    steps: range,
    steps_per_epoch: int,
    save: Callable[[int, dict[str, Any]], None],
) -> None:
    """A fixed policy acts (a baseline, or a saved agent replayed deterministically); ``save`` is
    called after every epoch but the last with the step count and the loop's position."""
    if loop is None:
        loop = {"obs": venv.reset(), "state": None, "episode_start": np.ones(venv.num_envs, dtype=bool)}
    for step in steps:
        action, loop["state"] = agent.predict(
            loop["obs"], state=loop["state"], episode_start=loop["episode_start"], deterministic=True
        )
        loop["obs"], _, loop["episode_start"], _ = venv.step(action)
        if (step + 1) % steps_per_epoch == 0 and step + 1 < steps.stop:
            save(step + 1, loop)


def _load_replayed(agent_dir: str, venv: VecNormalize) -> tuple[Agent, VecNormalize]:
    """A saved agent for a fresh environment; its observation size must match (same backbone)."""
    try:
        agent, loaded = load_agent(agent_dir, venv.venv)
    except ValueError as error:
        raise ValueError(
            f"the agent in {agent_dir!r} cannot act in this environment ({error}); a policy moves only between "
            "environments with the same backbone, granularity and obs_features"
        ) from error
    if not isinstance(loaded, VecNormalize):  # a baseline: keep the run's (unused) normalisation wrapper
        return agent, venv
    return agent, loaded


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _start_wandb(config: RunConfig, run_dir: Path, base) -> Any:
    from .wandb_logging import WandbRun

    dataset = base.config.get("dataset")
    rate = base.config.get("sampling_rate")
    group = config.wandb_group or f"{config.env_id}/{dataset}/r{rate}/{config.algo}"
    return WandbRun(
        config.wandb_mode,
        run_dir,
        {**config.to_json(), "env_config": _jsonable(base.config)},
        project=config.wandb_project,
        entity=config.wandb_entity,
        group=group,
        tags=list(config.wandb_tags) + [config.env_id, str(dataset), config.algo],
        name=f"{config.algo}-{dataset}-r{rate}-s{config.seed}",
        layer_names=list(base.layer_names),
    )


def _jsonable(obj: Any) -> Any:
    return json.loads(
        json.dumps(obj, default=lambda o: str(o) if isinstance(o, (Path, os.PathLike)) else repr(o))
    )


def _write_outputs(
    run_dir: Path,
    config: RunConfig,
    agent: Agent,
    recorder: RunRecorder,
    base,
    wall_time: float,
    wandb_run,
    timing: dict[str, Any],
) -> dict[str, Any]:
    final = recorder.final
    env_config = _jsonable(base.config)
    model_spec = env_config["model"]
    torch.save(
        {
            "state_dict": final["state_dict"],
            "model": model_spec,
            "num_classes": len(base.dataset.classes),
            "env_id": config.env_id,
            "env_kwargs": env_config,
            "layer_names": list(base.layer_names),
            "val_accuracy": final["val_accuracy"],
            "test_accuracy": final["test_accuracy"],
        },
        run_dir / "final_model.pt",
    )
    schedule = recorder.lr_schedule()
    np.savez_compressed(run_dir / "lr_schedule.npz", **schedule)
    save_agent(agent, run_dir / "agent", config.algo)
    images = {
        "lr_heatmap": plots.lr_heatmap(
            schedule,
            run_dir / "lr_heatmap.png",
            f"{config.algo} on {config.env_id}: learning rate by layer and step",
        ),
        "accuracy": plots.accuracy_curves(
            recorder.epochs,
            recorder.episodes,
            run_dir / "accuracy.png",
            config.epochs_per_episode,
            f"{config.algo} on {config.env_id}",
        ),
    }
    results = {
        "env_id": config.env_id,
        "algo": config.algo,
        "config": config.to_json(),
        "env_config": env_config,
        "final_val_accuracy": final["val_accuracy"],
        "final_test_accuracy": final["test_accuracy"],
        "episodes": [
            {"episode": e["episode"], "val_accuracy": e.get("val_accuracy"), "mean_reward": e["mean_reward"]}
            for e in recorder.episodes
        ],
        "epochs": recorder.epochs,
        "wall_time_s": wall_time,
        "steps": recorder.global_step,
        "images_seen": int(sum(recorder.step_log["images"])),
        "machine": _machine(base.device),
        "timing": timing,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (run_dir / RESULTS).write_text(json.dumps(results, indent=2))
    if wandb_run is not None:
        wandb_run.finish(results, run_dir, images, [run_dir / RESULTS, run_dir / "final_model.pt"])
    return results


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} (torch threads {torch.get_num_threads()})"


def load_final_model(path: str | os.PathLike, device: str = "cpu"):
    """Rebuild the environment of a run with its fine-tuned model loaded, to re-evaluate it.

    Returns the :class:`~finetune_gym.FineTuneEnv` (same data, split and
    preprocessing as the run) and the saved metadata. Source weights are not
    fetched: the saved state dict replaces every tensor.
    """
    from finetune_gym import FineTuneEnv

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist: a run directory holds final_model.pt when it finished"
        )
    meta = torch.load(path, map_location="cpu", weights_only=True)
    kwargs = dict(meta["env_kwargs"])
    if not isinstance(kwargs.get("model"), str) or kwargs["model"].startswith(("<", "(")):
        raise ValueError(
            f"{str(path)!r} was trained with a custom nn.Module; rebuild that module and load "
            "meta['state_dict'] into it yourself"
        )
    kwargs.update(weights=None, device=device)
    env = FineTuneEnv(**kwargs)
    try:
        env.model.load_state_dict(meta["state_dict"])
    except RuntimeError as error:
        raise ValueError(
            f"{str(path)!r} does not match the model its configuration describes: {error}"
        ) from error
    return env, meta
