"""How much does RL-Tune cost on top of plain fine-tuning? Measured side by side, in one process.

For each configuration (model, image size, batch size) on the device:
1. the floor: a plain fine-tuning step (augment from the uint8 cache, forward, loss, backward,
   Adam with one param group per layer), at the device's best settings (CUDA: bf16 autocast,
   channels-last, fused Adam; CPU: fp32);
2. ``env.step`` driven by a fixed action, for each reward mode;
3. a full RL-Tune run (RecurrentPPO acting every step and updating every epoch, EMA between
   episodes, end-of-episode validation, checkpoints, outputs) against plain fine-tuning for the
   same number of epochs (with the same setup and final evaluation).
Timings interleave the modes in rounds, the order rotated each round (so drift and position hit
all alike), and report the median round.
Peak memory: each mode in a fresh process (CUDA peak allocated on a GPU, else peak RSS).

    python benchmarks/step_overhead.py                      # CPU configurations (GPU ones if CUDA)
    python benchmarks/step_overhead.py --quick              # fewer steps, for a smoke test
    python benchmarks/step_overhead.py --out benchmarks/results/step_overhead_cpu.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from finetune_gym import FineTuneEnv, presets  # noqa: E402
from finetune_gym.device import resolve_channels_last, resolve_precision  # noqa: E402
from finetune_gym.layer_signals import GRADIENT_EXTRAS as GRADIENT_EXTRAS_NAMES  # noqa: E402
from finetune_gym.plain import PlainFineTuning  # noqa: E402

SHARED = presets.data_root()
DATA = "data pipeline alone (part of plain)"

CPU_CONFIGS = [
    {"name": "cifar_resnet20-32px-b32", "model": "cifar_resnet20", "image_size": 32, "batch_size": 32},
    # No full run here: its test evaluation (12,630 images through ResNet-50) alone takes minutes on 2 cores.
    {"name": "resnet50-64px-b16", "model": "resnet50", "image_size": 64, "batch_size": 16, "full_run": False},
    # The CPU's fast settings where it has bf16 units (AMX, AVX512-BF16): about twice the fp32 speed
    # for ResNet-20 on this machine's CPU. Not the CPU default (fp32), so its own configuration.
    {
        "name": "cifar_resnet20-32px-b32-bf16-cl",
        "model": "cifar_resnet20",
        "image_size": 32,
        "batch_size": 32,
        "precision": "bf16",
        "channels_last": True,
    },
]
# The base optimizers (issue 13): each against its own plain step, plus the observation extras.
OPTIMIZER_CONFIGS = [
    {
        "name": f"cifar_resnet20-32px-b32-{optimizer}",
        "model": "cifar_resnet20",
        "image_size": 32,
        "batch_size": 32,
        "optimizer": optimizer,
        "extras": True,
        "full_run": False,
        "memory": False,
        "agent": False,
    }
    for optimizer in (
        "adam",
        "adamw",
        "sgd",
        "schedulefree_adamw",
        "prodigy",
        "prodigy_layerwise",
        "ldog",
        "mechanic_adamw",
    )
]
GPU_CONFIGS = [
    {"name": "resnet50-224px-b64", "model": "resnet50", "image_size": 224, "batch_size": 64},
    {"name": "resnet50-224px-b128", "model": "resnet50", "image_size": 224, "batch_size": 128},
]


def env_kwargs(config: dict[str, Any], device: str, reward: str, epochs: int = 1000) -> dict[str, Any]:
    """The benchmark's environment: GTSRB (upscaled for larger images) from ../shared/data, random
    initial weights (speed does not depend on them), a long episode so no reset falls in a timing."""
    kwargs = {
        "model": config["model"],
        "weights": None,
        "image_size": config["image_size"],
        "batch_size": config["batch_size"],
        "device": device,
        "reward": reward,
        "epochs_per_episode": epochs,
        "val_fraction": 0.1,
        "seed": 0,
        "precision": config.get("precision", "auto"),
        "channels_last": config.get("channels_last"),
        "optimizer": config.get("optimizer", "adam"),
    }
    if (SHARED / "gtsrb").is_dir():
        kwargs.update(presets.gtsrb(SHARED))
    else:  # synthetic stand-in with the same shapes
        # dataset_kwargs replaces the registered GTSRB options in the full run's environment.
        kwargs.update(
            dataset="imagefolder", data_root=_synthetic_folder(config["batch_size"]), dataset_kwargs={}
        )
    return kwargs


_SYNTHETIC: dict[int, str] = {}


def _synthetic_folder(batch_size: int) -> str:
    """Random 32x32 images in 10 classes, written once per process and size: enough training
    images for 40 batches an epoch (so a full run's epochs are not a handful of steps) and a test
    split a quarter as large."""
    per_class = max(40, 40 * batch_size // 9)  # 10% goes to validation
    if per_class in _SYNTHETIC:
        return _SYNTHETIC[per_class]
    from PIL import Image

    root = Path(tempfile.mkdtemp(prefix="finetune_gym_bench_"))
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 4)):
        for c in range(10):
            (root / split / str(c)).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    root / split / str(c) / f"{i}.png"
                )
    _SYNTHETIC[per_class] = str(root)
    return str(root)


def _rotated(names: list[str], round_index: int) -> list[str]:
    """``names`` starting one later each round, so that no mode always runs first (after another
    mode's allocations, or on a CPU that has just warmed up or throttled)."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn, steps: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return time.perf_counter() - start


EXTRAS = "env.step reward=next_batch +obs extras"
EXTRAS_ALONE = "observation extras alone (part of +obs extras)"
GRADIENT_EXTRAS = "env.step reward=next_batch +gradient extras"
GRADIENT_ALONE = "gradient extras alone (part of +gradient extras)"


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
        time_steps(fn, max(3, steps // 5), dev)
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in _rotated(names, r):
            times[name].append(time_steps(runners[name], steps, dev))
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
                        time_steps(lambda: env.step(action), max(2, steps // 5), dev)  # settle
                        key = f"{'+ one busy process' if busy else 'as found'}, {threads} thread{'s' if threads > 1 else ''}"
                        times.setdefault(key, []).append(
                            time_steps(lambda: env.step(action), steps, dev) / steps
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
    _sync(env.device)
    peak = (
        torch.cuda.max_memory_allocated(env.device) / 2**20 if env.device.type == "cuda" else peak_rss_mib()
    )
    queue.put({"peak_mib": peak - unused, "subtracted_mib": unused})


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's ``VmHWM`` belongs to the process's own address
    space; ``ru_maxrss`` would not do in a spawned child: Linux carries the parent's peak at fork
    over the exec, so every mode would read the benchmark process's memory (as the results before
    this fix did)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # bytes on macOS


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
    _sync(env.device)
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
        for name in _rotated(names, r):
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


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (
        f"{platform.processor() or platform.machine()} CPU x{multiprocessing.cpu_count()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )


def settings(config: dict[str, Any], device: str) -> str:
    """The precision, memory format and optimizer the configuration runs in (the environment's
    defaults for the device unless the configuration sets them)."""
    dtype = resolve_precision(config.get("precision", "auto"), torch.device(device))
    channels_last = resolve_channels_last(config.get("channels_last"), torch.device(device))
    layout = f"{'bf16 autocast' if dtype else 'fp32'}, {'channels-last' if channels_last else 'contiguous'}"
    return layout + f", {config.get('optimizer', 'adam')}"


def render(report: dict[str, Any]) -> str:
    lines = [
        f"### {report['config']['name']} on {report['device']} ({report['machine']}; "
        f"{settings(report['config'], report['device'])})",
        "",
        "| mode | images/s | time per step (ms) | ratio to plain | peak memory (MiB) |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["steps"].items():
        memory = report.get("peak_memory", {}).get(name, {}).get("peak_mib")
        lines.append(
            f"| {name} | {row['images_per_s']:.0f} | {1000 * row['s_per_step']:.{1 if row['ratio'] > 1e-3 else 4}f} | "
            f"{row['ratio']:.{3 if row['ratio'] > 1e-3 else 6}f} | "
            f"{'' if memory is None else f'{memory:.0f}'} |"
        )
    for label, full, alone_name in (
        ("Observation extras (progress, lr, loss)", EXTRAS, EXTRAS_ALONE),
        ("Gradient extras (grad_ratio, drift, grad_cosine, base_step)", GRADIENT_EXTRAS, GRADIENT_ALONE),
    ):
        if full not in report["steps"]:
            continue
        step = report["steps"]["env.step reward=next_batch"]["s_per_step"]
        ratio = report["steps"][full]["s_per_step"] / step
        alone = report["steps"].get(alone_name, {}).get("s_per_step")
        lines += [
            "",
            f"{label}: {100 * (ratio - 1):+.1f}% on an `env.step` with reward=next_batch, side by side"
            + (
                ""
                if alone is None
                else f"; their own work, timed alone, is {100 * alone / step:.3f}% of that step"
            )
            + ".",
        ]
    memory = report.get("peak_memory")
    if memory:
        kind = "CUDA peak allocated" if report["device"].startswith("cuda") else "peak RSS (VmHWM)"
        lines += [
            "",
            f"Peak memory: {kind}, each mode in a fresh process; the plain loop's excludes the "
            f"environment's two model copies it does not use ({memory['plain']['subtracted_mib']:.0f} MiB). "
            "Ratio to plain: "
            + ", ".join(
                f"{name} {row['peak_mib'] / memory['plain']['peak_mib']:.3f}"
                for name, row in memory.items()
                if name != "plain"
            )
            + ".",
        ]
    agent = report.get("agent")
    if agent:
        step_ms = 1000 * report["steps"]["env.step reward=next_batch"]["s_per_step"]
        lines += [
            "",
            f"Agent alone, per fine-tuning step (zero-cost environment with these spaces, "
            f"{agent['steps_per_epoch']} steps per epoch, one update per epoch):",
        ]
        for label, row in agent.items():
            if isinstance(row, dict):
                share = row["total_ms"] / (row["total_ms"] + step_ms)
                lines.append(
                    f"- {label}: acting {row['acting_ms']:.2f} ms + update {row['updates_ms']:.2f} ms = "
                    f"{row['total_ms']:.2f} ms; with env.step (next_batch, {step_ms:.1f} ms) that is "
                    f"{100 * share:.1f}% of a step"
                )
    full = report.get("full_run")
    if full:
        lines += [
            "",
            f"Full run, {full['epochs']} epoch{'s' * (full['epochs'] != 1)} ({full['steps']} steps), "
            f"median of {full['rounds']} round{'s' * (full['rounds'] != 1)} in rotated order: plain fine-tuning "
            f"{full['plain_run_s']:.1f} s; RL-Tune with reward=batch {full['rl_tune_batch_s']:.1f} s "
            f"(ratio **{full['ratio_batch']:.3f}**), with reward=next_batch {full['rl_tune_next_batch_s']:.1f} s "
            f"(ratio **{full['ratio_next_batch']:.3f}**).",
        ]
        each = ", ".join(
            f"{label} " + " / ".join(f"{t:.1f}" for t in full[key])
            for label, key in (
                ("plain", "plain_runs_s"),
                ("batch", "rl_tune_batch_runs_s"),
                ("next_batch", "rl_tune_next_batch_runs_s"),
            )
        )
        lines.append(f"- every run (s, in round order): {each}.")
        lines.append(
            "- without the final test evaluation (the same work on both sides), medians: plain "
            f"{full['plain_without_test_s']:.1f} s; RL-Tune with reward=batch "
            f"{full['rl_tune_batch_without_test_s']:.1f} s (ratio **{full['ratio_without_test_batch']:.3f}**), "
            f"with reward=next_batch {full['rl_tune_next_batch_without_test_s']:.1f} s "
            f"(ratio **{full['ratio_without_test_next_batch']:.3f}**)."
        )
        phases = full["plain_phases"]
        lines.append(
            f"- plain (median run): setup {phases['setup_s']:.1f} s, training {phases['training_s']:.1f} s, "
            f"validation {phases['validation_s']:.2f} s, test evaluation {phases['test_evaluation_s']:.1f} s."
        )
        for reward in ("batch", "next_batch"):
            t = full[f"timing_{reward}"]
            lines.append(
                f"- reward={reward}: of the {t['loop_s']:.1f} s training loop, environment steps and resets "
                f"{t['env_steps_s']:.1f} s, agent acting {t['agent_acting_s']:.2f} s, agent updates "
                f"{t['agent_updates_s']:.2f} s (agent side {100 * full[f'agent_share_{reward}']:.1f}%), "
                f"checkpoints {t['checkpoints_s']:.2f} s, final test evaluation {t['test_evaluation_s']:.1f} s."
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=40, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=2, help="full-run comparison: episodes")
    parser.add_argument("--epochs", type=int, default=2, help="full-run comparison: epochs per episode")
    parser.add_argument("--full-rounds", type=int, default=3, help="full-run comparison: rounds")
    parser.add_argument(
        "--configs", nargs="*", help="names of configurations to run (default: all for the device)"
    )
    parser.add_argument("--quick", action="store_true", help="few steps and rounds (smoke test)")
    parser.add_argument("--no-full-run", action="store_true")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-mode peak memory processes")
    parser.add_argument("--out", type=Path, help="append the markdown report here; JSON beside it")
    parser.add_argument(
        "--threads-under-load",
        action="store_true",
        help="only: env.step with 1 and 2 threads, quiet and with one core kept busy (first CPU config)",
    )
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.quick:
        args.steps, args.rounds, args.episodes, args.epochs, args.full_rounds = 4, 2, 1, 1, 1
    if args.threads_under_load:
        result = threads_under_load(CPU_CONFIGS[0], args.steps, args.rounds)
        rows = result["s_per_step"]
        quiet = rows["as found, 2 threads"]
        text = [
            f"### Threads under load: {CPU_CONFIGS[0]['name']}, env.step reward=next_batch ({machine('cpu')})",
            "",
            f"1-minute load before: {result['load_before']:.2f} ('as found': the machine with whatever else it runs; "
            "'+ one busy process': plus a process spinning on one core).",
            "",
            "| setting | time per step (ms) | ratio to 'as found, 2 threads' |",
            "|---|---|---|",
            *[f"| {k} | {1000 * v:.1f} | {v / quiet:.2f} |" for k, v in rows.items()],
            "",
        ]
        print("\n".join(text), flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write("\n".join(text) + "\n")
        return
    configs = GPU_CONFIGS if device.startswith("cuda") else CPU_CONFIGS
    if args.configs:
        configs = [c for c in CPU_CONFIGS + OPTIMIZER_CONFIGS + GPU_CONFIGS if c["name"] in args.configs]
    for config in configs:
        report = {
            "config": config,
            "device": device,
            "machine": machine(device),
            "steps": step_benchmark(config, device, args.steps, args.rounds),
        }
        if config.get("agent", True):
            report["agent"] = agent_benchmark(config, device, epochs=3, rounds=args.rounds)
        if not args.no_memory and config.get("memory", True):
            report["peak_memory"] = peak_memory(config, device, min(args.steps, 10))
        if not args.no_full_run and config.get("full_run", True):
            report["full_run"] = full_run_benchmark(
                config, device, args.episodes, args.epochs, args.full_rounds
            )
        print(render(report), flush=True)
        if args.out:  # each configuration as it completes: a run cut short keeps the finished ones
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as handle:
                handle.write(render(report) + "\n")
            with open(args.out.with_suffix(".json"), "a") as handle:
                handle.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
