"""The environment's opt-in options: base optimizers, schedules, relative actions, observation
extras, the loss-improvement reward; and the baselines built on them."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TINY_DIGITS
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from test_env import digits_env
from torch import nn

from finetune_gym.optimizers import OPTIMIZERS, PARAMETER_FREE
from finetune_gym.schedules import schedule_factor


def steps(env, n, action):
    return [env.step(action) for _ in range(n)]


def trains(optimizer: str) -> tuple[dict, int]:
    """Environment options and an action index that train with ``optimizer``: a multiplier of 1
    (their published default) for the optimizers that estimate their own step."""
    if optimizer in PARAMETER_FREE or optimizer == "prodigy":
        return {"lr_steps": [0.0, 0.5, 1.0]}, 2
    return {}, 8


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_trains_and_a_zero_rate_freezes_a_layer(optimizer):
    options, index = trains(optimizer)
    # L-DoG starts from a step of 1e-4 of the weights' norm and grows it: give it 30 steps, not 9.
    env = digits_env(optimizer=optimizer, epochs_per_episode=10 if optimizer == "ldog" else 3, **options)
    env.reset(seed=0)
    before = env.evaluate("val")
    frozen = [p.detach().clone() for p in env.layers[0].parameters]
    moving = [p.detach().clone() for p in env.layers[-1].parameters]
    action = np.full(env.n_layers, index)
    action[0] = 0
    *_, (obs, _, terminated, _, info) = steps(env, env.episode_steps, action)
    assert terminated and np.all(np.isfinite(obs))
    assert all(torch.equal(a, b) for a, b in zip(frozen, env.layers[0].parameters, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(moving, env.layers[-1].parameters, strict=True))
    assert info["val_accuracy"] > before  # it learns


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_continues_exactly_from_its_state(optimizer):
    """What a checkpoint holds restores an episode bit for bit, optimizer state included."""
    options, index = trains(optimizer)
    action = np.full(5, index)
    env = digits_env(optimizer=optimizer, epochs_per_episode=3, **options)
    env.reset(seed=3)
    steps(env, 5, action)
    if optimizer in PARAMETER_FREE:
        env.fine_tuned_state_dict()  # an evaluation mid-episode must not change what follows
    state = env.get_state()
    clone = digits_env(optimizer=optimizer, epochs_per_episode=3, **options)
    clone.reset(seed=0)  # anything: set_state replaces it
    clone.set_state(state)
    a = steps(env, 4, action)
    b = steps(clone, 4, action)
    for (obs_a, r_a, *_), (obs_b, r_b, *_) in zip(a, b, strict=True):
        np.testing.assert_array_equal(obs_a, obs_b)
        assert r_a == r_b
    for key, value in env.model.state_dict().items():
        assert torch.equal(value, clone.model.state_dict()[key]), key


def test_schedule_free_is_evaluated_at_its_average_without_changing_the_run():
    """Evaluation switches to Schedule-Free's x (BatchNorm recomputed there) and back: a run that
    evaluates mid-episode trains exactly as one that does not."""
    action = np.full(5, 8)
    quiet, probed = (digits_env(optimizer="schedulefree_adamw", epochs_per_episode=2) for _ in range(2))
    for env in (quiet, probed):
        env.reset(seed=1)
        steps(env, 3, action)
    training_weights = {k: v.clone() for k, v in probed.model.state_dict().items()}
    reported = probed.fine_tuned_state_dict()
    probed.evaluate("val")
    assert any(not torch.equal(reported[k], training_weights[k].cpu()) for k in reported)  # x is not y
    for key, value in probed.model.state_dict().items():
        assert torch.equal(value, training_weights[key]), key  # back at y, BatchNorm included
    steps(quiet, 3, action)
    steps(probed, 3, action)
    for key, value in quiet.model.state_dict().items():
        assert torch.equal(value, probed.model.state_dict()[key]), key


def test_cosine_schedule_and_warmup_scale_the_rates():
    assert schedule_factor("constant", 0.0, 7, 10) == 1.0
    assert schedule_factor("cosine", 0.0, 0, 10) == 1.0
    assert schedule_factor("cosine", 0.0, 5, 10) == pytest.approx(0.5)
    assert [schedule_factor("cosine", 0.2, s, 10) for s in (0, 1)] == [0.5, 1.0]  # linear warm-up
    env = digits_env(schedule="cosine", epochs_per_episode=2, lr_steps=[0.0, 1e-3])
    env.reset(seed=0)
    rates = [info["learning_rates"][0] for *_, info in steps(env, env.episode_steps, np.ones(5, int))]
    expected = [1e-3 * schedule_factor("cosine", 0.0, s, env.episode_steps) for s in range(env.episode_steps)]
    np.testing.assert_allclose(rates, expected)
    assert rates[0] == pytest.approx(1e-3) and rates[-1] < 1e-4 and np.all(np.diff(rates) < 0)


def test_warmdown_schedule_holds_the_rate_then_decays_linearly_to_zero():
    """Warm-up/stable/decay: 1 until the last ``cooldown`` fraction, then linear steps down to 1/(n+1)."""
    factors = [schedule_factor("warmdown", 0.0, s, 10, cooldown=0.2) for s in range(10)]
    assert factors[:8] == [1.0] * 8 and factors[8:] == pytest.approx([2 / 3, 1 / 3])
    assert [schedule_factor("warmdown", 0.2, s, 10, cooldown=0.2) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    env = digits_env(schedule="warmdown", cooldown=0.5, epochs_per_episode=2, lr_steps=[0.0, 1e-3])
    env.reset(seed=0)
    rates = [info["learning_rates"][0] for *_, info in steps(env, env.episode_steps, np.ones(5, int))]
    half = env.episode_steps - round(0.5 * env.episode_steps)
    assert rates[:half] == pytest.approx([1e-3] * half)
    assert np.all(np.diff(rates[half:]) < 0) and 0 < rates[-1] < 1e-3 / 2


def test_relative_actions_multiply_a_base_rate():
    env = digits_env(lr_scale="relative", base_lr=2e-3, n_lr_steps=7)
    np.testing.assert_allclose(env.lr_map.rates, 2e-3 * np.geomspace(1 / 8, 8, 7))
    assert env.lr_map.rates[3] == pytest.approx(2e-3)  # the middle step is the base method
    for bad, message in (({"n_lr_steps": 6}, "odd n_lr_steps"), ({"base_lr": None}, "needs base_lr")):
        with pytest.raises(ValueError, match=message):
            digits_env(**{"lr_scale": "relative", "base_lr": 2e-3, "n_lr_steps": 7, **bad})


def test_observation_extras_report_progress_rates_and_losses():
    env = digits_env(obs_extras=["loss", "progress", "lr"], epochs_per_episode=2)
    n_pooled = env.n_layers * 4
    assert env.observation_space.shape == (n_pooled + 1 + env.n_layers + 3,)
    obs, info = env.reset(seed=0)
    assert obs[n_pooled] == 0.0 and np.all(obs[n_pooled + 1 : n_pooled + 6] == -8)  # nothing taken yet
    assert obs[-3] == pytest.approx(math.log1p(info["loss"]))
    action = np.array([0, 2, 4, 6, 8])
    obs, *_ = env.step(action)
    assert obs[n_pooled] == pytest.approx(1 / env.episode_steps)
    rates = env.action_to_learning_rates(action)
    np.testing.assert_allclose(obs[n_pooled + 1 : n_pooled + 6], np.log10(np.maximum(rates, 1e-8)), rtol=1e-6)
    assert np.all(np.isfinite(obs)) and env.observation_space.contains(obs)
    with pytest.raises(ValueError, match="obs_extras"):
        digits_env(obs_extras=["gradients"])


def test_loss_improvement_rewards_the_next_loss_against_the_running_mean():
    env = digits_env(reward="loss_improvement", epochs_per_episode=2)
    env.reset(seed=0)
    losses, rewards = [], []
    for _ in range(6):
        _, reward, _, _, info = env.step(np.full(env.n_layers, 3))
        losses.append(info["loss"])  # the loss of the batch this step trained on
        rewards.append(reward)
    mean = losses[0]
    for t, reward in enumerate(rewards[:-1]):  # reward t compares the loss of batch t+1
        assert reward == pytest.approx(np.clip((mean - losses[t + 1]) / mean, -1, 1))
        mean = 0.9 * mean + 0.1 * losses[t + 1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"optimizer": "schedulefree_adamw", "reward": "loss_improvement"},
        {"lr_scale": "relative", "base_lr": 1e-3, "n_lr_steps": 9, "schedule": "cosine", "warmup": 0.1},
        {"obs_extras": ["progress", "lr", "loss"], "optimizer": "adamw"},
        # Issue 25: each new base with residual actions, the warm-down schedule, the gradient extras.
        *(
            {
                "optimizer": name,
                "lr_scale": "residual",
                "base_lr": 1.0,
                "n_lr_steps": 6,
                "schedule": "warmdown",
            }
            for name in PARAMETER_FREE
        ),
        {"optimizer": "prodigy", "obs_extras": ["grad_ratio", "drift", "grad_cosine", "base_step"]},
    ],
)
def test_env_checkers_pass_with_the_options_on(kwargs):
    env = gym.make("FineTune-Digits-v0", **TINY_DIGITS, **kwargs)
    gym_check_env(env.unwrapped, skip_render_check=True, skip_close_check=True)
    sb3_check_env(env, warn=True, skip_render_check=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimizer": "lion"}, "unknown optimizer 'lion'"),
        ({"schedule": "step"}, "unknown schedule 'step'"),
        ({"warmup": 1.5}, "warmup must be a fraction"),
        ({"cooldown": 0.0}, "cooldown must be a fraction"),
        ({"schedule": "warmdown", "warmup": 0.5, "cooldown": 0.6}, "together exceed the episode"),
        ({"reward": "val"}, "unknown reward 'val'"),
        ({"optimizer": "sgd", "optimizer_kwargs": {"betas": (0.9, 0.99)}}, "optimizer 'sgd' does not take"),
    ],
)
def test_bad_option_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        env = digits_env(**kwargs)
        env.reset(seed=0)  # the optimizer is built at reset


def test_prodigy_at_different_rates_per_layer_scales_its_one_global_step():
    """A layer at half the top rate moves by exactly half of the step Prodigy takes for it at the
    top rate, with the same estimate d; a uniform action is the package's Prodigy bit for bit."""
    from prodigyopt import Prodigy

    from finetune_gym.optimizers import LayerScaledProdigy

    def pair(seed: int) -> tuple[nn.Linear, nn.Linear]:
        torch.manual_seed(seed)
        return nn.Linear(4, 3), nn.Linear(3, 2)

    def train(cls: type, rates: tuple[float, float], steps: int = 5) -> tuple[list, list, float]:
        a, b = pair(0)
        optimizer = cls(
            [{"params": a.parameters(), "lr": rates[0]}, {"params": b.parameters(), "lr": rates[1]}]
        )
        generator = torch.Generator().manual_seed(1)
        displacements = []
        for _ in range(steps):
            x = torch.randn(8, 4, generator=generator)
            before = [p.detach().clone() for p in [*a.parameters(), *b.parameters()]]
            optimizer.zero_grad()
            b(torch.tanh(a(x))).pow(2).mean().backward()
            grads = [p.grad.clone() for p in [*a.parameters(), *b.parameters()]]
            optimizer.step()
            after = [*a.parameters(), *b.parameters()]
            displacements.append(([q.detach() - p for p, q in zip(before, after, strict=True)], grads))
        return (
            displacements,
            [p.detach().clone() for p in [*a.parameters(), *b.parameters()]],
            optimizer.param_groups[0]["d"],
        )

    # Uniform: the package's optimizer exactly.
    _, ours, d_ours = train(LayerScaledProdigy, (1.0, 1.0))
    _, theirs, d_theirs = train(Prodigy, (1.0, 1.0))
    assert d_ours == d_theirs and all(torch.equal(x, y) for x, y in zip(ours, theirs, strict=True))
    # Half rate on the first layer: its first step is half of its full-rate first step (same
    # gradients, same d at the first step); the second layer's is unchanged. Rates are restored.
    half, _, _ = train(LayerScaledProdigy, (0.5, 1.0), steps=1)
    full, _, _ = train(LayerScaledProdigy, (1.0, 1.0), steps=1)
    (moved_half, _), (moved_full, _) = half[0], full[0]
    for k in range(2):  # the first layer's weight and bias
        torch.testing.assert_close(moved_half[k], 0.5 * moved_full[k])
    for k in range(2, 4):
        torch.testing.assert_close(moved_half[k], moved_full[k])
    optimizer = LayerScaledProdigy(
        [{"params": [nn.Parameter(torch.ones(2))], "lr": 0.25}, {"params": [], "lr": 1.0}]
    )
    assert [g["lr"] for g in optimizer.param_groups] == [0.25, 1.0]


def test_prodigy_takes_per_layer_multipliers_in_the_env():
    """Per-layer actions (the relative and residual spaces, a profile) run on Prodigy; freezing at 0 holds."""
    env = digits_env(optimizer="prodigy")
    env.reset(seed=0)
    frozen = next(env.unwrapped.model.parameters()).detach().clone()
    action = np.full(env.n_layers, 19)
    action[0] = 0
    action[1] = 10
    env.step(action)
    env.step(action)
    assert torch.equal(next(env.unwrapped.model.parameters()).detach(), frozen)


EXTRAS_ALL = "obs_extras=['progress','lr','loss','grad_ratio','drift','grad_cosine','base_step']"


@pytest.mark.parametrize(
    "options",
    [
        ["optimizer=schedulefree_adamw", "lr_scale=relative", "base_lr=0.0025", "n_lr_steps=7"],
        ["optimizer=mechanic_adamw", "lr_scale=residual", "base_lr=1.0", "n_lr_steps=6"],
    ],
    ids=["schedulefree-relative", "mechanic-residual"],
)
def test_a_run_with_the_new_options_resumes_bit_identically_after_sigkill(tmp_path, package_cache, options):
    """Relative actions around Schedule-Free AdamW (residual ones around Mechanic), every observation
    extra, the loss-improvement reward, RecurrentPPO learning: killed after its first checkpoint and
    resumed, it ends with the same weights."""
    from conftest import killed_and_unbroken

    args = [
        "--episodes", "1", "--epochs-per-episode", "4", "--ema", "none", "--reward", "loss_improvement",
        "--no-progress", "--env-kwargs", *options, EXTRAS_ALL,
    ]  # fmt: skip
    reference, killed = killed_and_unbroken(args, tmp_path, package_cache)
    a = torch.load(reference / "final_model.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "final_model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
