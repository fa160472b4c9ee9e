"""The controller report's figures (benchmarks/controller_report.py): the held-out runs'
performance profile (rliable's, with its 95% band) and the meta-training's generations. Apart
so that the report's module holds its tables and targets, and matplotlib loads only to draw."""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks import controller_eval as evaluation
from benchmarks import stats
from benchmarks.controller_eval import CONTROLLER, CONTROLLERS


def profile_scores(split: str, done, finished) -> dict[str, dict[tuple[str, float], list[float]]]:
    """Per method (each trained controller with runs, and "best one-run (val)"), per task, each
    run's test accuracy minus the mean test accuracy of the task's best one-run method on the
    same seeds: the normalised score of the performance profile, in points."""
    out: dict[str, dict[tuple[str, float], list[float]]] = {}
    for controller in CONTROLLERS:
        for task, t in evaluation.paired_gains(split, done, finished, controller).items():
            if not t["pairs"]:
                continue
            reference = statistics.mean(b for _, b in t["pairs"].values())
            out.setdefault(controller, {})[task] = [a - reference for a, _ in t["pairs"].values()]
            if controller == CONTROLLER:
                out.setdefault("best one-run (val)", {})[task] = [
                    b - reference for _, b in t["pairs"].values()
                ]
    return out


def plot_profile(split: str, done, finished, path: Path) -> Path | None:
    """rliable's performance profile of the held-out runs (benchmarks/stats.py), with its 95% band;
    None before any pair exists."""
    scores = profile_scores(split, done, finished)
    if not scores:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = [v for by_task in scores.values() for runs in by_task.values() for v in runs]
    taus = np.linspace(min(values) - 0.5, max(values) + 0.5, 201)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, by_task in scores.items():
        fraction, low, high = stats.performance_profile(by_task, taus)
        ax.plot(taus, fraction, label=method)
        ax.fill_between(taus, low, high, alpha=0.2)
    ax.set_xlabel("test accuracy - the best one-run method's mean on the task (points)")
    ax.set_ylabel("fraction of runs above")
    ax.set_title(f"Split {split}: held-out runs (each task weighs the same)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_search(rows: list[dict], path: Path) -> Path:
    """The search's generations: training fitness (each generation on its own 4 instances, so
    noisy) and the distribution's mean weights, the controller that would deploy at that point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from finetune_gym.agents.residual_controller import FEATURES

    generations = [r["generation"] for r in rows]
    fig, (fitness, weights) = plt.subplots(1, 2, figsize=(10, 3.8))
    fitness.plot(generations, [100 * r["mean_gain"] for r in rows], "o-", label="mean of the candidates")
    fitness.plot(generations, [100 * r["best_gain"] for r in rows], "s--", label="best candidate")
    fitness.axhline(0.0, color="grey", lw=0.8)
    fitness.set_xlabel("generation")
    fitness.set_ylabel("paired val gain over Prodigy (points)")
    fitness.set_title("training fitness")
    fitness.legend()
    for i, name in enumerate(FEATURES):
        weights.plot(generations, [r["mean_theta"][i] for r in rows], label=name)
    weights.axhline(0.0, color="grey", lw=0.8)
    weights.set_xlabel("generation")
    weights.set_ylabel("weight (log2 multiplier per unit)")
    weights.set_title("the search's mean (the controller so far)")
    weights.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
