"""Agents for the finetune-gym environments and the run that trains them.

``make_agent(name, env)`` builds RL-Tune (sb3-contrib RecurrentPPO with the
paper's actor), PPO, A2C, TRPO, or a non-learning baseline (uniform,
layerwise_decay, random, linear_probe) behind the same ``predict`` interface.
"""

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
