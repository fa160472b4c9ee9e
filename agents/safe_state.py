"""Run state in files that load with ``torch.load(..., weights_only=True)``: no pickled objects.

Checkpoints and saved agents get shared (W&B artifacts, sweeps, a colleague's run folder), and
unpickling a file runs whatever code it names. So nothing this package reads back is a pickle:
numpy arrays become tagged tensors, named tuples plain tuples, an SB3 algorithm its policy and
optimizer state dicts plus the few counters SB3 keeps between rollouts, and ``VecNormalize``
its running statistics. The objects themselves are rebuilt from the run's configuration.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from .sb3_internals import is_recurrent, rollout_position, set_rollout_position, stats_window

_ARRAY = "__ndarray__"


def plain(obj: Any) -> Any:
    """``obj`` with numpy arrays as tagged tensors and named tuples as tuples (see :func:`unplain`)."""
    if isinstance(obj, np.ndarray):
        return {_ARRAY: torch.from_numpy(np.array(obj, copy=True))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, deque)):
        return [plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    return obj


def unplain(obj: Any) -> Any:
    """The inverse of :func:`plain` (named tuples stay plain tuples)."""
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY}:
            return obj[_ARRAY].numpy()
        return {k: unplain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unplain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(unplain(v) for v in obj)
    return obj


def learner_state(agent: BaseAlgorithm) -> dict[str, Any]:
    """An SB3 algorithm's learned state: policy and optimizer weights, its rollout position."""
    attrs = rollout_position(agent)
    return {
        "policy": agent.policy.state_dict(),
        "optimizer": agent.policy.optimizer.state_dict(),
        "attrs": plain(attrs),
        # SB3's episode statistics (logged as rollout/ep_rew_mean), kept so the log goes on.
        "episode_buffers": None
        if agent.ep_info_buffer is None
        else (plain(list(agent.ep_info_buffer)), plain(list(agent.ep_success_buffer))),
    }


def load_learner_state(agent: BaseAlgorithm, state: dict[str, Any]) -> None:
    """Continue ``agent`` (built with the same configuration) from :func:`learner_state`."""
    agent.policy.load_state_dict(state["policy"])
    agent.policy.optimizer.load_state_dict(state["optimizer"])
    position = unplain(state["attrs"])
    if not is_recurrent(agent) and position.get("_last_lstm_states", 0) is None:
        del position["_last_lstm_states"]  # written as None for every algorithm before sb3_internals
    if position.get("_last_lstm_states") is not None:
        (pi_h, pi_c), (vf_h, vf_c) = position["_last_lstm_states"]
        position["_last_lstm_states"] = RNNStates((pi_h, pi_c), (vf_h, vf_c))
    set_rollout_position(agent, position)
    if state["episode_buffers"] is not None:
        infos, successes = unplain(state["episode_buffers"])
        agent.ep_info_buffer = deque(infos, maxlen=stats_window(agent))
        agent.ep_success_buffer = deque(successes, maxlen=stats_window(agent))


def normalisation_state(venv: VecNormalize) -> dict[str, Any]:
    """``VecNormalize``'s running statistics and its last raw observation and reward."""
    obs_rms = getattr(venv, "obs_rms", None)  # absent with norm_obs=False (per-layer tokens)
    return plain(
        {
            "obs": None if obs_rms is None else (obs_rms.mean, obs_rms.var, float(obs_rms.count)),
            "ret": (venv.ret_rms.mean, venv.ret_rms.var, float(venv.ret_rms.count)),
            "old_obs": getattr(venv, "old_obs", None),
            "old_reward": getattr(venv, "old_reward", None),
        }
    )


def load_normalisation_state(venv: VecNormalize, state: dict[str, Any]) -> None:
    """Restore :func:`normalisation_state` into a ``VecNormalize`` built the same way."""
    state = unplain(state)
    if (state["obs"] is None) != (getattr(venv, "obs_rms", None) is None):
        raise ValueError(
            "saved normalisation statistics do not fit this environment (observations normalised or not)"
        )
    if state["obs"] is not None:
        venv.obs_rms.mean, venv.obs_rms.var, venv.obs_rms.count = state["obs"]
    venv.ret_rms.mean, venv.ret_rms.var, venv.ret_rms.count = state["ret"]
    if state["old_obs"] is not None:
        venv.old_obs, venv.old_reward = state["old_obs"], state["old_reward"]
