"""Meta-training the residual controller (issue 28) on an instance set's training part, by CMA-ES,
its candidates run as jobs of the benchmarks' harness (Ray tasks, or processes without Ray).

Protocol (declared in benchmarks/README.md, "Controller protocol", before any result): instance
set v1, split 1 (GTSRB held out) or 2 (clothing10 held out); base Prodigy at its published
setting; 8 weights from 0 (the base), CMA-ES sigma0 0.5, population 8, a batch of 4 training
instances per generation (15 epochs each), fitness the mean paired validation gain over the base
on the batch. Nothing here reads a test set or a held-out instance.

The run's folder is kept in the repository (benchmarks/results/controller/<name>/: its settings,
every evaluation, the generations' summaries and the controller), so a stopped search continues
where it stopped, in any session, from the same files.

    python benchmarks/controller.py run --split 1 --generations 20 --workers 2 --threads 1
    python benchmarks/controller.py run --split 1 --address auto --workers 16    # a Ray cluster
    python benchmarks/controller.py status
    python benchmarks/controller.py ppo --split 1 --runs 384 --workers 2   # PPO at split 1's search's budget
    python benchmarks/controller.py evaluate --split 1 --workers 2   # held-out runs (resumable)
    python benchmarks/controller.py noise --split 1 --workers 2      # the step-size noise test's runs
    python benchmarks/controller.py report                           # results/controller_eval.md
    python benchmarks/controller.py ship     # split 1's controller into the package, with its result
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python benchmarks/controller.py): the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402
from benchmarks.controller_eval import RUNS, run_name  # noqa: E402
from benchmarks.controller_status import flattened, ppo_status, status  # noqa: E402


def wandb_resume(run_dir: Path | None) -> dict[str, Any]:
    """W&B's id and resume options for a training folder: a search or a PPO run continued in a
    later session logs on to the same W&B run (the id kept in the folder, as train.py keeps its
    runs'). Called only where W&B is on (its module imports wandb)."""
    if run_dir is None:
        return {}
    from finetune_gym.agents.wandb_logging import persistent_run_id

    run_dir.mkdir(parents=True, exist_ok=True)
    return {"id": persistent_run_id(run_dir), "resume": "allow"}


class Loggers:
    """TensorBoard (``--tensorboard DIR``) and W&B (``--wandb-mode``) for a search's generations.

    A continued search replays the generations it has (:mod:`finetune_gym.agents.meta_train`);
    those already in its folder were logged when they ran (W&B goes on in the same run), so only
    the new ones are logged again."""

    def __init__(
        self,
        name: str,
        tensorboard: str | None,
        wandb_mode: str,
        project: str,
        config: dict,
        run_dir: Path | None = None,
    ) -> None:
        from finetune_gym.agents.meta_train import GENERATIONS

        self.writer = self.run = None
        self.logged = len(harness.ResultsFile(run_dir / GENERATIONS).lines()) if run_dir else 0
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(tensorboard) / name))
        if wandb_mode != "disabled":
            import wandb

            self.run = wandb.init(
                project=project,
                group="controller",
                name=name,
                mode=wandb_mode,
                config=config,
                dir=str(harness.RUNS_DIR),
                settings=wandb.Settings(silent=True, console="off"),
                **wandb_resume(run_dir),
            )

    def __call__(self, generation: int, scalars: dict[str, float]) -> None:
        if generation < self.logged:
            return
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(f"meta/{key}", value, generation)
            self.writer.flush()
        if self.run is not None:
            self.run.log({f"meta/{k}": v for k, v in scalars.items()}, step=generation)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.run is not None:
            self.run.finish()


def train_ppo(args: argparse.Namespace) -> None:
    """PPO as the controller's second trainer, at a budget of runs (compare: ``status``)."""
    from finetune_gym.agents.controller_ppo import CONTROLLER, ControllerPPOConfig, train_controller_ppo

    config = ControllerPPOConfig(
        instance_set=args.instance_set,
        split=args.split,
        optimizer=args.optimizer,
        runs=args.runs,
        seed=args.seed,
        data_root=args.data_root,
    )
    name = run_name(args.instance_set, args.split, args.seed, "ppo")
    run = None
    if args.wandb_mode != "disabled":  # SB3's TensorBoard scalars, synced (wandb's SB3 integration)
        import wandb

        run = wandb.init(
            project=args.wandb_project,
            group="controller-ppo",
            name=name,
            mode=args.wandb_mode,
            config=config.__dict__,
            sync_tensorboard=True,
            dir=str(harness.RUNS_DIR),
            **wandb_resume(args.folder / name),
        )
    tensorboard = args.tensorboard or (str(harness.RUNS_DIR / "controller-ppo") if run else None)
    try:
        theta = train_controller_ppo(
            config, args.folder / name, args.workers, args.threads, tensorboard, verbose=True
        )
    finally:
        if run is not None:
            run.finish()
    print(f"{name}: controller {[round(float(v), 3) for v in theta]} in {args.folder / name / CONTROLLER}")


def evaluate_split(args: argparse.Namespace) -> None:
    """The held-out runs of ``args.split`` (the controller must have been meta-trained)."""
    from benchmarks import controller_eval, grid

    if not controller_eval.controller_file(args.split).is_file():
        raise SystemExit(
            f"no controller for split {args.split} yet: run `python benchmarks/controller.py run --split "
            f"{args.split}` first ({controller_eval.controller_file(args.split)} is missing)"
        )
    done = grid.load_done()
    incomplete = controller_eval.incomplete_pools(args.split, done)
    if incomplete and not args.incomplete_pool:
        datasets = sorted({dataset for dataset, _ in incomplete})
        methods = sorted({m for left in incomplete.values() for m in left})
        tasks = "; ".join(
            f"{d} {100 * r:g}%: {', '.join(left)}" for (d, r), left in sorted(incomplete.items())
        )
        raise SystemExit(
            f"the grid has not finished the one-run pool ({tasks}): the method chosen on validation may change "
            "once they have run, and its runs made here on the other test seeds would be wasted. Run "
            f"`python benchmarks/gtsrb_lowdata.py run --datasets {' '.join(datasets)} --only {' '.join(methods)}` "
            "first, or pass --incomplete-pool to judge against the pool as it is"
        )
    run_held_out(args, lambda finished: controller_eval.jobs(args.split, done, finished))


def run_held_out(
    args: argparse.Namespace, jobs: Callable[[dict[str, dict[str, Any]]], list[harness.Job]]
) -> None:
    """Run ``jobs(finished)`` (held-out runs still missing, given those finished) on the pool of
    ``args``, each finished one appended to controller_eval's results file."""
    from benchmarks import controller_eval

    def finished(job: harness.Job, line: dict[str, Any]) -> None:
        controller_eval.RESULTS.append(line)
        print(f"{line['cell']}: test {100 * line['results']['final_test_accuracy']:.2f}%", flush=True)

    with harness.pool_from_args(args) as pool:
        harness.run_jobs(pool, lambda: jobs(controller_eval.RESULTS.by("cell")), finished, args.workers)


def noise_test(args: argparse.Namespace) -> None:
    """The step-size noise test's held-out runs on ``args.split`` (protocol: benchmarks/README.md):
    Prodigy with per-step per-layer noise, and Prodigy where it has not run on a held-out seed."""
    from benchmarks import controller_eval, grid

    done = grid.load_done()
    run_held_out(args, lambda finished: controller_eval.noise_jobs(args.split, done, finished))


def main(argv: list[str] | None = None) -> None:
    from finetune_gym.agents.meta_train import CONTROLLER, MetaTrainConfig, MetaTrainer

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or continue) a search")
    defaults = MetaTrainConfig()
    run.add_argument("--instance-set", default=defaults.instance_set, help="a shipped set's name or a file")
    run.add_argument("--split", default=defaults.split)
    run.add_argument("--generations", type=int, default=defaults.generations)
    run.add_argument("--batch", type=int, default=defaults.batch, help="training instances per generation")
    run.add_argument("--popsize", type=int, default=defaults.popsize, help="CMA-ES population")
    run.add_argument("--sigma0", type=float, default=defaults.sigma0)
    run.add_argument("--seed", type=int, default=defaults.seed)
    run.add_argument(
        "--optimizer", default=defaults.optimizer, help="the base optimizer the controller modulates"
    )
    run.add_argument(
        "--schedule",
        default=defaults.schedule,
        choices=["constant", "cosine"],
        help="the base's schedule over the run (cosine: v2, a folder of its own)",
    )
    run.add_argument("--data-root", default=defaults.data_root)
    run.add_argument("--folder", type=Path, default=RUNS, help="where the searches' folders are")
    run.add_argument(
        "--no-stopping-rule",
        action="store_true",
        help="run every generation asked for, even if the fitness flattened by generation 10",
    )
    run.add_argument("--tensorboard", help="write the generations' scalars as TensorBoard events here")
    run.add_argument("--wandb-mode", choices=harness.WANDB_MODES, default="disabled")
    run.add_argument("--wandb-project", default="finetune-gym")
    harness.add_pool_options(run, workers=2, threads=1)
    ppo = sub.add_parser("ppo", help="train the same controller with PPO at a budget of runs")
    ppo.add_argument("--instance-set", default=defaults.instance_set)
    ppo.add_argument("--split", default=defaults.split)
    ppo.add_argument(
        "--runs",
        type=int,
        default=540,
        help="fine-tuning runs in all, base runs included (CMA-ES's 15 generations: 540)",
    )
    ppo.add_argument("--seed", type=int, default=defaults.seed)
    ppo.add_argument("--optimizer", default=defaults.optimizer)
    ppo.add_argument("--data-root", default=defaults.data_root)
    ppo.add_argument("--folder", type=Path, default=RUNS)
    ppo.add_argument("--tensorboard", help="SB3's TensorBoard folder")
    ppo.add_argument("--wandb-mode", choices=harness.WANDB_MODES, default="disabled")
    ppo.add_argument("--wandb-project", default="finetune-gym")
    ppo.add_argument("--workers", type=int, default=2, help="fine-tuning runs at once (PPO's environments)")
    ppo.add_argument("--threads", type=int, default=1, help="torch threads per environment")
    show = sub.add_parser("status", help="each search's progress")
    show.add_argument("--folder", type=Path, default=RUNS)
    evaluate = sub.add_parser("evaluate", help="run the controller on its split's held-out instances")
    evaluate.add_argument("--split", default=defaults.split)
    evaluate.add_argument(
        "--incomplete-pool", action="store_true", help="judge against the grid's one-run pool as it is"
    )
    harness.add_pool_options(evaluate, workers=2, threads=1)
    noise = sub.add_parser(
        "noise", help="the step-size noise test: Prodigy with per-step per-layer noise on held-out instances"
    )
    noise.add_argument("--split", default=defaults.split)
    harness.add_pool_options(noise, workers=2, threads=1)
    report = sub.add_parser("report", help="write results/controller_eval.md")
    report.add_argument("--splits", nargs="+", default=["1", "2"])
    sub.add_parser(
        "ship", help="split 1's controller into the package (policy=default) with its held-out result"
    )
    args = parser.parse_args(argv)
    if args.command == "status":
        print("\n".join(status(args.folder) + ppo_status(args.folder)))
        return
    if args.command == "ppo":
        train_ppo(args)
        return
    if args.command == "ship":
        from benchmarks import controller_report

        try:
            print(f"shipped: {controller_report.ship()}")
        except (FileNotFoundError, RuntimeError) as error:  # what to run first: no traceback
            raise SystemExit(f"controller.py ship: {error}") from None
        return
    if args.command in ("evaluate", "noise", "report"):
        from benchmarks import controller_report

        if args.command == "evaluate":
            evaluate_split(args)
        elif args.command == "noise":
            noise_test(args)
        controller_report.write_report(getattr(args, "splits", None) or [args.split])
        print(controller_report.REPORT_FILE.read_text())
        return
    config = MetaTrainConfig(
        instance_set=args.instance_set,
        split=args.split,
        optimizer=args.optimizer,
        schedule=args.schedule,
        generations=args.generations,
        batch=args.batch,
        popsize=args.popsize,
        sigma0=args.sigma0,
        seed=args.seed,
        data_root=args.data_root,
    )
    name = run_name(args.instance_set, args.split, args.seed, schedule=args.schedule)
    loggers = Loggers(
        name, args.tensorboard, args.wandb_mode, args.wandb_project, config.__dict__, args.folder / name
    )

    def log(generation: int, scalars: dict[str, Any]) -> None:
        loggers(generation, scalars)
        print(
            f"{name} generation {generation}: mean gain {100 * scalars['mean_gain']:+.2f}, best "
            f"{100 * scalars['best_gain']:+.2f} points, sigma {scalars['sigma']:.3f}, {scalars['runs']:.0f} runs",
            flush=True,
        )

    def stop(summaries: list[dict[str, Any]]) -> bool:  # the protocol's rule, unless told otherwise
        return not args.no_stopping_rule and flattened(summaries) is True

    try:
        with harness.pool_from_args(args) as executor:
            theta = MetaTrainer(config, args.folder / name, executor, log=log, stop=stop).run()
    finally:
        loggers.close()
    print(f"{name}: controller {[round(float(v), 3) for v in theta]} in {args.folder / name / CONTROLLER}")


if __name__ == "__main__":
    main()
