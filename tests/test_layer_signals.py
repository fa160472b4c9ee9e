"""The gradient extras (issue 25): each value against its definition computed by hand from the
tensors of the step, their checkpoint state, and the env checkers with them on."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from test_env import digits_env

from finetune_gym.layer_signals import FLOOR, GRADIENT_EXTRAS
from finetune_gym.observation import extras_layout

ALL = ["progress", "lr", "loss", *GRADIENT_EXTRAS]


def extras_of(env, obs: np.ndarray) -> dict[str, np.ndarray]:
    """The gradient extras by name, where the observation's layout puts them."""
    layout = extras_layout(env.obs_extras, env.n_layers, env.pooler.features)
    assert layout["grad_ratio"].start == env.n_layers * env.pooler.features + 1 + env.n_layers + 3
    assert layout["base_step"].stop == len(obs)
    return {name: obs[layout[name]] for name in GRADIENT_EXTRAS}


def norm(tensors) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


@pytest.mark.parametrize("optimizer", ["adam", "prodigy", "ldog"])
def test_each_extra_is_its_definition(optimizer):
    options = {} if optimizer == "adam" else {"lr_steps": [0.0, 0.5, 1.0]}
    env = digits_env(obs_extras=ALL, optimizer=optimizer, epochs_per_episode=2, **options)
    obs, _ = env.reset(seed=0)
    first = extras_of(env, obs)
    assert np.all(first["grad_ratio"] == FLOOR) and np.all(first["drift"] == FLOOR)
    assert np.all(first["grad_cosine"] == 0) and np.all(first["base_step"] == FLOOR)
    source = [[p.detach().clone() for p in layer.parameters] for layer in env.layers]
    action = np.full(env.n_layers, len(env.lr_map.rates) - 1)
    action[1] = 1
    previous = None
    for _ in range(3):
        grads = [[p.grad.detach().clone() for p in layer.parameters] for layer in env.layers]
        weights = [[p.detach().clone() for p in layer.parameters] for layer in env.layers]
        obs, *_ = env.step(action)
        got = extras_of(env, obs)
        for i, layer in enumerate(env.layers):
            ratio = norm(grads[i]) / norm(weights[i])
            assert got["grad_ratio"][i] == pytest.approx(math.log10(ratio), abs=1e-4)
            moved = norm([p.detach() - s for p, s in zip(layer.parameters, source[i], strict=True)])
            assert got["drift"][i] == pytest.approx(math.log10(max(moved / norm(source[i]), 1e-8)), abs=1e-3)
            if previous is None:
                assert got["grad_cosine"][i] == 0
            else:
                dot = sum(
                    float((a.double() * b.double()).sum()) for a, b in zip(grads[i], previous[i], strict=True)
                )
                cosine = dot / (norm(grads[i]) * norm(previous[i]))
                assert got["grad_cosine"][i] == pytest.approx(cosine, abs=1e-3)
        group = env.optimizer.param_groups
        if optimizer == "adam":
            expected = [math.log10(g["lr"]) for g in group]
        elif optimizer == "prodigy":
            expected = [math.log10(g["d"] * g["lr"]) for g in group]
        else:
            expected = [float(np.mean([math.log10(float(e)) for e in g["eta"]])) for g in group]
        np.testing.assert_allclose(got["base_step"], expected, atol=1e-4)
        previous = grads


def test_the_statistics_resume_exactly_from_the_environments_state():
    env = digits_env(obs_extras=ALL, optimizer="prodigy", lr_steps=[0.0, 1.0], epochs_per_episode=2)
    env.reset(seed=0)
    action = np.ones(env.n_layers, dtype=int)
    for _ in range(3):
        env.step(action)
    state = env.get_state()
    twin = digits_env(obs_extras=ALL, optimizer="prodigy", lr_steps=[0.0, 1.0], epochs_per_episode=2)
    twin.set_state(state)
    for _ in range(3):
        a, b = env.step(action)[0], twin.step(action)[0]
        assert np.array_equal(a, b)
    without = digits_env(obs_extras=["loss"], optimizer="prodigy", lr_steps=[0.0, 1.0], epochs_per_episode=2)
    without.reset(seed=0)
    with pytest.raises(ValueError, match="no update statistics"):
        twin.set_state(without.get_state())


def test_the_env_checkers_pass_with_every_extra_on():
    env = digits_env(obs_extras=ALL, optimizer="ldog", lr_steps=[0.0, 1.0])
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
