"""The SB3 internals exact resume relies on exist in the installed SB3 and behave as assumed.

A release that renames one must fail here, not resume a run from a different state."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
from conftest import TINY_DIGITS
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import finetune_gym  # noqa: F401
from finetune_gym.agents import make_agent
from finetune_gym.agents import sb3_internals as internals
from finetune_gym.agents.registry import LEARNERS
from finetune_gym.agents.safe_state import learner_state, load_learner_state


def _venv():
    return VecNormalize(
        DummyVecEnv([lambda: gym.make("FineTune-Digits-v0", **TINY_DIGITS)]), norm_reward=False
    )


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_learner_has_the_internals_and_they_move_with_a_rollout(name):
    agent = make_agent(name, _venv(), n_steps=4, **({} if name == "a2c" else {"batch_size": 4}))
    assert internals.is_recurrent(agent) == (name == "rl_tune")
    agent.learn(total_timesteps=4)
    position = internals.rollout_position(agent)
    expected = set(internals.ROLLOUT_ATTRS) | (set(internals.RECURRENT_ATTRS) if name == "rl_tune" else set())
    assert set(position) == expected
    # They are where the rollout stands: the counters count what was done.
    assert position["num_timesteps"] == 4 and position["_n_updates"] >= 1
    assert position["_last_obs"].shape == (1, *agent.observation_space.shape)
    assert agent.ep_info_buffer.maxlen == internals.stats_window(agent)


def test_a_learner_state_round_trip_restores_the_rollout_position():
    source = make_agent("rl_tune", _venv(), n_steps=4, batch_size=4)
    source.learn(total_timesteps=4)
    state = copy.deepcopy(learner_state(source))
    target = make_agent("rl_tune", _venv(), n_steps=4, batch_size=4)
    load_learner_state(target, state)
    before, after = internals.rollout_position(source), internals.rollout_position(target)
    np.testing.assert_array_equal(after["_last_obs"], before["_last_obs"])
    assert after["num_timesteps"] == before["num_timesteps"] and after["_n_updates"] == before["_n_updates"]
    for got, want in zip(after["_last_lstm_states"].pi, before["_last_lstm_states"].pi, strict=True):
        assert (got == want).all()


def test_a_checkpoint_written_before_the_adapter_still_loads_for_a_non_recurrent_agent():
    """Older checkpoints saved ``_last_lstm_states: None`` for every algorithm."""
    agent = make_agent("ppo", _venv(), n_steps=4, batch_size=4)
    agent.learn(total_timesteps=4)
    state = copy.deepcopy(learner_state(agent))
    state["attrs"]["_last_lstm_states"] = None
    fresh = make_agent("ppo", _venv(), n_steps=4, batch_size=4)
    load_learner_state(fresh, state)
    assert fresh.num_timesteps == 4


def test_forgetting_the_reset_seeds_stops_a_reseed():
    venv = DummyVecEnv([lambda: gym.make("FineTune-Digits-v0", **TINY_DIGITS)])
    venv.seed(5)
    assert getattr(venv, internals.RESET_SEEDS_ATTR) == [5]  # what building an agent leaves behind
    internals.forget_reset_seeds(venv)
    assert getattr(venv, internals.RESET_SEEDS_ATTR) == [None]


def test_a_missing_internal_raises_instead_of_reading_none():
    class Renamed:
        num_timesteps = 0

    with pytest.raises(internals.SB3InternalsChanged, match=r"'_last_obs'.*test_sb3_internals"):
        internals.rollout_position(Renamed())  # type: ignore[arg-type]
    with pytest.raises(internals.SB3InternalsChanged, match="_reset_seeds"):
        internals.forget_reset_seeds(object())  # type: ignore[arg-type]
