"""What a deployed residual controller costs on top of its base optimizer's run (issue 28's target:
at most 1.10x), measured side by side in one process.

Two modes on the same environment configuration (step_overhead.py's for the grid's network:
CIFAR ResNet-20 on GTSRB at 32 px, batch 32, random initial weights; random images of that shape
where ../shared/data is missing): the base, Prodigy at its
published setting acting "1 everywhere" with no observation extras, and the controller (non-zero
weights, so that its multipliers vary) reading its extras and choosing every step. Each round
times ``--steps`` steps of each mode, in an order that rotates; the median round's ratio is the
result. The controller's own decision (features and one matrix product) is also timed alone.
``--config`` picks another of the step-overhead benchmark's configurations (on a GPU:
``resnet50-224px-b64``).

A third mode times the base without the environment's check that the gradients are finite (it
skips an update on overflowed gradients, and on a GPU its one read-back makes the host wait for
the backward before it queues the update): the base with the check against the base without it is
what the check costs. The environment has no switch for a safety check, so this mode swaps the
check for one that passes, here only.

    python benchmarks/controller_overhead.py --out benchmarks/results/controller_overhead_cpu.md
    python benchmarks/controller_overhead.py --device cuda --config resnet50-224px-b64 --out ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run as a file: the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import timing  # noqa: E402
from benchmarks.overhead_setup import CPU_CONFIGS, GPU_CONFIGS, env_kwargs  # noqa: E402

THETA = [0.0, -0.5, 0.25, 0.0, 1.0, 0.3, -0.2, 0.1]  # any non-zero weights: the cost does not depend on them
CONFIGS = {c["name"]: c for c in CPU_CONFIGS + GPU_CONFIGS}
DEFAULT_CONFIG = "cifar_resnet20-32px-b32"  # the grid's network and batch
UNCHECKED = "base without the gradient check"


@contextmanager
def gradients_unchecked() -> Iterator[None]:
    """The environment's finiteness check of the gradients replaced by one that passes."""
    from finetune_gym import training

    check = training.gradients_finite
    training.gradients_finite = lambda optimizer: True
    try:
        yield
    finally:
        training.gradients_finite = check


def measure(device: str, steps: int, rounds: int, config: str = DEFAULT_CONFIG) -> dict:
    from finetune_gym import FineTuneEnv, presets
    from finetune_gym.agents.residual_controller import ResidualController

    controller = ResidualController(theta=THETA)
    kwargs = env_kwargs(CONFIGS[config], device, "batch")
    envs = {
        "base": FineTuneEnv(**{**kwargs, **presets.published("prodigy")}),
        "controller": FineTuneEnv(**{**kwargs, **controller.env_overrides()}),
    }
    controller.bind(
        envs["controller"].n_layers, envs["controller"].lr_map.rates, envs["controller"].layer_names
    )
    observations = {name: env.reset(seed=0)[0] for name, env in envs.items()}
    one = np.ones(envs["base"].n_layers, dtype=np.int64)  # index 1 of [0, lr]: the published rate

    def base_step() -> None:
        envs["base"].step(one)

    def controller_step() -> None:
        action, _ = controller.predict(observations["controller"])
        observations["controller"] = envs["controller"].step(action[0])[0]

    def decision_alone() -> None:
        controller.predict(observations["controller"])

    def unchecked_step() -> None:
        with gradients_unchecked():
            envs["base"].step(one)

    modes = {
        "base": base_step,
        "controller": controller_step,
        "decision": decision_alone,
        UNCHECKED: unchecked_step,
    }
    dev = torch.device(device)
    for fn in modes.values():  # warm-up
        timing.time_steps(fn, 3, dev)
    times: dict[str, list[float]] = {name: [] for name in modes}
    for r in range(rounds):
        for name in timing.rotated(list(modes), r):
            times[name].append(timing.time_steps(modes[name], steps, dev) / steps)
    ratios = [c / b for c, b in zip(times["controller"], times["base"], strict=True)]
    check = [b / u for b, u in zip(times["base"], times[UNCHECKED], strict=True)]
    return {
        "device": device,
        "config": config,
        "machine": timing.machine(device),
        "steps": steps,
        "rounds": rounds,
        "ms_per_step": {name: 1000 * statistics.median(values) for name, values in times.items()},
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "check_ratio_median": statistics.median(check),
        "check_ratios": check,
    }


def render(result: dict) -> str:
    ms = result["ms_per_step"]
    verdict = "met" if result["ratio_median"] <= 1.10 else "missed"
    return "\n".join(
        [
            f"## Residual controller against its base (Prodigy), {result.get('config', DEFAULT_CONFIG)}, "
            f"{result['machine']}",
            "",
            f"{result['rounds']} rounds of {result['steps']} steps, median round: base {ms['base']:.1f} ms a step, "
            f"controller {ms['controller']:.1f} ms (its decision alone {ms['decision']:.3f} ms).",
            f"**Controller / base: {result['ratio_median']:.3f}x** (rounds: "
            + ", ".join(f"{r:.3f}" for r in result["ratios"])
            + f"); target <= 1.10x: {verdict}.",
            f"The environment's gradient check: base {ms['base']:.1f} ms a step against {ms[UNCHECKED]:.1f} ms "
            f"without it, **{result['check_ratio_median']:.3f}x** (rounds: "
            + ", ".join(f"{r:.3f}" for r in result["check_ratios"])
            + ").",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--config", choices=sorted(CONFIGS), default=DEFAULT_CONFIG)
    parser.add_argument("--out", type=Path, help="append the report here; JSON beside it")
    args = parser.parse_args(argv)
    result = measure(args.device, args.steps, args.rounds, args.config)
    text = render(result)
    print(text)
    if args.out:
        with open(args.out, "a") as out:
            out.write(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
