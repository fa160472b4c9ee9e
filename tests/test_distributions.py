"""The batched per-layer action distribution is SB3's multi-categorical, computed in one piece."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TINY_DIGITS
from stable_baselines3.common.distributions import MultiCategoricalDistribution
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import finetune_gym  # noqa: F401
from finetune_gym.agents import make_agent
from finetune_gym.agents.distributions import GridMultiCategoricalDistribution

DIMS = [20] * 6


def _pair(batch: int = 5, seed: int = 0):
    logits = torch.randn(batch, sum(DIMS), generator=torch.Generator().manual_seed(seed)) * 3
    ours = GridMultiCategoricalDistribution(DIMS).proba_distribution(logits)
    sb3 = MultiCategoricalDistribution(DIMS).proba_distribution(logits)
    return logits, ours, sb3


def test_same_log_prob_entropy_and_mode_as_sb3():
    _, ours, sb3 = _pair()
    actions = torch.randint(0, 20, (5, len(DIMS))).float()  # SB3 stores MultiDiscrete actions as floats
    torch.testing.assert_close(ours.log_prob(actions), sb3.log_prob(actions))
    torch.testing.assert_close(ours.entropy(), sb3.entropy())
    assert torch.equal(ours.mode(), sb3.mode())
    assert ours.log_prob(actions).shape == ours.entropy().shape == (5,)


def test_samples_follow_the_distribution():
    logits = torch.zeros(1, sum(DIMS))
    logits[0, 3] = 4.0  # layer 0 prefers step 3: p = e^4 / (e^4 + 19)
    logits[0, 20 + 17] = -30.0  # layer 1 almost never takes step 17
    dist = GridMultiCategoricalDistribution(DIMS).proba_distribution(logits.expand(20000, -1))
    torch.manual_seed(0)
    samples = dist.sample()
    assert samples.shape == (20000, len(DIMS)) and samples.min() >= 0 and samples.max() < 20
    p3 = np.exp(4) / (np.exp(4) + 19)
    assert (samples[:, 0] == 3).float().mean().item() == pytest.approx(p3, abs=0.01)
    assert (samples[:, 1] == 17).sum().item() == 0
    assert (samples[:, 2] == 5).float().mean().item() == pytest.approx(1 / 20, abs=0.005)


def test_unequal_dimensions_are_refused():
    with pytest.raises(ValueError, match="same size"):
        GridMultiCategoricalDistribution([20, 10])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("rl_tune", GridMultiCategoricalDistribution),
        ("ppo", GridMultiCategoricalDistribution),
        ("a2c", GridMultiCategoricalDistribution),
        ("trpo", MultiCategoricalDistribution),  # SB3's KL divergence needs per-layer distributions
    ],
)
def test_agents_use_it_where_sb3_allows(name, expected):
    venv = VecNormalize(
        DummyVecEnv([lambda: gym.make("FineTune-Digits-v0", **TINY_DIGITS)]), norm_reward=False
    )
    agent = make_agent(name, venv)
    assert type(agent.policy.action_dist) is expected
