"""Train RL-Tune (or another agent, or a fine-tuning baseline): ``python train.py --help``.

The command line lives in :mod:`finetune_gym.agents.train_cli`; ``pip install`` also installs it as
``finetune-gym-train``.
"""

from finetune_gym.cli import require_agents

require_agents("train.py")  # a clear message in a clone that was never installed

from finetune_gym.agents.train_cli import build_parser, config_from_args, main  # noqa: E402

__all__ = ["build_parser", "config_from_args", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
