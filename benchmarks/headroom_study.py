"""The headroom study's declaration and storage: its settings, the search space of per-stage
profiles, each trial's run configuration, and the Optuna study rebuilt from the results file (the
study's storage). The protocol is in ``headroom.py`` (the command line) and benchmarks/README.md."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks import grid, harness
from finetune_gym.agents.recording import TrainingDiverged

RESULTS = harness.ResultsFile(grid.RESULTS_DIR / "headroom.jsonl")
RUNS_DIR = harness.RUNS_DIR / "headroom"

SETTINGS: dict[str, tuple[str, float]] = {
    "gtsrb/r0.15": ("gtsrb", 0.15),
    "gtsrb/r0.3": ("gtsrb", 0.3),
    "clothing10/r0.15": ("clothing10", 0.15),
    "omniglot_alphabets/r0.15": ("omniglot_alphabets", 0.15),
}
N_TRIALS = 48
SEARCH_SEEDS = (0, 1)
CONFIRM_SEEDS = (0, 1, 2, 3, 4)
STAGES = ("stem", "layer1", "layer2", "layer3", "head")
PROFILES = ("constant", "cosine", "warmdown")
LOG2_RANGE = (-3.0, 3.0)
SAMPLER_SEED = 25  # the number: fixed before any trial
VERDICT_POINTS = 2.0
# The no-tuning pool the base is chosen from, as the protocol declared it (the grid's pool has
# grown since: Mechanic joined it after the protocol; the base's choice stays the declared one).
POOL = ("schedulefree_adamw", "prodigy", "prodigy_layerwise", "ldog")


# -- the search space ------------------------------------------------------------------------


def distributions() -> dict[str, Any]:
    import optuna

    space: dict[str, Any] = {}
    for stage in STAGES:
        space[f"{stage}_log2"] = optuna.distributions.FloatDistribution(*LOG2_RANGE)
        space[f"{stage}_frozen"] = optuna.distributions.CategoricalDistribution([False, True])
    space["time"] = optuna.distributions.CategoricalDistribution(list(PROFILES))
    return space


BASE_PARAMS: dict[str, Any] = {
    **{f"{stage}_log2": 0.0 for stage in STAGES},
    **{f"{stage}_frozen": False for stage in STAGES},
    "time": "constant",
}


def profile(params: dict[str, Any]) -> tuple[dict[str, float], str]:
    """A trial's parameters as stage_profile's ``multipliers`` and ``schedule``."""
    multipliers = {
        stage: 0.0 if params[f"{stage}_frozen"] else float(2.0 ** params[f"{stage}_log2"]) for stage in STAGES
    }
    return multipliers, params["time"]


def describe(params: dict[str, Any]) -> str:
    multipliers, schedule = profile(params)
    parts = [f"{s} {'0' if m == 0 else f'{m:.3g}'}" for s, m in multipliers.items()]
    return ", ".join(parts) + f"; {schedule}"


# -- the base, from the grid ------------------------------------------------------------------


def base_method(setting: str, done: dict[str, dict[str, Any]]) -> str | None:
    """The no-tuning method with the best mean validation accuracy, once the pool is complete."""
    dataset, rate = SETTINGS[setting]
    return grid.best_on_val(done, POOL, rate, dataset)


def base_optimizer(method: str) -> tuple[str, float]:
    """A no-tuning method as stage_profile's (optimizer, rate): its published default."""
    from finetune_gym.optimizers import DEFAULT_LR

    return method, DEFAULT_LR[method]


def trial_config(setting: str, method: str, params: dict[str, Any], seed: int):
    from finetune_gym.agents.config import RunConfig

    dataset, rate = SETTINGS[setting]
    optimizer, lr = base_optimizer(method)
    multipliers, schedule = profile(params)
    return RunConfig(
        env_id="FineTune-CIFARResNet-v0",
        algo="stage_profile",
        seed=seed,
        episodes=1,
        epochs_per_episode=50,
        ema=None,
        env_kwargs=grid.cell_env(dataset, rate),
        agent_kwargs={"optimizer": optimizer, "lr": lr, "multipliers": multipliers, "schedule": schedule},
        label=f"headroom {setting}",
    )


# -- the study's storage: one line per run ----------------------------------------------------


def load_lines() -> list[dict[str, Any]]:
    return RESULTS.lines()


def append(line: dict[str, Any]) -> None:
    RESULTS.append(line)


def trials_of(setting: str, lines: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Trial number -> {"params", "runs": {seed: results}} (asked trials without runs included)."""
    trials: dict[int, dict[str, Any]] = {}
    for line in lines:
        if line["setting"] != setting or line["kind"] not in ("asked", "run"):
            continue
        trial = trials.setdefault(line["trial"], {"params": line["params"], "runs": {}})
        if line["kind"] == "run":
            trial["runs"][line["seed"]] = line["results"]
    return trials


def engine_of(setting: str, lines: list[dict[str, Any]]) -> str | None:
    """Which engine runs the setting's search: ``"optuna"`` (headroom.py run: its asked trials),
    ``"tune"`` (headroom_tune.py), or None before any trial but the base. A search keeps one."""
    mine = [line for line in lines if line["setting"] == setting]
    if any(line.get("engine", "").startswith("tune") for line in mine):
        return "tune"
    if any(line["kind"] == "asked" for line in mine):
        return "optuna"
    return None


def seed_trial_zero(setting: str, method: str, done: dict[str, dict[str, Any]], code: str) -> bool:
    """Trial 0, the base itself, scored from the grid's runs of it; False if they are missing."""
    lines = load_lines()
    if trials_of(setting, lines):
        return True
    runs = {s: base_results(setting, method, s, done, lines) for s in SEARCH_SEEDS}
    if any(r is None for r in runs.values()):
        return False
    for seed, results in runs.items():
        append(
            {
                "setting": setting,
                "kind": "run",
                "trial": 0,
                "params": BASE_PARAMS,
                "seed": seed,
                "base": method,
                "results": results,
                "from": "gtsrb_lowdata",
                "code": code,
            }
        )
    return True


def score(trial: dict[str, Any]) -> float | None:
    """Mean validation accuracy over the search seeds; None until all have run."""
    runs = trial["runs"]
    if any(seed not in runs for seed in SEARCH_SEEDS):
        return None
    return statistics.mean(runs[seed]["final_val_accuracy"] for seed in SEARCH_SEEDS)


def base_results(setting: str, method: str, seed: int, done, lines) -> dict[str, Any] | None:
    """The base's run on ``seed``: the grid's cell, or this study's own run of it."""
    dataset, rate = SETTINGS[setting]
    cell = done.get(grid.cell_id(method, rate, seed, dataset))
    if cell is not None:
        return cell["results"]
    for line in lines:
        if line["setting"] == setting and line["kind"] == "base" and line["seed"] == seed:
            return line["results"]
    return None


def study_of(setting: str, method: str, lines, done):
    """The Optuna study rebuilt from the results file, trial 0 (the base) included."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = trials_of(setting, lines)
    finished = {n: t for n, t in trials.items() if score(t) is not None}
    sampler = optuna.samplers.TPESampler(seed=SAMPLER_SEED + len(finished))
    study = optuna.create_study(direction="maximize", sampler=sampler, study_name=setting)
    space = distributions()
    for number in sorted(finished):
        study.add_trial(
            optuna.trial.create_trial(
                params=finished[number]["params"], distributions=space, value=score(finished[number])
            )
        )
    return study, trials, finished


def ranked(finished: dict[int, dict[str, Any]]) -> list[int]:
    """Finished trials, best validation score first (the earlier trial first on a tie)."""
    return sorted(finished, key=lambda n: (-score(finished[n]), n))


def confirmation(setting: str, done, lines) -> tuple[str, int, list[tuple[int, float, float]]] | None:
    """The study's answer once its trials are done: the base method, the best trial on validation,
    and per confirmation seed (seed, the profile's test accuracy, the base's); None before."""
    method = base_method(setting, done)
    if method is None:
        return None
    _, trials, finished = study_of(setting, method, lines, done)
    if len(finished) < N_TRIALS:
        return None
    best = ranked(finished)[0]
    return method, best, confirmation_pairs(setting, method, trials[best], done, lines)


def confirmation_pairs(setting: str, method: str, trial, done, lines) -> list[tuple[int, float, float]]:
    """Per confirmation seed run so far: (seed, ``trial``'s test accuracy, the base's)."""
    pairs = []
    for seed in CONFIRM_SEEDS:
        mine = trial["runs"].get(seed)
        base = base_results(setting, method, seed, done, lines)
        if mine is not None and base is not None:
            pairs.append((seed, mine["final_test_accuracy"], base["final_test_accuracy"]))
    return pairs


def next_trial(study, trials, finished) -> tuple[int, dict[str, Any], bool]:
    """The trial to run next: one asked before a stop and not finished (the same parameters, its
    runs resume from their checkpoints), else a new one from the sampler (``True``)."""
    pending = [n for n in sorted(trials) if n not in finished]
    if pending:
        return pending[0], trials[pending[0]]["params"], False
    return max(trials, default=-1) + 1, study.ask(distributions()).params, True


def importances(study) -> dict[str, float] | None:
    import optuna

    if len(study.trials) < 10:
        return None
    return optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )


def unfrozen_importances(finished: dict[int, dict[str, Any]]) -> tuple[dict[str, float], int] | None:
    """fANOVA over the trials that froze no stage, on the multipliers and the time profile alone:
    where a working profile's gain comes from (over all trials, the freezes that break a run
    dominate the variance)."""
    import optuna

    space = {k: v for k, v in distributions().items() if not k.endswith("_frozen")}
    kept = [t for t in finished.values() if not any(t["params"][f"{s}_frozen"] for s in STAGES)]
    study = optuna.create_study(direction="maximize")
    for trial in kept:
        params = {k: trial["params"][k] for k in space}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=score(trial)))
    weights = importances(study)  # None under its minimum of trials
    return None if weights is None else (weights, len(kept))


# -- the runs (in worker processes) ---------------------------------------------------------


def run_one(setting: str, method: str, params: dict[str, Any], seed: int, run_dir: str) -> dict[str, Any]:
    """One run of a profile. A profile whose rates make the loss non-finite for good (the run
    stops with TrainingDiverged) is a bad profile, not a broken study: it scores 0 (what the
    search must steer away from) and is recorded as diverged instead of stopping the study."""
    try:
        return harness.run_or_load(Path(run_dir), lambda: trial_config(setting, method, params, seed))
    except TrainingDiverged as error:
        return {"diverged": str(error), "final_val_accuracy": 0.0, "final_test_accuracy": 0.0}


def run_base(setting: str, method: str, seed: int, run_dir: str, done) -> dict[str, Any]:
    dataset, rate = SETTINGS[setting]
    return harness.run_or_load(Path(run_dir), lambda: grid.run_config(method, rate, seed, done, dataset))
