"""Re-evaluate finished runs, tabulate many runs, or replay a saved agent: ``python evaluate.py --help``.

The command line lives in :mod:`finetune_gym.agents.evaluate_cli`; ``pip install`` also installs it as
``finetune-gym-evaluate``.
"""

from finetune_gym.cli import require_agents

require_agents("evaluate.py")  # a clear message in a clone that was never installed

from finetune_gym.agents.evaluate_cli import main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
