"""The transfer benchmark declared: its leave-one-domain-out splits, the pretraining each split
runs, the deployment cells on the GTSRB grid's configuration, and the baselines it is compared
with (the grid's own cells). The protocol is in ``transfer.py``'s docstring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import grid, harness
from finetune_gym.agents.pretrain import PretrainConfig
from finetune_gym.optimizers import DEFAULT_LR

RUNS_DIR = harness.RUNS_DIR / "transfer"
RESULTS = harness.ResultsFile(grid.RESULTS_DIR / "transfer.jsonl")
REPORT = grid.RESULTS_DIR / "transfer.md"
SPLITS = {
    # held-out dataset: (task set, deployment rates)
    "gtsrb": ("no-gtsrb", grid.RATES),
    "sign_digits": ("no-sign_digits", (0.15, 1.0)),
}
SF_LR = DEFAULT_LR["schedulefree_adamw"]  # the base of the policy's relative actions
# The protocol's own values (declared with issue 14), not the package's defaults: a benchmark keeps them.
PRETRAIN = {"runs": 60, "epochs_per_episode": 10, "threads": 1, "n_steps": 128, "seed": 0}
METHODS = {"pretrained_frozen": False, "pretrained_learn": True}
BASELINES = [
    "schedulefree_adamw",
    "prodigy",
    "cosine (best on val)",
    "uniform (best on val)",
    "layerwise_decay",
]
CONTROL = "random_sf_rel"
# What the report reads from run folders (git ignores benchmarks/runs/), kept where a clone has it.
DERIVED = grid.RESULTS_DIR / "transfer_derived.json"
PHASES = 5  # the policy's rates are summarised over fifths of the run


def pretrain_dir(task_set: str) -> Path:
    return RUNS_DIR / f"pretrain-{task_set}-s{PRETRAIN['seed']}"


def pretrain_config(task_set: str) -> PretrainConfig:
    return PretrainConfig(tasks=task_set, data_root=str(grid.SHARED), **PRETRAIN)


def ensure_policy(task_set: str) -> Path:
    """Pretrain (or resume) the split's policy; its file."""
    from finetune_gym.agents.pretrain import POLICY, pretrain
    from finetune_gym.agents.rundir import CHECKPOINT

    run_dir = pretrain_dir(task_set)
    if not (run_dir / POLICY).is_file():
        pretrain(
            pretrain_config(task_set),
            run_dir,
            resume=(run_dir / CHECKPOINT).is_file(),
            overwrite=run_dir.exists() and not (run_dir / CHECKPOINT).is_file(),
            command=f"python benchmarks/transfer.py run (pretraining {task_set})",
        )
    return run_dir / POLICY


def run_config(method: str, rate: float, seed: int, dataset: str, policy: Path):
    from finetune_gym.agents.config import RunConfig

    return RunConfig(
        env_id="FineTune-CIFARResNet-v0",
        algo="rl_tune_pretrained",
        seed=seed,
        episodes=1,
        epochs_per_episode=50,
        ema=None,
        env_kwargs=grid.cell_env(dataset, rate),
        agent_kwargs={"policy": str(policy), "learn": METHODS[method]},
        label=method,
    )


def load_done() -> dict[str, dict[str, Any]]:
    return RESULTS.by("cell")


def best_baseline(rate: float, dataset: str = "gtsrb") -> str | None:
    """Of the one-run methods the targets name (uniform and cosine at their rate chosen on
    validation, Schedule-Free AdamW), the grid method with the best mean validation accuracy at
    ``rate``; None until all their seeds are done."""
    done = grid.load_done()
    candidates = ["schedulefree_adamw"]
    for family in ("uniform", "cosine"):
        lr = grid.best_lr(done, family, rate, dataset)
        if lr is None:
            return None
        candidates.append(f"{family}_{lr:g}")
    return grid.best_on_val(done, candidates, rate, dataset)


def run_cell(method: str, rate: float, seed: int, dataset: str, policy: str) -> dict[str, Any]:
    """One deployment cell, run or resumed in a worker; its results line (the caller adds the code
    version)."""
    make = lambda: run_config(method, rate, seed, dataset, Path(policy))  # noqa: E731
    return grid.cell_line(RUNS_DIR, method, rate, seed, dataset, make)
