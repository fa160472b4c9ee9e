"""How the step-overhead benchmark measures: per configuration, fine-tuning steps against
``env.step`` (interleaved rounds, in one process), the agent's own cost on a zero-cost environment,
each mode's peak memory in a fresh process, and whole runs of RL-Tune against plain fine-tuning."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from benchmarks import timing
from benchmarks.overhead_setup import (
    DATA,
    EXTRAS,
    EXTRAS_ALONE,
    GRADIENT_ALONE,
    GRADIENT_EXTRAS,
    env_kwargs,
)
from finetune_gym import FineTuneEnv
from finetune_gym.layer_signals import GRADIENT_EXTRAS as GRADIENT_EXTRAS_NAMES
from finetune_gym.plain import PlainFineTuning


def gradient_extras_alone(env: FineTuneEnv) -> None:
    """The gradient extras' own work in a step (issue 25): statistics of the applied gradient, the
    values that travel with the observation, and their host-side features."""
    stats = env.statistics
    stats.record_update()
    stats.features(stats.device_values(env.optimizer).cpu().numpy(), env.optimizer)


def step_benchmark(config: dict[str, Any], device: str, steps: int, rounds: int) -> dict[str, Any]:
    envs = {reward: FineTuneEnv(**env_kwargs(config, device, reward)) for reward in ("batch", "next_batch")}
    if config.get("extras"):  # the observation extras (progress, rates, losses) on top of next_batch
        extras = {**env_kwargs(config, device, "next_batch"), "obs_extras": ["progress", "lr", "loss"]}
        envs["extras"] = FineTuneEnv(**extras)
        gradient = {**env_kwargs(config, device, "next_batch"), "obs_extras": list(GRADIENT_EXTRAS_NAMES)}
        envs["gradient"] = FineTuneEnv(**gradient)
    dev = envs["batch"].device
    plain = PlainFineTuning(envs["batch"])
    action = np.full(envs["batch"].n_layers, 2)
    for env in envs.values():
        env.reset(seed=0)
    names = {
        "batch": "env.step reward=batch",
        "next_batch": "env.step reward=next_batch",
        "extras": EXTRAS,
        "gradient": GRADIENT_EXTRAS,
    }
    runners = {
        "plain": plain.step,
        **{names[r]: (lambda e=e: e.step(action)) for r, e in envs.items()},
        # The extras' own work, timed alone: what they add to a step on a quiet machine.
        **({EXTRAS_ALONE: lambda: envs["extras"].signals.features(0.5, 1.0)} if "extras" in envs else {}),
        **({GRADIENT_ALONE: lambda: gradient_extras_alone(envs["gradient"])} if "gradient" in envs else {}),
        # Part of the plain step, timed alone: "never the bottleneck" means a small ratio here.
        DATA: plain.data,
    }
    for fn in runners.values():  # warm-up: allocator, cudnn autotuning, lazy caches
        timing.time_steps(fn, max(3, steps // 5), dev)
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in timing.rotated(names, r):
            times[name].append(timing.time_steps(runners[name], steps, dev))
    batch = config["batch_size"]
    rows = {}
    for name, samples in times.items():
        median = statistics.median(samples)
        rows[name] = {"images_per_s": steps * batch / median, "s_per_step": median / steps}
    floor = rows["plain"]["s_per_step"]
    for row in rows.values():
        row["ratio"] = row["s_per_step"] / floor
    return rows


def _spin() -> None:
    while True:  # one core busy, as another user's process would keep it
        pass


def threads_under_load(config: dict[str, Any], steps: int, rounds: int) -> dict[str, Any]:
    """``env.step`` (next_batch) with 1 and with 2 threads, on the machine as found and while a second
    process keeps one core busy (issue 16: PyTorch's OpenMP threads spin against it). Rounds
    interleave the thread counts; the busy process runs only during its half."""
    env = FineTuneEnv(**env_kwargs(config, "cpu", "next_batch"))
    env.reset(seed=0)
    action = np.full(env.n_layers, 2)
    dev = env.device
    previous = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {}
    try:
        for busy in (False, True):
            spinner = None
            if busy:
                spinner = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
                spinner.start()
                time.sleep(1.0)
            try:
                for r in range(rounds):
                    for threads in (1, 2) if r % 2 == 0 else (2, 1):
                        torch.set_num_threads(threads)
                        timing.time_steps(lambda: env.step(action), max(2, steps // 5), dev)  # settle
                        key = f"{'+ one busy process' if busy else 'as found'}, {threads} thread{'s' if threads > 1 else ''}"
                        times.setdefault(key, []).append(
                            timing.time_steps(lambda: env.step(action), steps, dev) / steps
                        )
            finally:
                if spinner is not None:
                    spinner.terminate()
                    spinner.join()
    finally:
        torch.set_num_threads(previous)
    return {"load_before": load_before, "s_per_step": {k: statistics.median(v) for k, v in times.items()}}


def _model_mib(model: torch.nn.Module) -> float:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2**20


def _peak_child(config: dict[str, Any], device: str, mode: str, steps: int, queue) -> None:
    """One mode's peak memory, in a fresh process: CUDA's peak allocated on a GPU, else peak RSS.

    The plain loop borrows the environment's data cache and augmentation but trains its own copy
    of the network: the environment's two model copies (target and source), resident all along,
    are subtracted from its peak."""
    env = FineTuneEnv(**env_kwargs(config, device, "next_batch" if mode.endswith("next_batch") else "batch"))
    unused = 0.0
    if mode == "plain":
        loop = PlainFineTuning(env)
        unused = _model_mib(env.model) + _model_mib(env.source_model)
        step = loop.step
    else:
        env.reset(seed=0)
        action = np.full(env.n_layers, 2)
        step = lambda: env.step(action)  # noqa: E731
    for _ in range(steps):
        step()
    timing.sync(env.device)
    peak = (
        torch.cuda.max_memory_allocated(env.device) / 2**20
        if env.device.type == "cuda"
        else timing.peak_rss_mib()
    )
    queue.put({"peak_mib": peak - unused, "subtracted_mib": unused})


def peak_memory(config: dict[str, Any], device: str, steps: int) -> dict[str, dict[str, float]]:
    """Each mode's peak memory, each in its own process: a process's peak never goes down, and in
    one process the modes' models, caches and optimizers would all count towards every peak."""
    context = multiprocessing.get_context("spawn")
    out = {}
    for mode in ("plain", "env.step reward=batch", "env.step reward=next_batch"):
        queue = context.Queue()
        child = context.Process(target=_peak_child, args=(config, device, mode, steps, queue))
        child.start()
        try:
            out[mode] = queue.get(timeout=1800)
        finally:
            child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"the peak-memory process for {mode!r} exited with code {child.exitcode}")
    return out


class ZeroCostEnv(gym.Env):
    """The benchmark environment's spaces and epoch length, with a step that costs nothing: what
    remains of a run's time is the agent's (SB3's loop, VecNormalize, the policy, its updates)."""

    def __init__(self, like: FineTuneEnv) -> None:
        self.observation_space, self.action_space = like.observation_space, like.action_space
        self.steps_per_epoch, self.n_layers, self.lr_map = like.steps_per_epoch, like.n_layers, like.lr_map
        rng = np.random.default_rng(0)
        self.observation = rng.standard_normal(self.observation_space.shape).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self.observation, {}

    def step(self, action):
        return self.observation, 0.5, False, False, {}


def agent_benchmark(config: dict[str, Any], device: str, epochs: int, rounds: int) -> dict[str, Any]:
    """The agent's own cost per fine-tuning step, on a zero-cost environment with the configuration's
    spaces and epoch length: acting every step, plus its update once per epoch (amortised per step).

    Variants, interleaved: RL-Tune's agent as a run uses it (one thread, this package's batched
    action distribution); with SB3's per-layer distribution; with every thread of the process.
    """
    from stable_baselines3.common.distributions import MultiCategoricalDistribution
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from finetune_gym.agents.registry import make_agent
    from finetune_gym.agents.threads import AGENT_THREADS, torch_threads
    from finetune_gym.agents.timing import AgentUpdates, Timer

    env = FineTuneEnv(**env_kwargs(config, device, "next_batch"))
    all_threads = torch.get_num_threads()
    variants = {  # label: (SB3's per-layer distribution?, threads)
        "rl_tune as run": (False, AGENT_THREADS),
        "rl_tune, SB3's per-layer distribution": (True, AGENT_THREADS),
        f"rl_tune, {all_threads} threads": (False, all_threads),
    }
    built = {}
    for label, (sb3_distribution, _) in variants.items():
        venv = VecNormalize(DummyVecEnv([lambda: ZeroCostEnv(env)]), norm_reward=False)
        built[label] = make_agent("rl_tune", venv)
        if sb3_distribution:  # same action layer (sum of the dims' logits), SB3's loop over layers
            policy = built[label].policy
            policy.action_dist = MultiCategoricalDistribution(list(policy.action_dist.action_dims))
    steps = env.steps_per_epoch * epochs
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label in built}
    for label, agent in built.items():  # warm-up
        with torch_threads(variants[label][1]):
            agent.learn(env.steps_per_epoch, reset_num_timesteps=False)
    for _ in range(rounds):
        for label, agent in built.items():
            timer = Timer()
            with torch_threads(variants[label][1]):
                start = time.perf_counter()
                agent.learn(steps, reset_num_timesteps=False, callback=AgentUpdates(timer))
                total = time.perf_counter() - start
            samples[label].append((total - timer.updates_s, timer.updates_s))
    out: dict[str, Any] = {"steps_per_epoch": env.steps_per_epoch}
    for label, pairs in samples.items():
        acting = statistics.median(a for a, _ in pairs) / steps
        updates = statistics.median(u for _, u in pairs) / steps
        out[label] = {
            "acting_ms": 1000 * acting,
            "updates_ms": 1000 * updates,
            "total_ms": 1000 * (acting + updates),
        }
    return out
