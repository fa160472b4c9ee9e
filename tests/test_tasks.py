"""The task distribution (FineTune-Tasks-v0), its per-layer view, and the policy shared across layers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import make_image_folder
from gymnasium.utils.env_checker import check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from finetune_gym import TASK_ENV_IDS, FineTuneEnv, FineTuneTasksEnv, LayerwiseView
from finetune_gym.agents.layerwise_policy import LayerwisePolicy
from finetune_gym.tasks import DEFAULT_TASKS, SHARED_DEFAULTS

DIGITS_RELATIVE = {
    **DEFAULT_TASKS[0],
    **SHARED_DEFAULTS,
    "epochs_per_episode": 1,
    "batch_size": 64,
    "sampling_rate": 0.3,
}


@pytest.fixture
def two_depths(tmp_path):
    """Two tasks of different depths: the digits' ResNet-8 and a CIFAR ResNet-20 on a tiny folder."""
    folder = make_image_folder(tmp_path / "folder", n_classes=3, per_class=12, size=16)
    cifar = {
        "dataset": "imagefolder",
        "data_root": str(folder),
        "model": "cifar_resnet20",
        "weights": None,
        "image_size": 16,
        "val_fraction": 0.25,
        "obs_features": 4,
        "batch_size": 8,
        "device": "cpu",
    }
    return [{**DEFAULT_TASKS[0], "batch_size": 64}, {"name": "tiny_folder", **cifar}]


@pytest.mark.parametrize("env_id", TASK_ENV_IDS)
def test_task_env_passes_gymnasium_and_sb3_checkers(env_id):
    env = gym.make(env_id, epochs_per_episode=1, max_layers=16)
    check_env(env.unwrapped, skip_render_check=False)  # builds it in every render mode
    sb3_check_env(env.unwrapped)
    assert env.observation_space.shape[0] == 16 and env.action_space.shape == (16,)
    # The current fine-tuning run renders (rl_zoo3.enjoy asks for "human" on every id).
    text = gym.make(env_id, epochs_per_episode=1, max_layers=16, render_mode="ansi")
    text.reset(seed=0)
    text.step(text.action_space.sample())
    assert text.render().startswith("epoch 0 step 1: batch accuracy")


def test_view_tokens_layout():
    base = FineTuneEnv(**DIGITS_RELATIVE)
    view = LayerwiseView(base, max_layers=12)
    n, f = base.n_layers, base.pooler.features
    observation, _ = view.reset(seed=0)
    assert observation.shape == (12, view.token_size) and view.observation_space.contains(observation)
    mask = observation[:, -1]
    assert mask[:n].tolist() == [1.0] * n and not observation[n:].any()  # padding all zero
    depth = observation[:n, 2 * f]
    assert depth[0] == 0.0 and depth[-1] == 1.0 and np.all(np.diff(depth) > 0)
    assert not observation[:n, f : 2 * f].any()  # change since the episode's start: none yet
    assert not observation[:n, 2 * f + 1].any()  # no action yet
    action = np.full(12, 6)
    action[:n] = np.arange(n) % 7
    observation, reward, *_ = view.step(action)
    assert np.allclose(observation[:n, 2 * f + 1], (np.arange(n) % 7 - 3) / 3)
    assert np.isclose(observation[0, 2 * f + 2], 1 / base.episode_steps)  # progress
    # The layer's rates: the base rate times the relative grid's multiplier of its action.
    assert np.allclose(base.signals.rates, base.lr_map.rates[np.arange(n) % 7])
    assert np.isfinite(reward)


def test_view_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="lr_scale='relative'"):
        LayerwiseView(
            FineTuneEnv(**{**DIGITS_RELATIVE, "lr_scale": "linear", "base_lr": None, "n_lr_steps": 20})
        )
    with pytest.raises(ValueError, match=r"add \['loss'\] to obs_extras"):
        LayerwiseView(FineTuneEnv(**{**DIGITS_RELATIVE, "obs_extras": ["progress"]}))
    base = FineTuneEnv(**DIGITS_RELATIVE)
    with pytest.raises(ValueError, match="more than max_layers=2"):
        LayerwiseView(base, max_layers=2)
    view = LayerwiseView(base, max_layers=12)
    view.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(12,\)"):
        view.step(np.zeros(base.n_layers, dtype=np.int64))
    with pytest.raises(ValueError, match=r"integers in \[0, 6\]"):
        view.step(np.full(12, 7))


def test_tasks_are_drawn_reproducibly_and_share_one_layout(two_depths):
    env = FineTuneTasksEnv(tasks=two_depths, sampling_rates=[0.5, 1.0], epochs_per_episode=1, max_layers=32)
    draws = []
    for _ in range(6):
        observation, info = env.reset()
        assert env.observation_space.contains(observation)
        draws.append((info["task"]["task"], info["task"]["sampling_rate"], info["task"]["data_seed"]))
        assert observation[:, -1].sum() == env.view.n_layers
        assert (
            info["task"]["name"] == ("digits", "tiny_folder")[info["task"]["task"]]
        )  # a label, or the dataset
    assert {d[0] for d in draws} == {0, 1}, draws  # both tasks, of different depths, in one env
    again = FineTuneTasksEnv(tasks=two_depths, sampling_rates=[0.5, 1.0], epochs_per_episode=1, max_layers=32)
    assert [again.reset()[1]["task"]["data_seed"] for _ in range(6)] == [d[2] for d in draws]
    a, b = env.reset(seed=5)[1]["task"], again.reset(seed=5)[1]["task"]
    assert a == b
    # Another constructor seed (pretraining's offset after a resume) draws other tasks, also when
    # the reset is seeded the same (SB3 seeds every first reset with its own seed).
    other = FineTuneTasksEnv(
        tasks=two_depths, sampling_rates=[0.5, 1.0], epochs_per_episode=1, max_layers=32, seed=25
    )
    first = [env.reset(seed=0)[1]["task"]["data_seed"]] + [
        env.reset()[1]["task"]["data_seed"] for _ in range(3)
    ]
    second = [other.reset(seed=0)[1]["task"]["data_seed"]] + [
        other.reset()[1]["task"]["data_seed"] for _ in range(3)
    ]
    assert first != second


def test_tasks_refuse_bad_specifications():
    with pytest.raises(ValueError, match="tasks is empty"):
        FineTuneTasksEnv(tasks=[])
    with pytest.raises(ValueError, match=r"sets \['seed'\]"):
        FineTuneTasksEnv(tasks=[{**DEFAULT_TASKS[0], "seed": 3}])
    with pytest.raises(ValueError, match=r"does not take: \['lr'\]"):
        FineTuneTasksEnv(tasks=[{**DEFAULT_TASKS[0], "lr": 3}])
    with pytest.raises(ValueError, match="sampling_rate"):
        FineTuneTasksEnv(sampling_rates=[1.5])
    with pytest.raises(ValueError, match="data_seeds"):
        FineTuneTasksEnv(data_seeds=0)


def test_policy_is_shared_across_layers_and_ignores_padding():
    base = FineTuneEnv(**DIGITS_RELATIVE)
    view = LayerwiseView(base, max_layers=10)
    policy = LayerwisePolicy(view.observation_space, view.action_space, lambda _: 3e-4)
    observation, _ = view.reset(seed=0)
    n = base.n_layers
    with torch.no_grad():
        for layer in policy.mlp_extractor.actor[-1:]:  # away from the near-uniform start
            torch.nn.init.normal_(layer.weight, std=1.0)
        obs = torch.as_tensor(observation[None])
        dist = policy.get_distribution(obs)
        logits = dist.distribution.logits[0]
        # Padded rows: the middle step with probability ~1, so no entropy and no log-probability.
        assert torch.all(dist.distribution.probs[0, n:, 3] > 1 - 1e-6)
        per_layer = dist.distribution.entropy()[0]
        assert per_layer[n:].abs().max() < 1e-6 and per_layer[:n].min() > 0.01
        # Shared weights: swapping two layers' tokens swaps their logits (the context is a mean).
        swapped = observation.copy()
        swapped[[0, 1]] = swapped[[1, 0]]
        logits_swapped = policy.get_distribution(torch.as_tensor(swapped[None])).distribution.logits[0]
        assert torch.allclose(logits_swapped[0], logits[1], atol=1e-6)
        assert torch.allclose(logits_swapped[1], logits[0], atol=1e-6)
        # A padded row's content does not reach the real layers (its encoding is masked out).
        noisy = observation.copy()
        noisy[n:, :-1] = 5.0
        logits_noisy = policy.get_distribution(torch.as_tensor(noisy[None])).distribution.logits[0]
        assert torch.allclose(logits_noisy[:n], logits[:n], atol=1e-6)


def test_ppo_learns_over_two_tasks_of_different_depths(two_depths):
    env = FineTuneTasksEnv(tasks=two_depths, sampling_rates=[1.0], epochs_per_episode=1, max_layers=32)
    model = PPO(LayerwisePolicy, env, n_steps=16, batch_size=16, n_epochs=2, device="cpu", seed=0)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(32)
    changed = [k for k, v in model.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("mlp_extractor.actor") for k in changed)
    assert any(k.startswith("mlp_extractor.encoder") for k in changed)
    observation, _ = env.reset(seed=0)
    action, _ = model.predict(observation, deterministic=True)
    assert env.action_space.contains(action)
    assert np.all(action[env.view.n_layers :] == 3)  # the padding's fixed middle step
