"""Whole runs of RL-Tune against plain fine-tuning of the same epochs (the step-overhead
benchmark's full-run comparison): each through the code path of train.py, rounds interleaved."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import timing
from benchmarks.overhead_setup import (
    env_kwargs,
)
from finetune_gym import FineTuneEnv
from finetune_gym.plain import PlainFineTuning


def _rl_tune_run(config: dict[str, Any], device: str, reward: str, episodes: int, epochs: int):
    """One whole RL-Tune run: its wall time and the run's own timing breakdown."""
    from finetune_gym.agents.config import RunConfig
    from finetune_gym.agents.run import run_training

    with tempfile.TemporaryDirectory() as tmp:
        kwargs = env_kwargs(config, device, reward, epochs)
        kwargs.pop("epochs_per_episode")
        kwargs.pop("seed")
        start = time.perf_counter()
        results = run_training(
            RunConfig(
                env_id="FineTune-CIFARResNet-v0",
                algo="rl_tune",
                episodes=episodes,
                epochs_per_episode=epochs,
                env_kwargs=kwargs,
            ),
            Path(tmp) / "run",
            progress=False,
            verbose=False,
        )
        return time.perf_counter() - start, results


def _plain_run(config: dict[str, Any], device: str, episodes: int, epochs: int):
    """Plain fine-tuning for the same epochs: its wall time and its phases (setup: data decoding
    and the model; training; validation; test evaluation, which decodes the test set first)."""
    marks = [time.perf_counter()]
    env = FineTuneEnv(**env_kwargs(config, device, "batch", epochs))
    loop = PlainFineTuning(env)
    marks.append(time.perf_counter())
    for _ in range(episodes * epochs):
        loop.epoch()
    timing.sync(env.device)
    marks.append(time.perf_counter())
    env.model.load_state_dict(loop.model.state_dict())
    env.evaluate("val")
    marks.append(time.perf_counter())
    env.evaluate("test")
    marks.append(time.perf_counter())
    phases = dict(
        zip(
            ("setup_s", "training_s", "validation_s", "test_evaluation_s"),
            np.diff(marks).tolist(),
            strict=True,
        )
    )
    return marks[-1] - marks[0], phases


def full_run_benchmark(
    config: dict[str, Any], device: str, episodes: int, epochs: int, rounds: int = 3
) -> dict[str, Any]:
    """Wall time of whole RL-Tune runs (each reward) against plain fine-tuning for the same epochs.

    Both sides include building the environment (data decoding), training, and the final
    validation and test evaluation; RL-Tune adds the agent, EMA, per-episode validation,
    per-epoch checkpoints and the run's outputs (plots, saved agent). The three runs repeat in
    ``rounds`` rounds, the order rotated each round, and each reports its median: on a shared
    machine the speed drifts within minutes (one run each once gave 2.1x for what measured 1.2x).
    """
    from finetune_gym.agents.report import agent_share

    runs = {
        "plain": lambda: _plain_run(config, device, episodes, epochs),
        "batch": lambda: _rl_tune_run(config, device, "batch", episodes, epochs),
        "next_batch": lambda: _rl_tune_run(config, device, "next_batch", episodes, epochs),
    }
    names = list(runs)
    samples: dict[str, list[tuple[float, Any]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in timing.rotated(names, r):
            samples[name].append(runs[name]())
    out: dict[str, Any] = {"epochs": episodes * epochs, "rounds": rounds}
    median = {name: sorted(samples[name], key=lambda pair: pair[0])[(rounds - 1) // 2] for name in names}
    out["plain_run_s"] = median["plain"][0]
    out["plain_phases"] = median["plain"][1]
    out["plain_runs_s"] = [seconds for seconds, _ in samples["plain"]]
    # The final test evaluation is the same work on both sides and, with a test set much larger
    # than an epoch (GTSRB: 12,630 test images, about 1,200 training images an epoch here), it
    # dilutes the ratio: each run's time without it, and the ratio of those medians.
    out["plain_without_test_runs_s"] = [t - phases["test_evaluation_s"] for t, phases in samples["plain"]]
    out["plain_without_test_s"] = statistics.median(out["plain_without_test_runs_s"])
    for reward in ("batch", "next_batch"):
        seconds, results = median[reward]
        out[f"rl_tune_{reward}_s"] = seconds
        out[f"rl_tune_{reward}_runs_s"] = [t for t, _ in samples[reward]]
        out["steps"] = results["steps"]
        out[f"agent_share_{reward}"] = agent_share(results["timing"])
        out[f"timing_{reward}"] = results["timing"]
        out[f"ratio_{reward}"] = seconds / out["plain_run_s"]
        without = [t - r["timing"]["test_evaluation_s"] for t, r in samples[reward]]
        out[f"rl_tune_{reward}_without_test_runs_s"] = without
        out[f"rl_tune_{reward}_without_test_s"] = statistics.median(without)
        out[f"ratio_without_test_{reward}"] = statistics.median(without) / out["plain_without_test_s"]
    return out
