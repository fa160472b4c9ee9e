"""The headroom search as a Ray Tune experiment (issue 27): the same protocol (benchmarks/README.md,
"Headroom protocol") with Tune as the engine, so a search spreads over a cluster.

Optuna's TPE is the searcher (``OptunaSearch`` with the protocol's seeded sampler and space); trial 0
(the base) enters as an evaluated point, scored from the grid's runs of it; one trial at a time, as
the protocol's search runs; a trial's seeds run as Ray tasks inside the trial's placement group.
Resumable through Tune's restore. Every finished trial is written to results/headroom.jsonl in the
study's own format, so ``headroom.py report`` and ``status`` read it as before.

    python benchmarks/headroom_tune.py --settings gtsrb/r0.3 --address auto
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python benchmarks/headroom_tune.py): the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray import tune  # noqa: E402  (this engine needs the [ray] extra)

from benchmarks import grid, harness  # noqa: E402
from benchmarks import headroom_study as study  # noqa: E402

Runner = Callable[[str, str, dict[str, Any], int, str], dict[str, Any]]


def trial(config: dict[str, Any], runner: Runner = study.run_one, threads: int = 1) -> None:
    """One Tune trial: the profile on every search seed (Ray tasks in this trial's placement group),
    reported as the mean validation accuracy with each seed's results."""
    import ray

    setting, method = config["setting"], config["method"]
    params = {k: config[k] for k in study.distributions()}
    folder = study.RUNS_DIR / setting / "tune" / tune.get_context().get_trial_id()
    run = ray.remote(harness.with_threads).options(num_cpus=threads)
    refs = {
        seed: run.remote(threads, runner, setting, method, params, seed, str(folder / f"s{seed}"))
        for seed in study.SEARCH_SEEDS
    }
    runs = {seed: ray.get(ref) for seed, ref in refs.items()}
    score = statistics.mean(r["final_val_accuracy"] for r in runs.values())
    tune.report({"val": score, "runs": {str(s): r for s, r in runs.items()}})


class Record(tune.Callback):
    """Writes each finished trial to the study's results file (in the driver, as it finishes)."""

    def __init__(self, setting: str, method: str, code: str) -> None:
        self.setting, self.method, self.code = setting, method, code

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result
        number = max(study.trials_of(self.setting, study.load_lines()), default=-1) + 1
        params = {k: trial.config[k] for k in study.distributions()}
        for seed, results in sorted(result["runs"].items()):
            study.append(
                {
                    "setting": self.setting,
                    "kind": "run",
                    "trial": number,
                    "params": params,
                    "seed": int(seed),
                    "base": self.method,
                    "results": results,
                    "engine": f"tune {trial.trial_id}",
                    "code": self.code,
                }
            )
        print(f"{self.setting} trial {number}: val {100 * result['val']:.2f}% ({study.describe(params)})")


def search(
    setting: str,
    n_trials: int,
    storage: Path,
    runner: Runner = study.run_one,
    threads: int = 1,
    loggers: list[Any] | None = None,
) -> Any:
    """Tune's search of ``setting`` up to ``n_trials`` finished trials (trial 0, the base, counts),
    resumed from ``storage`` when an experiment is there (with the loggers it started with);
    ``loggers``: Tune callbacks such as :func:`harness.tune_callbacks`'s; the result grid."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    done = grid.load_done()
    method = study.base_method(setting, done)
    if method is None:
        raise SystemExit(f"{setting}: the grid's no-tuning pool is not complete there yet")
    base = [study.base_results(setting, method, s, done, study.load_lines()) for s in study.SEARCH_SEEDS]
    if any(r is None for r in base):
        raise SystemExit(f"{setting}: the base's grid runs on seeds {study.SEARCH_SEEDS} are missing")
    base_score = statistics.mean(r["final_val_accuracy"] for r in base)
    engine = study.engine_of(setting, study.load_lines())
    if engine not in (None, "tune"):
        raise SystemExit(
            f"{setting}: its search runs under headroom.py run ({engine}); a search keeps one engine, "
            "continue it there"
        )
    study.seed_trial_zero(setting, method, done, harness.code_version())
    name = setting.replace("/", "-")
    trainable = tune.with_resources(
        tune.with_parameters(trial, runner=runner, threads=threads),
        tune.PlacementGroupFactory([{"CPU": 0.01}] + [{"CPU": threads}] * len(study.SEARCH_SEEDS)),
    )
    callbacks = [Record(setting, method, harness.code_version()), *(loggers or [])]
    path = storage / name
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True).fit()
    searcher = OptunaSearch(
        space=study.distributions(),
        metric="val",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=study.SAMPLER_SEED),
        points_to_evaluate=[dict(study.BASE_PARAMS)],
        evaluated_rewards=[base_score],
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"setting": setting, "method": method},
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=1),
            num_samples=n_trials - 1,  # trial 0 is the evaluated base
            metric="val",
            mode="max",
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), callbacks=callbacks, verbose=0),
    )
    return tuner.fit()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    settings = list(study.SETTINGS)
    parser.add_argument("--settings", nargs="+", default=settings, choices=settings)
    parser.add_argument("--trials", type=int, default=study.N_TRIALS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--address", help="a running Ray cluster ('auto' or HOST:PORT)")
    harness.add_tune_logging_options(parser)
    args = parser.parse_args(argv)
    # A trial holds a sliver of a CPU while its seeds run on theirs: room for both.
    with harness.ray_pool(args.address, len(study.SEARCH_SEEDS) + 1, args.threads):
        for setting in args.settings:
            loggers = harness.tune_callbacks(args.wandb_mode, args.wandb_project, "headroom")
            search(setting, args.trials, study.RUNS_DIR / "tune", threads=args.threads, loggers=loggers)


if __name__ == "__main__":
    main()
