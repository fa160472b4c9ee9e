"""The pretraining command line: ``train.py pretrain [options]`` (``--pretrain`` also works; one
entry point for training).

Pretrains one learning-rate policy over many fine-tuning runs (see :mod:`.pretrain`) and writes
``<run-dir>/policy.pt`` with its card, for ``train.py --algo rl_tune_pretrained``.

Examples:
  python train.py pretrain --runs 40                               # built-in digits, offline
  python train.py pretrain --tasks no-gtsrb --n-envs 2 --runs 200  # leave GTSRB out (../shared/data)
  python train.py pretrain --tasks tasks.json --devices cuda:0 cuda:1 --n-envs 2
  python train.py pretrain --tasks no-gtsrb --n-envs 16 --address auto      # Ray actors on a cluster
  python train.py pretrain --instance-set v1 --split 1 --runs 102           # a declared instance set
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from finetune_gym.cli import parse_kwargs

from .pretrain import PretrainConfig, pretrain
from .rundir import RunDirectoryError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    d = PretrainConfig()
    parser.add_argument(
        "--tasks",
        default=d.tasks,
        help="a task set (digits, no-gtsrb, no-sign_digits) or a JSON file: a list of FineTuneEnv "
        "argument dicts (default %(default)s)",
    )
    parser.add_argument(
        "--data-root", default=d.data_root, help="where the task sets' data are (default %(default)s)"
    )
    parser.add_argument(
        "--instance-set",
        help="an instance set (a shipped name such as v1, or a file) instead of --tasks: every run is one "
        "of its --split's training instances, whose rate and length are its own",
    )
    parser.add_argument("--split", default=d.split, help="the instance set's split (default %(default)s)")
    parser.add_argument(
        "--sampling-rates",
        type=float,
        nargs="+",
        default=d.sampling_rates,
        help="drawn per run (default %(default)s)",
    )
    parser.add_argument(
        "--epochs-per-episode", type=int, default=d.epochs_per_episode, help="epochs of one fine-tuning run"
    )
    parser.add_argument(
        "--runs", type=int, default=d.runs, help="fine-tuning runs in all (default %(default)s)"
    )
    parser.add_argument(
        "--n-envs", type=int, default=d.n_envs, help="processes, one task each (default %(default)s)"
    )
    parser.add_argument(
        "--devices", nargs="+", default=d.devices, help="one per process, cycled (default %(default)s)"
    )
    parser.add_argument(
        "--vec-env",
        choices=["subproc", "ray"],
        default=d.vec_env,
        help="where the processes run: SB3's SubprocVecEnv here, or Ray actors (pip install -e "
        "'.[ray]'), one GPU each for cuda devices; the same results either way (default %(default)s)",
    )
    parser.add_argument(
        "--address",
        help="a running Ray cluster ('auto' on one of its nodes, or HOST:PORT); implies --vec-env ray",
    )
    parser.add_argument("--max-layers", type=int, default=d.max_layers, help="the policy's layer capacity")
    parser.add_argument("--hidden", type=int, default=d.hidden, help="the shared network's width")
    parser.add_argument("--n-steps", type=int, default=d.n_steps, help="steps per process between updates")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--threads", type=int, help="CPU threads per process (default: the cores shared among them)"
    )
    parser.add_argument(
        "--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="shared by every task"
    )
    parser.add_argument("--agent-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="PPO settings")
    parser.add_argument("--run-dir", type=Path, help="default runs/pretrain-<tasks>-s<seed>")
    parser.add_argument("--resume", action="store_true", help="continue --run-dir from its last update")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pretraining run")
    parser.add_argument("--quiet", action="store_true", help="no line per finished fine-tuning run")
    parser.add_argument(
        "--wandb", choices=["disabled", "offline", "online"], default=os.environ.get("WANDB_MODE", "disabled")
    )
    parser.add_argument("--wandb-project", default=os.environ.get("WANDB_PROJECT", "finetune-gym"))
    return parser


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    tasks: str | list = args.tasks
    if tasks.endswith(".json"):
        try:
            tasks = json.loads(Path(tasks).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"--tasks {args.tasks}: not a readable JSON list of tasks ({error})") from error
        if not isinstance(tasks, list):
            raise ValueError(f"--tasks {args.tasks}: the file must hold a JSON list of task dicts")
    return PretrainConfig(
        tasks=tasks,
        data_root=args.data_root,
        sampling_rates=list(args.sampling_rates),
        epochs_per_episode=args.epochs_per_episode,
        runs=args.runs,
        n_envs=args.n_envs,
        devices=list(args.devices),
        max_layers=args.max_layers,
        hidden=args.hidden,
        n_steps=args.n_steps,
        seed=args.seed,
        threads=args.threads,
        env_kwargs=parse_kwargs(args.env_kwargs),
        agent_kwargs=parse_kwargs(args.agent_kwargs),
        vec_env="ray" if args.address else args.vec_env,
        ray_address=args.address,
        instance_set=args.instance_set,
        split=args.split,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.run_dir is None:
        parser.error("--resume needs --run-dir: the pretraining to continue")
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    name = args.tasks if isinstance(config.tasks, str) else Path(args.tasks).stem
    if config.instance_set is not None:
        name = f"{Path(config.instance_set).stem}-split{config.split}"
    run_dir = args.run_dir or Path("runs") / f"pretrain-{name}-s{config.seed}"
    try:
        pretrain(
            config,
            run_dir,
            resume=args.resume,
            overwrite=args.overwrite,
            verbose=not args.quiet,
            wandb_mode=args.wandb,
            wandb_project=args.wandb_project,
        )
    except (RunDirectoryError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
