"""Population Based Training as a multi-run baseline (issue 27): Ray Tune's PBT over a multiplier of
the base's rate and one per stage, members exploiting each other through the environment's exact
``get_state``/``set_state``.

Protocol (declared in benchmarks/README.md, "PBT protocol", before any PBT result): per setting
(GTSRB 15% and 30%, clothing10 15%) and seed (0-2), 8 members on the headroom study's base,
synchronous PBT every 5 epochs of the grid's 50, scored on validation; the member with the best
final validation accuracy is the result and the only one that reads the test set. Reported as a
method of 8 runs.

    python benchmarks/pbt.py run --settings gtsrb/r0.15 --seeds 0 1 2   # resumable (Tune's restore)
    python benchmarks/pbt.py report                                     # results/pbt.md
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python benchmarks/pbt.py): the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import grid, harness, pbt_report  # noqa: E402
from benchmarks import headroom_study as study  # noqa: E402

RESULTS = harness.ResultsFile(grid.RESULTS_DIR / "pbt.jsonl")
RUNS_DIR = harness.RUNS_DIR / "pbt"
SETTINGS = ("gtsrb/r0.15", "gtsrb/r0.3", "clothing10/r0.15")
SEEDS = (0, 1, 2)
POPULATION, INTERVAL, EPOCHS = 8, 5, 50
# A population with no result for this long is stuck (a restore that hangs): it starts over.
STALL_S = 900
KNOBS = ("base", *study.STAGES)  # a multiplier of the base's rate, and one per stage
MEMBER_FILE = "member.pt"


def setting_env(setting: str, seed: int) -> dict[str, Any]:
    """The grid's environment for ``setting`` and ``seed`` (its sample, split and head)."""
    dataset, rate = study.SETTINGS[setting]
    env = {**grid.cell_env(dataset, rate), "seed": seed}
    return {"env_id": "FineTune-CIFARResNet-v0", "env_kwargs": env}


def _build(config: dict[str, Any]):
    """The member's environment and its fixed action: the base's rate times ``config["base"]``,
    each stage's share times its own multiplier."""
    import gymnasium as gym

    import finetune_gym  # noqa: F401  (registers the ids)
    from finetune_gym.agents.baselines import StageProfile

    optimizer, lr = config["optimizer"], config["lr"] * config["base"]
    profile = StageProfile(config["seed"], optimizer, lr, {s: config[s] for s in study.STAGES}, "constant")
    kwargs = {**config["env_kwargs"], **profile.env_overrides(), "epochs_per_episode": config["epochs"]}
    env = gym.make(config["env_id"], **kwargs).unwrapped
    profile.bind(env.n_layers, env.lr_map.rates, env.layer_names)
    return env, profile.action()


def member(config: dict[str, Any]) -> None:
    """A PBT member (Tune's function trainable): fine-tune ``config["interval"]`` epochs at a time,
    report validation accuracy with a checkpoint of the environment's exact state; a member Tune
    restores (its own checkpoint, or a better member's after an exploit) continues from it."""
    import torch
    from ray import tune

    from finetune_gym.agents.safe_state import plain, unplain
    from finetune_gym.storage import load_tensors

    env, action = _build(config)
    epoch, restored = 0, False
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = load_tensors(Path(folder) / MEMBER_FILE)
        env.set_state(unplain(saved["env"]))
        epoch, restored = int(saved["epoch"]), True
    else:
        env.reset(seed=config["seed"])
    # A member that took a finished member's checkpoint at the last perturbation has no epoch left:
    # it reports the state it adopted once, so that every member ends on a result of its own.
    adopted_final = restored and epoch >= config["epochs"]
    while epoch < config["epochs"] or adopted_final:
        if epoch < config["epochs"]:
            for _ in range(config["interval"] * env.steps_per_epoch):
                env.step(action)
            epoch += config["interval"]
        adopted_final = False
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"env": plain(env.get_state()), "epoch": epoch}, Path(folder) / MEMBER_FILE)
            metrics = {"val": env.evaluate("val"), "epoch": epoch, "restored": restored}
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def run_population(
    name: str,
    config: dict[str, Any],
    population: int,
    storage: Path,
    threads: int = 1,
    callbacks: list[Any] | None = None,
    stall_s: float = STALL_S,
):
    """Tune's PBT over ``population`` members (resumed when ``storage / name`` holds the
    experiment; ``callbacks``: Tune's loggers, e.g. :func:`harness.tune_callbacks`); returns the
    result grid. A restored population that stalls (no result for ``stall_s``: Tune's restore of
    synchronous PBT can hang, see :mod:`benchmarks.tune_stall`) is moved aside and run again from
    its start; a fresh one that stalls is an error."""
    import shutil
    import time

    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    from benchmarks.tune_stall import StallStopper

    random.seed(config["seed"])  # PBT's explore draws from Python's random
    space = {**config, **{k: tune.loguniform(1 / 8, 8) for k in KNOBS}}
    scheduler = PopulationBasedTraining(
        time_attr="epoch",
        perturbation_interval=config["interval"],
        hyperparam_mutations={k: tune.loguniform(1 / 8, 8) for k in KNOBS},
        quantile_fraction=0.25 if population >= 4 else 0.5,
        synch=True,
    )
    trainable = tune.with_resources(member, {"cpu": threads})
    path = storage / name
    restored = tune.Tuner.can_restore(path)
    if restored:
        # A restored experiment keeps the run configuration it started with (its loggers, its
        # stall stopper).
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="val",
                mode="max",
                scheduler=scheduler,
                num_samples=population,
                search_alg=tune.search.BasicVariantGenerator(random_state=config["seed"]),
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage),
                callbacks=callbacks or [],
                stop=StallStopper(stall_s),
                # A member that errors would hold the synchronous population at its next
                # perturbation for ever: stop the population at once with its error.
                failure_config=tune.FailureConfig(fail_fast=True),
                verbose=0,
            ),
        )
    results = tuner.fit()
    if not results.errors and all(r.metrics.get("epoch") == config["epochs"] for r in results):
        return results
    if results.errors:
        raise RuntimeError(f"PBT population {name}: a member failed: {results.errors[0]}")
    if not restored:
        raise RuntimeError(
            f"PBT population {name} stopped before its last epoch (no result for {stall_s:.0f} s)"
        )
    aside = path.with_name(f"{name}-stalled-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(path), aside)  # unread: kept only to look at what hung
    print(f"{name}: the restored population stalled; moved to {aside.name}, starting it over", flush=True)
    return run_population(name, config, population, storage, threads, callbacks, stall_s)


def test_accuracy_of_best(results, config: dict[str, Any]) -> tuple[float, float, dict[str, float]]:
    """The member with the best final validation accuracy: its (validation, test) accuracy and
    multipliers. The one place a test set is read."""
    from finetune_gym.agents.safe_state import unplain
    from finetune_gym.storage import load_tensors

    best = results.get_best_result(metric="val", mode="max", scope="last")
    knobs = {k: float(best.config[k]) for k in KNOBS}
    env, _ = _build({**config, **knobs})
    with best.checkpoint.as_directory() as folder:
        env.set_state(unplain(load_tensors(Path(folder) / MEMBER_FILE)["env"]))
    return float(best.metrics["val"]), env.evaluate("test"), knobs


def run_cell(
    setting: str, seed: int, threads: int, cores: int | None, callbacks: list[Any] | None = None
) -> dict[str, Any]:
    """One setting and seed: the population (resumed if it was stopped), then its best member's
    test accuracy; the results line."""
    import time

    method = study.base_method(setting, grid.load_done())
    if method is None:
        raise SystemExit(f"{setting}: the grid's no-tuning pool is not complete there yet")
    optimizer, lr = study.base_optimizer(method)
    config = {**setting_env(setting, seed), "seed": seed, "optimizer": optimizer, "lr": lr}
    config |= {"epochs": EPOCHS, "interval": INTERVAL}
    started = time.time()
    name = f"{setting.replace('/', '-')}-s{seed}"
    results = run_population(name, config, POPULATION, RUNS_DIR, threads, callbacks)
    val, test, knobs = test_accuracy_of_best(results, config)
    return {
        "cell": f"{setting}/s{seed}",
        "setting": setting,
        "seed": seed,
        "base": method,
        "runs": POPULATION,
        "results": {"final_val_accuracy": val, "final_test_accuracy": test, "multipliers": knobs},
        "wall_s": time.time() - started,
        "cores": cores,  # the CPUs the population ran on (wall_s x cores: its core-seconds)
        "code": harness.code_version(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the populations not yet in results/pbt.jsonl (resumable)")
    run.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    run.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    run.add_argument("--workers", type=int, default=2, help="members fine-tuning at once")
    run.add_argument("--threads", type=int, default=1, help="torch threads per member")
    run.add_argument("--address", help="a running Ray cluster ('auto' or HOST:PORT)")
    harness.add_tune_logging_options(run)
    sub.add_parser("report", help="write results/pbt.md from results/pbt.jsonl and the grid's results")
    args = parser.parse_args(argv)
    if args.command == "report":
        pbt_report.write_report(RESULTS.lines(), SETTINGS, SEEDS)
        print(f"wrote {pbt_report.REPORT_FILE}")
        return
    done = RESULTS.by("cell")
    # The CPUs the populations run on, for their cost (unknown on a cluster shared with others).
    cores = None if args.address else args.workers * args.threads
    with harness.ray_pool(args.address, args.workers, args.threads):
        for setting in args.settings:
            for seed in args.seeds:
                if f"{setting}/s{seed}" not in done:
                    loggers = harness.tune_callbacks(args.wandb_mode, args.wandb_project, "pbt")
                    line = run_cell(setting, seed, args.threads, cores, loggers)
                    RESULTS.append(line)
                    r = line["results"]
                    print(
                        f"{line['cell']}: test {100 * r['final_test_accuracy']:.2f}%, val "
                        f"{100 * r['final_val_accuracy']:.2f}%, {line['wall_s']:.0f} s",
                        flush=True,
                    )
                    pbt_report.write_report(RESULTS.lines(), SETTINGS, SEEDS)


if __name__ == "__main__":
    main()
