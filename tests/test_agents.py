import gymnasium as gym
import numpy as np
import pytest
from conftest import TINY_DIGITS
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from torch import nn

import finetune_gym  # noqa: F401
from finetune_gym.agents import AGENT_NAMES, make_agent
from finetune_gym.agents.policies import LinearFeatures
from finetune_gym.agents.registry import baseline_env_overrides, canonical_name


@pytest.fixture
def venv():
    return VecNormalize(
        DummyVecEnv([lambda: gym.make("FineTune-Digits-v0", **TINY_DIGITS)]), norm_reward=False
    )


def test_rl_tune_is_the_papers_agent(venv):
    agent = make_agent("recurrent_ppo", venv)
    assert isinstance(agent, RecurrentPPO)
    policy = agent.policy
    assert isinstance(policy.features_extractor, LinearFeatures)
    assert isinstance(policy.features_extractor.linear, nn.Linear)
    assert isinstance(policy.lstm_actor, nn.LSTM)
    assert policy.lstm_critic is None and isinstance(policy.critic, nn.Linear)  # MLP critic, no LSTM
    assert agent.clip_range(1.0) == pytest.approx(0.1)
    assert policy.optimizer.defaults["fused"] and policy.optimizer.defaults["eps"] == 1e-5
    assert agent.n_steps == venv.get_attr("steps_per_epoch")[0]


@pytest.mark.parametrize("name", ["ppo", "a2c", "trpo"])
def test_other_learners_update_once_per_epoch(venv, name):
    agent = make_agent(name, venv)
    assert agent.n_steps == venv.get_attr("steps_per_epoch")[0]
    action, _ = agent.predict(venv.reset())
    assert action.shape == (1, venv.get_attr("n_layers")[0])


@pytest.mark.parametrize("name", ["uniform", "layerwise_decay", "random", "linear_probe"])
def test_baselines_share_the_predict_interface(name):
    env = gym.make("FineTune-Digits-v0", **{**TINY_DIGITS, **baseline_env_overrides(name)})
    venv = DummyVecEnv([lambda: env])
    agent = make_agent(name, venv, seed=1)
    action, state = agent.predict(
        venv.reset(), state=None, episode_start=np.ones(1, bool), deterministic=True
    )
    assert action.shape == (1, env.unwrapped.n_layers) and state is None
    assert env.action_space.contains(action[0])


def test_agent_name_errors(venv):
    assert canonical_name("RecurrentPPO") == "rl_tune"
    assert set(AGENT_NAMES) >= {
        "rl_tune",
        "ppo",
        "a2c",
        "trpo",
        "uniform",
        "layerwise_decay",
        "random",
        "linear_probe",
    }
    for name, phrase in (("dqn", "Discrete"), ("SAC", "continuous"), ("td3", "continuous")):
        with pytest.raises(ValueError, match=f"{phrase}.*Agents that can: rl_tune"):
            make_agent(name, venv)
    with pytest.raises(ValueError, match="unknown agent 'adam'"):
        make_agent("adam", venv)
    with pytest.raises(ValueError, match="does not take"):
        make_agent("ppo", venv, warp_factor=9)
    with pytest.raises(ValueError, match="does not take"):
        make_agent("uniform", venv, decay=0.5)
    with pytest.raises(ValueError, match="not a step of this environment's grid"):
        make_agent("uniform", venv, lr=3e-4).predict(np.zeros((1, 20)))
