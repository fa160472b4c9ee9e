import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TINY_DIGITS

import finetune_gym  # noqa: F401  (registers the ids)
from finetune_gym import EMAEpisodeWrapper, FineTuneEnv


def finish_episode(env, level=8):
    terminated = False
    while not terminated:
        _, _, terminated, _, _ = env.step(np.full(env.unwrapped.n_layers, level))


@pytest.mark.parametrize("ema", [0.2, 0.8])
def test_ema_formula_between_episodes(ema):
    env = gym.make("FineTune-Digits-v0", ema=ema, **TINY_DIGITS)
    base = env.unwrapped
    env.reset(seed=0)
    source = base.source_state_dict()
    finish_episode(env)
    target = base.fine_tuned_state_dict()
    env.reset()
    new_source = base.source_state_dict()
    for key, old in source.items():
        if old.is_floating_point():
            expected = (1 - ema) * old + ema * target[key]
            torch.testing.assert_close(new_source[key], expected, rtol=1e-6, atol=1e-7, msg=key)
        else:  # num_batches_tracked: averaged, then truncated to an integer
            assert new_source[key] == int((1 - ema) * old.item() + ema * target[key].item())
    # And the new episode starts from the new source.
    for name, param in base.model.named_parameters():
        assert torch.equal(param.detach().cpu(), new_source[name]), name


def test_reset_mid_episode_does_not_average():
    env = gym.make("FineTune-Digits-v0", **{**TINY_DIGITS, "epochs_per_episode": 2})
    base = env.unwrapped
    env.reset(seed=0)
    source = base.source_state_dict()
    env.step(np.full(base.n_layers, 10))
    env.reset()
    for key, value in base.source_state_dict().items():
        assert torch.equal(value, source[key])


def test_registered_ids_wrap_by_default_and_ema_none_disables():
    wrapped = gym.make("FineTune-Digits-v0", **TINY_DIGITS)
    assert any(isinstance(w, EMAEpisodeWrapper) for w in _chain(wrapped))
    assert wrapped.unwrapped.spec.id == "FineTune-Digits-v0"
    bare = gym.make("FineTune-Digits-v0", ema=None, **TINY_DIGITS)
    assert not any(isinstance(w, EMAEpisodeWrapper) for w in _chain(bare))
    bare.reset(seed=0)
    source = bare.unwrapped.source_state_dict()
    finish_episode(bare)
    bare.reset()
    for key, value in bare.unwrapped.source_state_dict().items():
        assert torch.equal(value, source[key])


def _chain(env):
    while isinstance(env, gym.Wrapper):
        yield env
        env = env.env


def test_bad_ema_values():
    base = gym.make("FineTune-Digits-v0", ema=None, **TINY_DIGITS).unwrapped
    assert isinstance(base, FineTuneEnv)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="ema must be in"):
            EMAEpisodeWrapper(base, ema=bad)
    with pytest.raises(TypeError, match="FineTuneEnv"):
        EMAEpisodeWrapper(gym.make("CartPole-v1"), ema=0.2)
