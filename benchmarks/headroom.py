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
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python benchmarks/headroom.py): the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import grid, harness  # noqa: E402
from benchmarks import headroom_study as study  # noqa: E402
from benchmarks.headroom_report import REPORT_FILE, write_report  # noqa: E402


def run_setting(setting: str, pool: Any, workers: int, n_trials: int) -> None:
    """The search, one trial at a time (TPE asks each trial from every finished one; a trial's
    seeds run in parallel), then the best trial and the base on every confirmation seed."""
    done = grid.load_done()
    method = study.base_method(setting, done)
    if method is None:
        print(f"{setting}: the grid's no-tuning pool is not complete there yet; skipped")
        return
    code = harness.code_version()
    if study.engine_of(setting, study.load_lines()) == "tune":
        print(f"{setting}: its search runs under headroom_tune.py (Ray Tune); continue it there")
        return
    if not study.seed_trial_zero(setting, method, done, code):
        print(f"{setting}: the base's grid runs on seeds {study.SEARCH_SEEDS} are missing; skipped")
        return
    started = time.time()
    lines_of: dict[str, dict[str, Any]] = {}  # a job's key -> its results line, less the results

    def job(kind: str, seed: int, trial: int | None = None, params: dict[str, Any] | None = None):
        folder = f"t{trial}" if kind == "run" else "base"
        run_dir = str(study.RUNS_DIR / setting / folder / f"s{seed}")
        key = f"{setting}/{folder}/s{seed}"
        lines_of[key] = {"setting": setting, "kind": kind, "seed": seed, "base": method, "code": code}
        if kind == "run":
            lines_of[key].update(trial=trial, params=params)
            return harness.Job(key, study.run_one, (setting, method, params, seed, run_dir))
        return harness.Job(key, study.run_base, (setting, method, seed, run_dir, done))

    def ready() -> Iterator[harness.Job]:
        lines = study.load_lines()
        search, trials, finished = study.study_of(setting, method, lines, done)
        if len(finished) >= n_trials:  # the confirmation
            best = study.ranked(finished)[0]
            for seed in study.CONFIRM_SEEDS:
                if seed not in trials[best]["runs"]:
                    yield job("run", seed, best, trials[best]["params"])
                if study.base_results(setting, method, seed, done, lines) is None:
                    yield job("base", seed)
            return
        number, params, new = study.next_trial(search, trials, finished)
        if new:
            study.append(
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
        yield from (job("run", seed, number, params) for seed in study.SEARCH_SEEDS if seed not in runs)

    def finished(done_job: harness.Job, results: dict[str, Any]) -> None:
        line = {**lines_of[done_job.key], "results": results}
        study.append(line)
        trial = study.trials_of(setting, study.load_lines()).get(line.get("trial", -1))
        searching = trial is not None and set(trial["runs"]) <= set(study.SEARCH_SEEDS)
        if searching and study.score(trial) is not None:
            print(
                f"[{time.time() - started:6.0f} s] {setting} trial {line['trial']}: val "
                f"{100 * study.score(trial):.2f}% ({study.describe(line['params'])})",
                flush=True,
            )
            write_report()
        elif not searching:
            print(f"{setting}: confirmation {line['kind']} seed {line['seed']} done", flush=True)

    harness.run_jobs(pool, ready, finished, workers)
    write_report()


def cmd_run(args: argparse.Namespace) -> None:
    with harness.pool_from_args(args) as pool:
        for setting in args.settings:
            run_setting(setting, pool, args.workers, args.trials)
    write_report()


def cmd_status(args: argparse.Namespace) -> None:
    done, lines = grid.load_done(), study.load_lines()
    for setting in study.SETTINGS:
        method = study.base_method(setting, done)
        if method is None:
            print(f"{setting}: waiting for the grid's no-tuning pool")
            continue
        _, trials, finished = study.study_of(setting, method, lines, done)
        print(f"{setting}: base {method}, {len(finished)} of {study.N_TRIALS} trials")


def cmd_report(args: argparse.Namespace) -> None:
    write_report()
    print(REPORT_FILE.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the study's trials and confirmations (resumable)")
    settings = list(study.SETTINGS)
    run.add_argument("--settings", nargs="*", default=settings, choices=settings)
    harness.add_pool_options(run, workers=2, threads=1)
    run.add_argument("--trials", type=int, default=study.N_TRIALS, help=argparse.SUPPRESS)  # tests only
    run.set_defaults(func=cmd_run)
    sub.add_parser("report", help="write results/headroom.md").set_defaults(func=cmd_report)
    sub.add_parser("status", help="trials done per setting").set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
