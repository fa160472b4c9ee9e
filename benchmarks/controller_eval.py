"""Held-out evaluation of a meta-trained residual controller (issue 28; protocol in
benchmarks/README.md, "Controller protocol"): the controller once per test instance of its split,
paired with the best one-run method chosen on validation on the same seeds (same subset, split and
head), reported with rliable's statistics (benchmarks/stats.py).

Every run goes through the grid's cell runner (``run_training``, train.py's code path) on the
grid's environment, so the controller's runs and the grid's baselines differ only in the agent.
The one-run methods' runs are the grid's where it has them (seeds 0-2); the chosen method's runs on
the other test seeds are run here, once, into this benchmark's own results file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import grid, harness
from finetune_gym.instances import Instance, InstanceSet

RESULTS = harness.ResultsFile(grid.RESULTS_DIR / "controller_eval.jsonl")
RUNS_DIR = harness.RUNS_DIR / "controller_eval"
# The one-run methods the controller is measured against; the best on validation at each task.
POOL = ("schedulefree_adamw", "prodigy", "prodigy_layerwise", "ldog", "mechanic")
CONTROLLER = "residual_controller"
# The controllers judged here, by (trainer, the base's schedule): CMA-ES (the protocol's), PPO at
# the same budget of runs, and CMA-ES over Prodigy with cosine annealing (v2, research log).
CONTROLLERS = {
    CONTROLLER: ("cma", "constant"),
    f"{CONTROLLER}_ppo": ("ppo", "constant"),
    f"{CONTROLLER}_cosine": ("cma", "cosine"),
}
# References: run on every held-out instance and reported in their own table, never part of the
# pool the targets judge (the issue names that pool). ``prodigy_cosine`` is the controller's base
# as its authors recommend using it (prodigyopt's README: lr 1 "with cosine annealing" over the
# run), where the pool's Prodigy runs at a constant lr 1. Added on 2026-12-06, after split 1's
# held-out results (a replay of its collapsed run showed Prodigy's step estimate d growing 4x on the
# training-loss plateau before the collapse) and before any of split 2's.
# Each is a grid method (benchmarks/grid.py), run here on the held-out instances' seeds; the value
# is how the report describes it.
REFERENCES = {
    "prodigy_cosine": "Prodigy with cosine annealing to 0 over the run, as its authors recommend using "
    "it (the pool's Prodigy runs at a constant rate)"
}

# The step-size noise test (benchmarks/README.md, "Controller protocol", declared 2026-12-07 before
# any of its runs): is Prodigy with per-step, per-layer noise on its step (``prodigy_jitter``, a grid
# method) better than Prodigy, paired on every held-out instance? Split 1 first, then split 2.
NOISE_TEST, NOISE_BASE = "prodigy_jitter", "prodigy"


# How the report names them.
LABELS = {
    CONTROLLER: "Controller",
    f"{CONTROLLER}_ppo": "Controller trained by PPO",
    f"{CONTROLLER}_cosine": "Controller over Prodigy with cosine annealing (v2)",
}


# The controllers' training folders (benchmarks/controller.py writes them, kept in the repository).
RUNS = harness.RESULTS_DIR / "controller"


def run_name(
    instance_set: str, split: str, seed: int, trainer: str = "cma", schedule: str = "constant"
) -> str:
    """A training run's folder name: the search's, with ``-cosine`` over a cosine base, with
    ``-ppo`` for PPO's."""
    return (
        f"{Path(instance_set).stem}-split{split}-s{seed}"
        + ("" if schedule == "constant" else f"-{schedule}")
        + ("" if trainer == "cma" else f"-{trainer}")
    )


def controller_file(split: str, seed: int = 0, instance_set: str = "v1", method: str = CONTROLLER) -> Path:
    """Where benchmarks/controller.py leaves the controller ``method`` (a key of
    :data:`CONTROLLERS`) trained for ``split``."""
    from finetune_gym.agents.meta_train import CONTROLLER as CONTROLLER_FILE

    return RUNS / run_name(instance_set, split, seed, *CONTROLLERS[method]) / CONTROLLER_FILE


def judged_controllers(split: str) -> list[str]:
    """The controllers judged on ``split``: the search's always (the protocol's), PPO's once it has
    been trained."""
    return [m for m in CONTROLLERS if m == CONTROLLER or controller_file(split, method=m).is_file()]


def test_instances(split: str, instance_set: str = "v1") -> list[Instance]:
    return InstanceSet.load(instance_set).split(split, "test")


def cell_key(split: str, method: str, instance: Instance) -> str:
    return f"split{split}/{method}/{instance.dataset}/r{instance.sampling_rate:g}/s{instance.seed}"


def best_one_run(done: dict[str, dict[str, Any]], dataset: str, rate: float) -> tuple[str | None, list[str]]:
    """The pool's method with the best mean validation accuracy over the grid's seeds at (dataset,
    rate), among the methods whose grid cells are all done; and the methods left out for lack of
    them."""
    complete = [
        m
        for m in POOL
        if all(grid.cell_id(m, rate, s, dataset) in done for s in grid.seeds_on(dataset, rate))
    ]
    return grid.best_on_val(done, complete, rate, dataset) if complete else None, [
        m for m in POOL if m not in complete
    ]


def incomplete_pools(split: str, done: dict[str, dict[str, Any]]) -> dict[tuple[str, float], list[str]]:
    """Per test task of ``split`` whose one-run pool the grid has not finished: the methods left out
    (the val-chosen method may change once they have run)."""
    out = {}
    for instance in test_instances(split):
        _, left_out = best_one_run(done, instance.dataset, instance.sampling_rate)
        if left_out:
            out[(instance.dataset, instance.sampling_rate)] = left_out
    return out


def run_config(split: str, method: str, instance: Instance, done: dict[str, dict[str, Any]]):
    """A controller's run (``method`` in :data:`CONTROLLERS`) or a one-run method's on ``instance``:
    the grid's configuration of that cell, with the controller as the agent."""
    from finetune_gym.agents.config import RunConfig

    if method not in CONTROLLERS:
        return grid.run_config(method, instance.sampling_rate, instance.seed, done, instance.dataset)
    env = grid.cell_env(instance.dataset, instance.sampling_rate)
    return RunConfig(
        env_id="FineTune-CIFARResNet-v0",
        algo=CONTROLLER,
        seed=instance.seed,
        episodes=1,
        epochs_per_episode=instance.epochs,
        ema=None,
        env_kwargs=env,
        agent_kwargs={"policy": str(controller_file(split, method=method))},
        label=method,
    )


def run_cell(
    split: str, method: str, instance: dict[str, Any], done: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One run (resumed from its checkpoint, or read when finished): its results line."""
    inst = Instance(**instance)
    key = cell_key(split, method, inst)
    results = harness.run_or_load(RUNS_DIR / key, lambda: run_config(split, method, inst, done))
    return {"cell": key, "split": split, "method": method, "instance": inst.id, "results": results}


def jobs(
    split: str, done: dict[str, dict[str, Any]], finished: dict[str, dict[str, Any]]
) -> list[harness.Job]:
    """The runs still missing: the controller (and the PPO-trained one, once it exists) and the
    references on every test instance, and the best one-run method on the test seeds the grid lacks."""
    out = []
    trained = judged_controllers(split)
    for instance in test_instances(split):
        wanted = [*trained, *REFERENCES]
        best, _ = best_one_run(done, instance.dataset, instance.sampling_rate)
        if (
            best is not None
            and grid.cell_id(best, instance.sampling_rate, instance.seed, instance.dataset) not in done
        ):
            wanted.append(best)
        for method in wanted:
            key = cell_key(split, method, instance)
            if key not in finished:
                out.append(harness.Job(key, run_cell, (split, method, instance.to_json(), done)))
    return out


def test_accuracy(
    split: str,
    method: str,
    instance: Instance,
    done: dict[str, dict[str, Any]],
    finished: dict[str, dict[str, Any]],
) -> float | None:
    """A run's test accuracy in %: this benchmark's line, else the grid's cell."""
    line = finished.get(cell_key(split, method, instance))
    if line is None and method not in CONTROLLERS:
        line = done.get(grid.cell_id(method, instance.sampling_rate, instance.seed, instance.dataset))
    return None if line is None else 100 * line["results"]["final_test_accuracy"]


def paired_gains(
    split: str, done, finished, controller: str = CONTROLLER, against: str | None = None
) -> dict[tuple[str, float], dict[str, Any]]:
    """Per task (dataset, rate): the chosen method (``against`` if given: a reference), and each
    seed's (controller, method) accuracies."""
    tasks: dict[tuple[str, float], dict[str, Any]] = {}
    for instance in test_instances(split):
        task = tasks.setdefault((instance.dataset, instance.sampling_rate), {"pairs": {}, "missing": []})
        best, left_out = (
            best_one_run(done, instance.dataset, instance.sampling_rate) if against is None else (against, [])
        )
        task["best"], task["left_out"] = best, left_out
        mine = test_accuracy(split, controller, instance, done, finished)
        theirs = None if best is None else test_accuracy(split, best, instance, done, finished)
        if mine is None or theirs is None:
            task["missing"].append(instance.seed)
        else:
            task["pairs"][instance.seed] = (mine, theirs)
    return tasks


def noise_jobs(
    split: str, done: dict[str, dict[str, Any]], finished: dict[str, dict[str, Any]]
) -> list[harness.Job]:
    """The noise test's runs still missing on ``split``: :data:`NOISE_TEST` on every held-out
    instance, and :data:`NOISE_BASE` where neither the grid nor this benchmark has run it."""
    out = []
    for instance in test_instances(split):
        for method in (NOISE_TEST, NOISE_BASE):
            if test_accuracy(split, method, instance, done, finished) is None:
                out.append(
                    harness.Job(
                        cell_key(split, method, instance), run_cell, (split, method, instance.to_json(), done)
                    )
                )
    return out
