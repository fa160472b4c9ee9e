"""Headroom study (issue 25): does ANY static per-stage learning-rate profile beat the best one-run
method by 2 points at low data? If none does, no controller can; if one does, its gain is the target.

Protocol (declared in benchmarks/README.md before any result): on each setting (GTSRB 15% and 30%,
clothing10 15%, omniglot_alphabets 15%; the GTSRB grid's source, budget, splits and test sets),
the base is the method of the grid's no-tuning pool (Schedule-Free AdamW, Prodigy, Prodigy per
layer, L-DoG) with the best mean validation accuracy over the grid's seeds, fixed once that
pool is complete. Optuna's TPE (seeded) searches a profile on top of it (agent ``stage_profile``):
per stage of the ResNet-20 (stem, layer1, layer2, layer3, head) a multiplier 2^k, k in [-3, 3],
or 0 (frozen: a yes/no choice per stage), and a time profile for all layers (constant, cosine to 0,
or a linear warm-down to 0 over the last 20%). 48 trials per setting; a trial's score is its mean
validation accuracy over seeds 0 and 1; no choice reads a test set. Trial 0 is the base itself
(every multiplier 1, constant), scored from the grid's own runs of it (the same configuration:
``tests/test_headroom.py`` checks the two give the same weights). The best trial on validation is
then run on seeds 0-4 beside the base on the same seeds (same sample, split and head): the
headroom is the mean paired test difference, with its spread; Optuna's fANOVA importances say
where the gain comes from.

Every run goes through the grid's cell runner (``run_training``, train.py's code path). Each run
is a line of benchmarks/results/headroom.jsonl (kept in the repository, the study's storage: the
Optuna study is rebuilt from it on every call, so the search resumes where it stopped; a trial
asked but not finished is asked again with the same parameters, its runs resuming from their
checkpoints).

    python benchmarks/headroom.py run --settings gtsrb/r0.15 --workers 2   # resumable, Ctrl-C safe
    python benchmarks/headroom.py report                                    # results/headroom.md
    python benchmarks/headroom.py status
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gtsrb_lowdata as grid  # noqa: E402

from finetune_gym.agents.recording import TrainingDiverged  # noqa: E402

RESULTS_FILE = grid.RESULTS_DIR / "headroom.jsonl"
REPORT_FILE = grid.RESULTS_DIR / "headroom.md"
RUNS_DIR = ROOT / "benchmarks" / "runs" / "headroom"

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
        env_kwargs={**grid.BASE_ENV, **grid.DATASETS[dataset], "sampling_rate": rate},
        agent_kwargs={"optimizer": optimizer, "lr": lr, "multipliers": multipliers, "schedule": schedule},
        label=f"headroom {setting}",
    )


# -- the study's storage: one line per run ----------------------------------------------------


def load_lines() -> list[dict[str, Any]]:
    if not RESULTS_FILE.is_file():
        return []
    return [json.loads(line) for line in RESULTS_FILE.read_text().splitlines() if line.strip()]


def append(line: dict[str, Any]) -> None:
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_FILE, "a") as handle:
        handle.write(json.dumps(line) + "\n")


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


def next_trial(study, trials, finished) -> tuple[int, dict[str, Any], bool]:
    """The trial to run next: one asked before a stop and not finished (the same parameters, its
    runs resume from their checkpoints), else a new one from the sampler (``True``)."""
    pending = [n for n in sorted(trials) if n not in finished]
    if pending:
        return pending[0], trials[pending[0]]["params"], False
    return max(trials, default=-1) + 1, study.ask(distributions()).params, True


# -- running ----------------------------------------------------------------------------------


def run_one(setting: str, method: str, params: dict[str, Any], seed: int, run_dir: str) -> dict[str, Any]:
    """One run of a profile. A profile whose rates make the loss non-finite for good (the run
    stops with TrainingDiverged) is a bad profile, not a broken study: it scores 0 (what the
    search must steer away from) and is recorded as diverged instead of stopping the study."""
    try:
        return grid.run_or_load(Path(run_dir), lambda: trial_config(setting, method, params, seed))
    except TrainingDiverged as error:
        return {"diverged": str(error), "final_val_accuracy": 0.0, "final_test_accuracy": 0.0}


def run_base(setting: str, method: str, seed: int, run_dir: str, done) -> dict[str, Any]:
    dataset, rate = SETTINGS[setting]
    return grid.run_or_load(Path(run_dir), lambda: grid.run_config(method, rate, seed, done, dataset))


def run_setting(setting: str, pool, n_trials: int) -> None:
    done = grid.load_done()
    method = base_method(setting, done)
    if method is None:
        print(f"{setting}: the grid's no-tuning pool is not complete there yet; skipped")
        return
    code = grid.code_version()
    lines = load_lines()
    if not trials_of(setting, lines):  # trial 0: the base, scored from the grid's runs of it
        runs = {s: base_results(setting, method, s, done, lines) for s in SEARCH_SEEDS}
        if any(r is None for r in runs.values()):
            print(f"{setting}: the base's grid runs on seeds {SEARCH_SEEDS} are missing; skipped")
            return
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
    started = time.time()
    while True:
        lines = load_lines()
        study, trials, finished = study_of(setting, method, lines, done)
        if len(finished) >= n_trials:
            break
        number, params, new = next_trial(study, trials, finished)
        if new:
            append(
                {
                    "setting": setting,
                    "kind": "asked",
                    "trial": number,
                    "params": params,
                    "base": method,
                    "code": code,
                }
            )
        runs = trials.get(number, {"runs": {}})["runs"]
        jobs = {
            pool.submit(
                run_one, setting, method, params, seed, str(RUNS_DIR / setting / f"t{number}" / f"s{seed}")
            ): seed
            for seed in SEARCH_SEEDS
            if seed not in runs
        }
        for future in futures.as_completed(jobs):
            seed = jobs[future]
            results = future.result()
            append(
                {
                    "setting": setting,
                    "kind": "run",
                    "trial": number,
                    "params": params,
                    "seed": seed,
                    "base": method,
                    "results": results,
                    "code": code,
                }
            )
        trial = trials_of(setting, load_lines())[number]
        print(
            f"[{time.time() - started:6.0f} s] {setting} trial {number}: val {100 * score(trial):.2f}% "
            f"({describe(params)})",
            flush=True,
        )
        write_report()
    confirm(setting, method, pool, code)
    write_report()


def confirm(setting: str, method: str, pool, code: str) -> None:
    """The best trial on validation and the base, on every confirmation seed."""
    done, lines = grid.load_done(), load_lines()
    _, trials, finished = study_of(setting, method, lines, done)
    best = max(finished, key=lambda n: (score(finished[n]), -n))
    params, runs = trials[best]["params"], trials[best]["runs"]
    jobs = {}
    for seed in CONFIRM_SEEDS:
        if seed not in runs:
            run_dir = str(RUNS_DIR / setting / f"t{best}" / f"s{seed}")
            jobs[pool.submit(run_one, setting, method, params, seed, run_dir)] = ("run", seed)
        if base_results(setting, method, seed, done, lines) is None:
            run_dir = str(RUNS_DIR / setting / "base" / f"s{seed}")
            jobs[pool.submit(run_base, setting, method, seed, run_dir, done)] = ("base", seed)
    for future in futures.as_completed(jobs):
        kind, seed = jobs[future]
        line = {
            "setting": setting,
            "kind": kind,
            "seed": seed,
            "base": method,
            "results": future.result(),
            "code": code,
        }
        if kind == "run":
            line.update(trial=best, params=params)
        append(line)
        print(f"{setting}: confirmation {kind} seed {seed} done", flush=True)


# -- report -----------------------------------------------------------------------------------


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


def setting_report(setting: str, done, lines) -> list[str]:
    method = base_method(setting, done)
    out = [f"## {setting.replace('/r', ' ')}", ""]
    if method is None:
        return [*out, "Not started: the grid's no-tuning pool is not complete here yet.", ""]
    study, trials, finished = study_of(setting, method, lines, done)
    out.append(
        f"Base (best no-tuning method on validation): **{method}**. Trials finished: "
        f"{len(finished)} of {N_TRIALS} (trial 0 is the base){'' if len(finished) >= N_TRIALS else '; the search goes on'}."
    )
    if not finished:
        return [*out, ""]
    ranked = sorted(finished, key=lambda n: (-score(finished[n]), n))
    out += [
        "",
        "| trial | val (seeds 0, 1) | profile (stage multipliers of the base; time) |",
        "|---|---|---|",
    ]
    for number in ranked[:8]:
        out.append(
            f"| {number} | {100 * score(finished[number]):.2f} | {describe(finished[number]['params'])} |"
        )
    if 0 in finished:
        out.append(f"| 0 (base) | {100 * score(finished[0]):.2f} | {describe(finished[0]['params'])} |")
    weights = importances(study)
    unfrozen = unfrozen_importances(finished)
    if unfrozen:
        out += [
            "",
            f"fANOVA importances over the {unfrozen[1]} trials that froze no stage (multipliers and time "
            "profile only): " + ", ".join(f"{k} {v:.2f}" for k, v in unfrozen[0].items()),
        ]
    if weights:
        out += [
            "",
            "fANOVA importances (share of the validation score's variance over the trials): "
            + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()),
        ]
    best = ranked[0]
    pairs = []
    for seed in CONFIRM_SEEDS:
        mine = trials[best]["runs"].get(seed)
        base = base_results(setting, method, seed, done, lines)
        if mine is not None and base is not None:
            pairs.append((seed, mine["final_test_accuracy"], base["final_test_accuracy"]))
    out.append("")
    if len(finished) < N_TRIALS:
        out.append(f"Confirmation waits for the {N_TRIALS} trials (the best so far is trial {best}).")
    elif len(pairs) < len(CONFIRM_SEEDS):
        out.append(f"Confirmation of trial {best}: {len(pairs)} of {len(CONFIRM_SEEDS)} seeds paired so far.")
    if pairs and len(finished) >= N_TRIALS:
        diffs = [100 * (a - b) for _, a, b in pairs]
        mine = [100 * a for _, a, _ in pairs]
        theirs = [100 * b for _, _, b in pairs]
        spread = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        out += [
            f"Test accuracy on seeds {[s for s, *_ in pairs]}: profile (trial {best}) "
            f"{statistics.mean(mine):.1f} ± {statistics.stdev(mine) if len(mine) > 1 else 0:.1f}, "
            f"base {statistics.mean(theirs):.1f} ± {statistics.stdev(theirs) if len(theirs) > 1 else 0:.1f}; "
            f"paired differences {', '.join(f'{d:+.1f}' for d in diffs)}.",
            f"**Headroom: {statistics.mean(diffs):+.1f} points (std of the paired differences {spread:.1f}).**",
        ]
        if len(pairs) == len(CONFIRM_SEEDS):
            low = statistics.mean(diffs) - spread
            verdict = statistics.mean(diffs) >= VERDICT_POINTS and low > 0
            out.append(
                f"Verdict: {'a' if verdict else 'no'} static per-stage profile beats the base by "
                f">= {VERDICT_POINTS:g} points with the paired spread's lower end above 0 "
                f"(mean - std = {low:+.1f})."
            )
    return [*out, ""]


def write_report() -> None:
    done, lines = grid.load_done(), load_lines()
    text = [
        "# Headroom of static per-stage learning-rate profiles (issue 25)",
        "",
        'Protocol: benchmarks/README.md ("Headroom protocol") and benchmarks/headroom.py\'s docstring. '
        "Accuracies in %, validation for every choice, test only in the confirmation.",
        "",
    ]
    for setting in SETTINGS:
        text += setting_report(setting, done, lines)
    REPORT_FILE.write_text("\n".join(text))


def cmd_run(args: argparse.Namespace) -> None:
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(
        args.workers, mp_context=context, initializer=grid._init_worker, initargs=(args.threads,)
    ) as pool:
        for setting in args.settings:
            run_setting(setting, pool, args.trials)
    write_report()


def cmd_status(args: argparse.Namespace) -> None:
    done, lines = grid.load_done(), load_lines()
    for setting in SETTINGS:
        method = base_method(setting, done)
        if method is None:
            print(f"{setting}: waiting for the grid's no-tuning pool")
            continue
        _, trials, finished = study_of(setting, method, lines, done)
        print(f"{setting}: base {method}, {len(finished)} of {N_TRIALS} trials")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the study's trials and confirmations (resumable)")
    run.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    run.add_argument("--workers", type=int, default=2, help="runs in parallel (a trial's seeds)")
    run.add_argument("--threads", type=int, default=1, help="torch threads per run")
    run.add_argument("--trials", type=int, default=N_TRIALS, help=argparse.SUPPRESS)  # tests only
    run.set_defaults(func=cmd_run)
    sub.add_parser("report", help="write results/headroom.md").set_defaults(func=cmd_report)
    sub.add_parser("status", help="trials done per setting").set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    args.func(args)


def cmd_report(args: argparse.Namespace) -> None:
    write_report()
    print(REPORT_FILE.read_text())


if __name__ == "__main__":
    main()
