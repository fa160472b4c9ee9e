"""The Stable-Baselines3 internals this package relies on, in one place, and why.

An exact resume needs three things SB3 has no public API for: where a rollout stands between two
updates (the last observation, episode starts and LSTM states, and the update counters), the window
of SB3's episode statistics (so ``rollout/ep_rew_mean`` goes on after a resume), and forgetting the
seeds a VecEnv would apply at its next reset (a resumed run's first reset must not re-seed the
environments: their seeds were used when the run began). SB3's own ``save``/``load`` keeps these
by pickling the whole algorithm, which a file shared with others must not do (see
:mod:`.safe_state`), so they are read and written here by name.

Every name below is checked against the installed SB3 and sb3-contrib by
``tests/test_sb3_internals.py``: a release that renames or drops one fails that test instead of
resuming silently from a different state (a missing attribute here raises, it is never read as None).
"""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

# Where a rollout stands between two updates, and the counters SB3 logs and schedules with.
ROLLOUT_ATTRS: tuple[str, ...] = (
    "_last_obs",
    "_last_episode_starts",
    "_last_original_obs",
    "num_timesteps",
    "_n_updates",
    "_episode_num",
)
# Only recurrent algorithms (sb3-contrib's RecurrentPPO) carry the LSTM states across rollouts.
RECURRENT_ATTRS: tuple[str, ...] = ("_last_lstm_states",)
# The length of ep_info_buffer / ep_success_buffer (BaseAlgorithm's stats_window_size).
STATS_WINDOW_ATTR = "_stats_window_size"
# VecEnv's seeds for its next reset, and the method that clears them.
RESET_SEEDS_ATTR, RESET_SEEDS_METHOD = "_seeds", "_reset_seeds"


class SB3InternalsChanged(RuntimeError):
    """The installed SB3 lacks an internal attribute this package reads: resuming would be wrong."""


def _require(obj: Any, name: str) -> Any:
    if not hasattr(obj, name):
        raise SB3InternalsChanged(
            f"{type(obj).__name__} has no attribute {name!r}: this Stable-Baselines3 release changed an "
            "internal that exact resume relies on: install a release tests/test_sb3_internals.py passes "
            "with (2.9.2 does), or update finetune_gym.agents.sb3_internals"
        )
    return getattr(obj, name)


def is_recurrent(agent: BaseAlgorithm) -> bool:
    return all(hasattr(agent, name) for name in RECURRENT_ATTRS)


def rollout_position(agent: BaseAlgorithm) -> dict[str, Any]:
    """Where ``agent``'s rollout stands and its counters (see :data:`ROLLOUT_ATTRS`)."""
    names = ROLLOUT_ATTRS + (RECURRENT_ATTRS if is_recurrent(agent) else ())
    return {name: _require(agent, name) for name in names}


def set_rollout_position(agent: BaseAlgorithm, position: dict[str, Any]) -> None:
    """Restore :func:`rollout_position` into an agent built with the same configuration."""
    for name, value in position.items():
        _require(agent, name)  # only names the installed SB3 still has
        setattr(agent, name, value)


def stats_window(agent: BaseAlgorithm) -> int:
    """How many episodes SB3's episode statistics average over."""
    return int(_require(agent, STATS_WINDOW_ATTR))


def forget_reset_seeds(venv: VecEnv) -> None:
    """Clear the seeds ``venv`` would apply at its next reset (building an agent sets them)."""
    _require(venv, RESET_SEEDS_METHOD)()
