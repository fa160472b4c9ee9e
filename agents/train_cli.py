"""Train RL-Tune (or another agent, or a fine-tuning baseline) on a finetune-gym environment.

The command line of ``train.py`` (and of the installed ``finetune-gym-train``).

With no arguments: RL-Tune on the built-in offline default (FineTune-Digits-v0),
5 episodes x 10 epochs with the EMA scheme, results in runs/<env>-<dataset>-r<rate>-<method>-s<seed> (see --run-dir).

Examples:
  python train.py
  python train.py --algo uniform --agent-kwargs lr=3e-4 --episodes 1 --epochs-per-episode 50 --ema none
  python train.py --env FineTune-CIFARResNet-v0 --data-root ../shared/data \\
      --env-kwargs weights=../shared/data/resnet_cifar10/resnet20-12fca82f.th --sampling-rate 0.15
  python train.py --env FineTune-ResNet50-v0 --dataset cub --data-root data --env-kwargs download=True
  python train.py pretrain --help      # pretrain one learning-rate policy over many fine-tuning runs
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from finetune_gym import ENV_IDS
from finetune_gym.agents import AGENT_NAMES
from finetune_gym.agents.config import WANDB_MODES, RunConfig
from finetune_gym.agents.recording import TrainingDiverged
from finetune_gym.agents.run import run_training
from finetune_gym.agents.rundir import CHECKPOINT, CONFIG, RunDirectoryError, read_config
from finetune_gym.agents.trust import TRUST_FLAG, UntrustedCodeError, check_code, named_code
from finetune_gym.cli import parse_kwargs
from finetune_gym.rewards import REWARDS
from finetune_gym.wrappers import check_ema


def parse_ema(text: str) -> float | None:
    """``--ema``: a weight in (0, 1], or ``none`` for no EMA scheme."""
    if text.lower() == "none":
        return None
    try:
        return check_ema(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a weight in (0, 1] or 'none', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=None if Path(sys.argv[0]).name != "train.py" else "train.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # an abbreviated flag would escape --resume's check of what changed
    )
    defaults = RunConfig()
    env = parser.add_argument_group("environment")
    env.add_argument("--env", default=defaults.env_id, choices=ENV_IDS, help="registered environment id")
    env.add_argument("--dataset", help="dataset name (default: the environment's)")
    env.add_argument("--data-root", help="folder holding (or receiving) the dataset")
    env.add_argument("--sampling-rate", type=float, help="fraction of the training set kept, in (0, 1]")
    env.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the environment's)")
    env.add_argument("--reward", choices=REWARDS, help="reward (default: the environment's)")
    env.add_argument("--episodes", type=int, default=defaults.episodes, help="episodes (default %(default)s)")
    env.add_argument(
        "--epochs-per-episode",
        type=int,
        default=defaults.epochs_per_episode,
        help="epochs per episode (default %(default)s)",
    )
    env.add_argument(
        "--ema",
        type=parse_ema,
        default=defaults.ema,
        help="EMA weight of the fine-tuned target between episodes, or 'none' (default %(default)s)",
    )
    env.add_argument(
        "--env-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="any other environment argument, e.g. weights=path.th lr_scale=log batch_size=64",
    )
    agent = parser.add_argument_group("agent")
    agent.add_argument(
        "--algo", default=defaults.algo, help=f"one of {', '.join(AGENT_NAMES)} (default %(default)s)"
    )
    agent.add_argument(
        "--agent-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="agent hyperparameters overriding agents/hyperparams.py, e.g. lr=3e-4 ent_coef=0.0",
    )
    agent.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed of data sample, split, head, agent (default %(default)s)",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--run-dir",
        help="output folder (default runs/<env>-<dataset>-r<rate>-<method>-s<seed>[-<hash of the other settings>])",
    )
    run.add_argument("--label", help="the method's name in evaluate.py tables (default: the algorithm)")
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its checkpoint"
    )
    run.add_argument("--overwrite", action="store_true", help="replace an existing --run-dir")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        TRUST_FLAG,
        action="store_true",
        help="on --resume, import a model the run's config.json names by import path "
        "(package.module:factory), which runs its code: only for runs you trust",
    )
    wandb = parser.add_argument_group(
        "Weights & Biases",
        "defaults come from WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY, WANDB_RUN_GROUP, WANDB_TAGS",
    )
    environ = os.environ
    mode = environ.get("WANDB_MODE", defaults.wandb_mode)
    wandb.add_argument(
        "--wandb", choices=WANDB_MODES, default=mode if mode in WANDB_MODES else defaults.wandb_mode
    )
    wandb.add_argument("--wandb-project", default=environ.get("WANDB_PROJECT", defaults.wandb_project))
    wandb.add_argument("--wandb-entity", default=environ.get("WANDB_ENTITY"))
    wandb.add_argument(
        "--wandb-group",
        default=environ.get("WANDB_RUN_GROUP"),
        help="default: <env>/<dataset>/r<rate>/<algo>",
    )
    tags = [t for t in environ.get("WANDB_TAGS", "").split(",") if t]
    wandb.add_argument("--wandb-tags", nargs="*", default=tags)
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for the fine-tuned network (default: one per core); on a machine other work "
        "shares, give it the free cores: PyTorch's threads spin against the other processes",
    )
    parser.add_argument_group("TensorBoard").add_argument(
        "--tensorboard",
        metavar="DIR",
        help="write TensorBoard event files to DIR (env metrics in DIR/env, the agent's in DIR/agent)",
    )
    return parser


ENV_FLAGS = ("dataset", "data_root", "sampling_rate", "device", "reward")  # each also an env argument
FIELDS = {  # argument -> RunConfig field, for the arguments that set one directly
    "env": "env_id",
    "algo": "algo",
    "seed": "seed",
    "episodes": "episodes",
    "epochs_per_episode": "epochs_per_episode",
    "ema": "ema",
    "label": "label",
    "wandb": "wandb_mode",
    "wandb_project": "wandb_project",
    "wandb_entity": "wandb_entity",
    "wandb_group": "wandb_group",
    "wandb_tags": "wandb_tags",
    "tensorboard": "tensorboard_dir",
    "threads": "threads",
}


def given_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options ``argv`` names (an option given its default value counts)."""
    given = set()
    for action in parser._actions:
        if any(arg == flag or arg.startswith(flag + "=") for arg in argv for flag in action.option_strings):
            given.add(action.dest)
    return given


def config_from_args(
    args: argparse.Namespace, given: set[str] | None = None, base: RunConfig | None = None
) -> RunConfig:
    """The run configuration an argument list describes (ValueError for bad or conflicting values).

    With ``base`` (a saved configuration, for ``--resume``) only the ``given`` arguments change it.
    """
    given = set(vars(args)) if given is None else given
    env_kwargs = parse_kwargs(args.env_kwargs) if "env_kwargs" in given else {}
    for key in ENV_FLAGS:
        value = getattr(args, key)
        if value is not None and key in given:
            if key in env_kwargs:
                raise ValueError(
                    f"{key} is given twice, as --{key.replace('_', '-')} and in --env-kwargs: give it once"
                )
            env_kwargs[key] = value
    fields = {field: getattr(args, dest) for dest, field in FIELDS.items() if dest in given}
    if "agent_kwargs" in given:
        fields["agent_kwargs"] = parse_kwargs(args.agent_kwargs, "--agent-kwargs")
    if base is None:
        return RunConfig(**{**fields, "env_kwargs": env_kwargs})
    return replace(base, **fields, env_kwargs={**base.env_kwargs, **env_kwargs})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # One entry point: pretraining is a subcommand with its own options (``train.py pretrain``;
    # ``--pretrain``, its first spelling, stays).
    if argv and argv[0] in ("pretrain", "--pretrain"):
        from .pretrain_cli import main as pretrain_main

        return pretrain_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir) if args.run_dir else None
    try:
        if args.resume:
            if run_dir is None:
                parser.error("--resume needs --run-dir: the run to continue")
            # The saved configuration, with what the command line gives on top: run_training
            # refuses any difference but the W&B settings.
            given = given_arguments(parser, argv)
            saved = read_config(run_dir)
            typed = parse_kwargs(args.env_kwargs) if "env_kwargs" in given else {}
            check_code(
                saved.to_json(),
                repr(str(run_dir / CONFIG)),
                trust_code=args.trust_code,
                given=named_code(typed),
            )
            config = config_from_args(args, given, saved)
        else:
            config = config_from_args(args)
    except (RunDirectoryError, UntrustedCodeError) as error:
        return _fail(str(error))
    except ValueError as error:
        parser.error(str(error))
    run_dir = run_dir or Path(config.default_run_dir())
    try:
        run_training(
            config, run_dir, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
        )
    except (RunDirectoryError, ValueError, FileNotFoundError, TrainingDiverged) as error:
        return _fail(str(error))
    except OSError as error:  # disk full, permissions, ...: the file and the reason, in one line
        where = error.filename or "while writing the run"
        kept = (run_dir / CHECKPOINT).is_file()
        then = (
            f"the last checkpoint is kept: free space (or raise the limit), then --resume --run-dir {run_dir}"
            if kept
            else "nothing was kept: free space (or raise the file size limit) and start it again"
        )
        return _fail(f"could not write {where}: {error.strerror or error}; {then}")
    return 0


def _fail(message: str) -> int:
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
