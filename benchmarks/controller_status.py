"""What the controller's trainers have done so far, read from their folders (``controller.py
status``): each CMA-ES search's generations, runs, hours and the core-hours it has left, with the
protocol's stopping rule (benchmarks/README.md, "Controller protocol"), and each PPO run's runs and
recent paired gains. Reads files only; runs nothing.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks import harness


def flattened(generations: list[dict[str, Any]]) -> bool | None:
    """The protocol's stopping rule (benchmarks/README.md, "Controller protocol"), once generation
    10 has run: whether the mean training fitness of generations 6-10 is not above that of 1-5 by
    more than the standard error of the difference (None before generation 10)."""
    if len(generations) < 11:
        return None
    early = [g["mean_gain"] for g in generations[1:6]]
    late = [g["mean_gain"] for g in generations[6:11]]
    error = (statistics.variance(early) / len(early) + statistics.variance(late) / len(late)) ** 0.5
    return statistics.mean(late) - statistics.mean(early) <= error


def status(folder: Path) -> list[str]:
    """One line per search: its generations done, runs, hours and last gains."""
    from finetune_gym.agents.meta_train import CONFIG, EVALUATIONS, GENERATIONS

    out = []
    for run in sorted(p for p in folder.glob("*") if (p / CONFIG).is_file()):
        config = json.loads((run / CONFIG).read_text())
        evaluations = harness.ResultsFile(run / EVALUATIONS).lines()
        hours = sum(line["wall_s"] for line in evaluations) / 3600
        generations = harness.ResultsFile(run / GENERATIONS).lines()
        summary = ""
        if generations:
            last = generations[-1]
            left = config["generations"] - len(generations)
            summary = (
                f"; generation {last['generation']}: mean gain {100 * last['mean_gain']:+.2f}, best "
                f"{100 * last['best_gain']:+.2f} points, sigma {last['sigma']:.3f}"
            )
            verdict = flattened(generations)
            if verdict is not None:  # the protocol's rule: run stops there unless told otherwise
                left = 0 if verdict else left
                summary += "; the stopping rule at generation 10: " + (
                    "flattened, the search ends there"
                    if verdict
                    else "still rising, "
                    + ("it runs to its last generation" if left else "all generations ran")
                )
            if left > 0:  # at the cost per generation measured so far (the instances drawn vary it)
                per_run, runs_per_generation = hours / len(evaluations), last["runs"] / len(generations)
                summary += (
                    f"; {left} generations left, ~{left * runs_per_generation * per_run:.1f} core-hours"
                )
        out.append(
            f"{run.name}: {len(evaluations)} runs ({hours:.2f} h of runs) of {config['generations']} generations x "
            f"{config['batch']} instances{summary}"
        )
    return out or ["no meta-training run yet"]


def ppo_progress(run: Path) -> dict[str, Any]:
    """What a PPO training folder holds, read once for the status line and the report: its
    settings, its trainer as last saved (None before its first update) and that trainer's counters,
    its episodes' and base runs' lines, and the hours of all of them."""
    from finetune_gym.agents.controller_ppo import BASES, CHECKPOINT, CONFIG, EPISODES
    from finetune_gym.agents.run_budget import read_trainer

    trainer = read_trainer(run / CHECKPOINT) if (run / CHECKPOINT).is_file() else None
    episodes = harness.ResultsFile(run / EPISODES).lines()
    bases = harness.ResultsFile(run / BASES).lines()
    return {
        "config": json.loads((run / CONFIG).read_text()),
        "trainer": trainer,
        "state": trainer["state"] if trainer else {"runs": 0},
        "episodes": episodes,
        "bases": bases,
        "hours": math.fsum(line["wall_s"] for line in [*episodes, *bases]) / 3600,
    }


def ppo_status(folder: Path) -> list[str]:
    """One line per PPO training of the controller: its runs and the mean paired gain of its last
    32 runs (a noisy training signal: each run is one instance under a sampled policy)."""
    from finetune_gym.agents.controller_ppo import CONFIG

    out = []
    for run in sorted(p for p in folder.glob("*") if (p / CONFIG).is_file()):
        progress = ppo_progress(run)
        config, state, episodes, hours = (progress[k] for k in ("config", "state", "episodes", "hours"))
        left = config["runs"] - state["runs"]
        if left > 0 and state["runs"]:  # at the cost per run measured so far
            hours_left = f", ~{left * hours / state['runs']:.1f} core-hours left"
        else:
            hours_left = ""
        gain = (
            f"; last {min(32, len(episodes))} runs' mean gain "
            f"{100 * sum(e['paired_gain'] for e in episodes[-32:]) / len(episodes[-32:]):+.2f} points"
            if episodes
            else ""
        )
        out.append(
            f"{run.name}: {state['runs']} of {config['runs']} runs (bases included; "
            f"{hours:.2f} h of runs{hours_left}){gain}"
        )
    return out
