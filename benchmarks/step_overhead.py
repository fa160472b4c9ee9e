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
import sys
from pathlib import Path

import torch

if not __package__:  # run as a file (python benchmarks/step_overhead.py): the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import timing  # noqa: E402
from benchmarks.overhead_full_run import full_run_benchmark  # noqa: E402
from benchmarks.overhead_measures import (  # noqa: E402
    agent_benchmark,
    peak_memory,
    step_benchmark,
    threads_under_load,
)
from benchmarks.overhead_setup import CPU_CONFIGS, GPU_CONFIGS, OPTIMIZER_CONFIGS  # noqa: E402
from benchmarks.step_overhead_report import render  # noqa: E402


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
            f"### Threads under load: {CPU_CONFIGS[0]['name']}, env.step reward=next_batch ({timing.machine('cpu')})",
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
            "machine": timing.machine(device),
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
