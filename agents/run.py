"""One training run: RL-Tune (or another agent) over episodes of fine-tuning, with checkpoints.

``run_training(config, run_dir)`` is what ``train.py`` calls. A run executes
``episodes x epochs_per_episode`` epochs of fine-tuning under the agent, the EMA
scheme between episodes, the agent learning online (once per epoch), then writes
the run directory (:mod:`finetune_gym.agents.outputs`). After every epoch it saves a checkpoint
(:mod:`finetune_gym.agents.checkpoint`) so ``resume=True`` continues exactly where a killed run
stopped.

The pieces, in the order data flows: :mod:`finetune_gym.agents.config` (what the run is),
:mod:`finetune_gym.agents.rundir` (where it goes), :func:`build_env` (the environment under SB3's
wrappers), the agent (:mod:`finetune_gym.agents.registry`), the loop below, :mod:`finetune_gym.agents.outputs`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
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

from finetune_gym import default_config
from finetune_gym.layerwise import LayerwiseView

from .checkpoint import Checkpointer, EpochCheckpoint, check_written_by, load_checkpoint, read_checkpoint
from .config import RunConfig
from .outputs import write_outputs
from .progress import RunProgress
from .recording import RunRecorder, RunState
from .registry import Agent, is_learning, layer_tokens, load_agent, make_agent
from .rundir import CHECKPOINT, CONFIG, FINAL_MODEL, RESULTS, RunDirectory, RunDirectoryError, read_config
from .threads import AGENT_THREADS, load_warning, torch_threads
from .timing import AgentUpdates, Timer


def build_env(config: RunConfig) -> tuple[VecNormalize, RunState]:
    """VecNormalize(DummyVecEnv([Monitor(RunRecorder(gym.make(env_id)))])), observations only; for
    an agent that reads per-layer tokens, Monitor(LayerwiseView(RunRecorder(...))) and no
    normalisation (the tokens are scaled already, the same on every task). The environment keeps
    the current thread count (run_training sets it from ``config.threads``)."""
    kwargs = config.full_env_kwargs()
    max_layers = layer_tokens(config.algo, **config.agent_kwargs)

    def make() -> gym.Env:
        try:
            env = gym.make(config.env_id, ema=config.ema, **kwargs)
        except TypeError as error:  # an argument the environment does not take
            raise ValueError(
                f"{config.env_id}: {error}; its arguments are {', '.join(default_config(config.env_id))}"
            ) from error
        recorder = RunRecorder(
            env, config.episodes - 1, config.max_skipped_in_a_row, env_threads=torch.get_num_threads()
        )
        built.append(RunState(recorder, None if max_layers is None else LayerwiseView(recorder, max_layers)))
        view = built[-1].view
        return Monitor(recorder if view is None else view)

    built: list[RunState] = []
    dummy = DummyVecEnv([make])
    return VecNormalize(dummy, norm_obs=max_layers is None, norm_reward=False), built[0]


def run_training(
    config: RunConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """Execute (or continue) a run and write its directory; returns the contents of ``results.json``.

    Everything (arguments, environment, data, weights, agent) is built and checked before the
    run directory is touched; the directory stays locked while the run goes on; a run that fails
    before its first checkpoint leaves nothing behind. ``config.threads`` sets the environment's
    CPU threads for the run (restored after it).
    """
    with torch_threads(config.threads):
        return _run_training(config, Path(run_dir), resume, overwrite, progress, verbose)


def _run_training(
    config: RunConfig, run_dir: Path, resume: bool, overwrite: bool, progress: bool, verbose: bool
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunDirectoryError("--resume and --overwrite exclude each other")
    if resume:  # the saved configuration continues; only where the run logs to may change
        saved = read_config(run_dir)
        differences = saved.differences(config)
        if differences:
            raise RunDirectoryError(
                f"--resume continues {str(run_dir)!r} as it was started; these arguments differ from its "
                f"{CONFIG}: {'; '.join(differences)}. Drop them, or start a new run (--overwrite or another "
                "--run-dir)"
            )
    timer = Timer()
    venv, state = build_env(config)
    recorder = state.recorder
    base = recorder.unwrapped
    total_steps = base.episode_steps * config.episodes
    set_random_seed(config.seed)
    if config.replay_agent:
        agent, venv = _load_replayed(config.replay_agent, venv)
    else:
        agent = make_agent(config.algo, venv, seed=config.seed, **config.agent_kwargs)

    with RunDirectory.claim(run_dir, config, resume=resume, overwrite=overwrite) as directory:
        done_steps, loop = 0, None
        if resume:
            payload = read_checkpoint(run_dir / CHECKPOINT)
            check_written_by(payload, run_dir / CHECKPOINT, config)
            threads = recorder.env_threads
            loop = load_checkpoint(payload, run_dir / CHECKPOINT, agent, venv, state, timer)
            done_steps = payload["steps"]
            if verbose:
                print(f"resuming {run_dir} at step {done_steps} of {total_steps}")
                if recorder.env_threads != threads:
                    print(f"the environment runs on {recorder.env_threads} threads as before, not {threads}")
        else:
            venv.seed(config.seed)
        if verbose:  # once everything is checked and the run starts: an error stays one line
            warning = load_warning(recorder.env_threads)
            if warning:
                print(warning, file=sys.stderr, flush=True)
        checkpointer = Checkpointer(run_dir / CHECKPOINT, config, state, timer, directory.drop_replaced)
        try:
            wandb_run, timing = _train(
                config,
                agent,
                venv,
                recorder,
                checkpointer,
                loop,
                range(done_steps, total_steps),
                progress,
                verbose,
                resume,
            )
            results, images = write_outputs(run_dir, config, agent, recorder, timer.wall_s(), timing)
            directory.drop_replaced()  # a run without checkpoints (one epoch) replaces it now
        except BaseException:
            if not resume and checkpointer.saved == 0:
                directory.abandon()  # nothing to resume: leave nothing behind
            raise
        if wandb_run is not None:
            wandb_run.finish(results, run_dir, images, [run_dir / RESULTS, run_dir / FINAL_MODEL])
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    venv.close()
    if verbose:
        val, skipped = results["final_val_accuracy"], results["skipped_updates"]
        notes = [f"validation {'n/a' if val is None else f'{val:.4f}'}", f"{results['wall_time_s']:.1f} s"]
        if skipped:
            notes.append(f"{skipped} updates skipped: non-finite loss")
        print(
            f"run directory: {run_dir}\nfinal test accuracy: {results['final_test_accuracy']:.4f} ({', '.join(notes)})"
        )
    return results


def _train(
    config: RunConfig,
    agent: Agent,
    venv: VecNormalize,
    recorder: RunRecorder,
    checkpointer: Checkpointer,
    loop: dict[str, Any] | None,
    steps: range,
    progress: bool,
    verbose: bool,
    resume: bool,
) -> tuple[Any | None, dict[str, Any]]:
    """The training loop, with its progress bar, W&B run and checkpoints; returns the W&B run and
    where the loop's time went (before the last checkpoint's write is waited for)."""
    timer = checkpointer.timer
    with ExitStack() as stack:
        bar = RunProgress(
            steps.stop, config.episodes, config.epochs_per_episode, steps.start, bar=progress, lines=verbose
        )
        stack.callback(bar.close)
        recorder.subscribe(bar)
        wandb_run = None
        if config.wandb_mode != "disabled":
            from .wandb_logging import start_wandb

            wandb_run = start_wandb(config, checkpointer.path.parent, recorder.unwrapped)
            stack.push(lambda error, *_: wandb_run.abort() if error is not None else None)
            recorder.subscribe(wandb_run)
        tensorboard = None
        if config.tensorboard_dir:
            from .tensorboard_logging import TensorBoardListener

            tensorboard = TensorBoardListener(config.tensorboard_dir, list(recorder.unwrapped.layer_names))
            stack.callback(tensorboard.close)
            recorder.subscribe(tensorboard)
        stack.callback(checkpointer.close)  # the last checkpoint is complete before the outputs
        timer.start_loop()
        with torch_threads(AGENT_THREADS):
            if is_learning(agent) and not config.replay_agent:
                callbacks: list[BaseCallback] = [
                    AgentUpdates(timer),  # first: an update ends before the checkpoint starts
                    EpochCheckpoint(checkpointer, steps.start),
                ]
                _learn(agent, len(steps), callbacks, resume, wandb_run, tensorboard)
            else:
                _act_fixed(
                    agent,
                    venv,
                    loop,
                    steps,
                    recorder.unwrapped.steps_per_epoch,
                    lambda step, loop: checkpointer.save(agent, venv, step, loop),
                )
        bar.close()
        timing = timer.breakdown(recorder.env_seconds, recorder.test_seconds, resume)
    return wandb_run, timing


def _learn(
    agent: Agent,
    steps: int,
    callbacks: list[BaseCallback],
    resume: bool,
    wandb_run: Any | None,
    tensorboard: Any | None,
) -> None:
    """A learning agent trains for ``steps`` more steps (SB3's loop); its statistics go to W&B
    and TensorBoard where asked, to both at once if both are."""
    outputs = []
    if wandb_run is not None:
        from .wandb_logging import AgentConfigCallback, WandbKVWriter

        outputs.append(WandbKVWriter())
        callbacks = [*callbacks, AgentConfigCallback(verbose=0)]
    if tensorboard is not None:
        outputs.append(tensorboard.agent_output())
    if outputs:
        agent.set_logger(Logger(folder=None, output_formats=outputs))
    agent.learn(steps, callback=CallbackList(callbacks), reset_num_timesteps=not resume)
    if outputs:
        agent.logger.dump(agent.num_timesteps)  # SB3 dumps a rollout's stats at the next one
        agent.logger.close()


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
    # A rule over the environment's own values (auto_rgn) reads the raw observation, kept in the
    # loop (so a resumed run has it) beside VecNormalize's.
    raw = getattr(agent, "raw_observations", False)
    if loop is None:
        loop = {"obs": venv.reset(), "state": None, "episode_start": np.ones(venv.num_envs, dtype=bool)}
        if raw:
            loop["raw_obs"] = venv.get_original_obs()
    for step in steps:
        action, loop["state"] = agent.predict(
            loop["raw_obs"] if raw else loop["obs"],
            state=loop["state"],
            episode_start=loop["episode_start"],
            deterministic=True,
        )
        loop["obs"], _, loop["episode_start"], _ = venv.step(action)
        if raw:
            loop["raw_obs"] = venv.get_original_obs()
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
