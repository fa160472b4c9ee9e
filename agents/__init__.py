"""Agents for the finetune-gym environments and the run that trains them.

``make_agent(name, env)`` builds RL-Tune (sb3-contrib RecurrentPPO with the
paper's actor), PPO, A2C, TRPO, or a non-learning baseline (uniform,
layerwise_decay, random, linear_probe) behind the same ``predict`` interface.

Installed, this folder is ``finetune_gym.agents`` (pyproject's package-dir mapping): the package
claims one import name. Imported as a top-level ``agents`` (from the repository's root) it would
be a second copy of every class and shadow other packages of that name, so it refuses.
"""

if __name__ != "finetune_gym.agents":
    raise ImportError(
        f"finetune-gym's agents are imported as finetune_gym.agents, not as {__name__!r}: install the "
        "package (pip install -e .) and write 'from finetune_gym.agents import ...'. (Another package "
        "named 'agents', such as openai-agents, is shadowed while the current directory is finetune-gym's "
        "repository root.)"
    )

from .baselines import BASELINES, Baseline
from .hyperparams import HYPERPARAMS
from .registry import AGENT_NAMES, LEARNERS, canonical_name, is_learning, load_agent, make_agent, save_agent

__all__ = [
    "AGENT_NAMES",
    "BASELINES",
    "HYPERPARAMS",
    "LEARNERS",
    "Baseline",
    "canonical_name",
    "is_learning",
    "load_agent",
    "make_agent",
    "save_agent",
]
