"""Every registered id passes gymnasium's and Stable-Baselines3's env checkers (tiny settings)."""

import inspect
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from conftest import CIFAR_CHECKPOINT, GTSRB_ROOT, TINY_DIGITS, limit, make_image_folder
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import finetune_gym
from finetune_gym import ENV_IDS, default_config


def tiny_kwargs(env_id, tmp_path):
    if env_id == "FineTune-Digits-v0":
        return dict(TINY_DIGITS)
    if env_id == "FineTune-ResNet50-v0":
        root = make_image_folder(tmp_path / "folder", size=32)
        return {
            "dataset": "imagefolder",
            "data_root": root,
            "weights": None,
            "image_size": 32,
            "batch_size": 4,
            "epochs_per_episode": 1,
            "device": "cpu",
        }
    if env_id == "FineTune-CIFARResNet-v0":
        if not (GTSRB_ROOT / "gtsrb").exists() or not CIFAR_CHECKPOINT.exists():
            pytest.skip(f"GTSRB and the CIFAR checkpoint are needed under {GTSRB_ROOT}")
        return {
            "data_root": GTSRB_ROOT,
            "weights": CIFAR_CHECKPOINT,
            "sampling_rate": 0.05,
            "batch_size": 16,
            "epochs_per_episode": 1,
            "device": "cpu",
        }
    raise AssertionError(f"no tiny settings for {env_id}")


def test_ids_are_registered_and_exported():
    assert ENV_IDS == ["FineTune-ResNet50-v0", "FineTune-CIFARResNet-v0", "FineTune-Digits-v0"]
    parameters = set(inspect.signature(finetune_gym.FineTuneEnv).parameters)
    for env_id in ENV_IDS:
        spec = gym.spec(env_id)
        assert spec.nondeterministic
        # Every argument the id sets is one the environment takes (a misspelt override would not be).
        assert set(spec.kwargs) == parameters | {"ema"}


def test_an_environment_records_the_configuration_it_was_built_with():
    """The id's defaults, then the call's arguments, reach the environment (and its EMA wrapper)."""
    env = gym.make("FineTune-Digits-v0", ema=0.5, **TINY_DIGITS)
    expected = {**default_config("FineTune-Digits-v0"), **TINY_DIGITS}
    assert expected.pop("ema") == 0.2
    assert env.unwrapped.config == expected
    wrapper = env
    while not isinstance(wrapper, finetune_gym.EMAEpisodeWrapper):
        wrapper = wrapper.env
    assert wrapper.ema == 0.5


def test_paper_defaults_of_the_resnet50_id():
    config = default_config("FineTune-ResNet50-v0")
    assert config["model"] == "resnet50" and config["weights"] == "imagenet"
    assert config["dataset"] == "aircraft" and config["image_size"] == 224
    assert (config["n_lr_steps"], config["lr_min"], config["lr_max"]) == (20, 0.0, 0.01)
    assert config["epochs_per_episode"] == 10 and config["reward"] == "batch" and config["ema"] == 0.2
    with pytest.raises(ValueError, match="unknown env id"):
        default_config("FineTune-VGG-v0")


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_checkers(env_id, tmp_path):
    env = gym.make(env_id, **tiny_kwargs(env_id, tmp_path))
    # The render check builds the id once per render mode and renders each.
    gym_check_env(env.unwrapped, skip_render_check=False, skip_close_check=True)
    sb3_check_env(env, warn=True, skip_render_check=True)
    if env_id == "FineTune-ResNet50-v0":
        assert env.unwrapped.n_layers == 18
        assert env.action_space.nvec.tolist() == [20] * 18


def test_module_prefixed_make(tmp_path):
    env = gym.make("finetune_gym:FineTune-Digits-v0", **TINY_DIGITS)
    assert isinstance(env.unwrapped, finetune_gym.FineTuneEnv)


def test_every_render_mode_shows_the_last_step(capsys):
    """rl_zoo3.enjoy renders "human" unless told not to, SB3's make_vec_env asks for "rgb_array":
    each mode shows the last step's rates, accuracy and loss (issue 24)."""
    env = gym.make("FineTune-Digits-v0", render_mode=None, **TINY_DIGITS)
    env.reset(seed=0)
    assert env.render_mode is None and env.render() is None
    action = np.array([0, 5, 10, 15, 19])
    for mode in ("ansi", "rgb_array", "human"):
        env = gym.make("FineTune-Digits-v0", render_mode=mode, **TINY_DIGITS)
        env.reset(seed=0)
        before = env.render()
        _, _, _, _, info = env.step(action)
        frame = env.render()
        if mode == "ansi":
            assert before.startswith("reset: 5 layers")
            assert f"batch accuracy {info['batch_accuracy']:.3f}" in frame and "head=0.01" in frame
            assert "stem=0 " in frame  # action 0: rate 0 on the paper's grid
        elif mode == "rgb_array":
            assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
            assert (before == 255).all() and not (frame == 255).all()
            # One bar per layer, as high as its step on the grid: the stem's (rate 0) is empty,
            # the head's (the top step) the tallest.
            bars = [(frame[:96, 2 + i * 10 + 4] != 255).any(axis=-1).sum() for i in range(5)]
            assert bars[0] == 0 and bars == sorted(bars) and bars[4] == 96
        else:
            assert before is None and frame is None  # "human" prints during reset and step
            printed = capsys.readouterr().out.splitlines()
            assert printed[0].startswith("reset:") and printed[1].startswith("epoch 0 step 1:")
        env.close()
    with pytest.raises(ValueError, match="renders 'human', 'ansi', 'rgb_array' or None"):
        gym.make("FineTune-Digits-v0", render_mode="rgb", **TINY_DIGITS)


def test_sb3_make_vec_env_takes_the_id():
    """SB3 passes render_mode="rgb_array" to every environment it builds by id."""
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env("FineTune-Digits-v0", n_envs=2, env_kwargs=TINY_DIGITS, seed=0)
    assert venv.num_envs == 2 and venv.observation_space.shape == (5 * 4,)
    venv.reset()
    venv.step(np.stack([venv.action_space.sample()] * 2))
    assert venv.render_mode == "rgb_array"
    venv.close()


def test_the_module_qualified_id_needs_no_import(tmp_path):
    """Gymnasium 1.x dropped entry-point plugins; its way for a package's ids is ``module:id``,
    which imports the module first. A fresh interpreter that never imports finetune_gym builds
    the environment by that string, alone (gym.make) and through SB3's make_vec_env."""
    code = f"""
import sys
import gymnasium as gym
from stable_baselines3.common.env_util import make_vec_env
kwargs = {TINY_DIGITS!r}
assert "finetune_gym" not in sys.modules
env = gym.make("finetune_gym:FineTune-Digits-v0", **kwargs)
env.reset(seed=0)
env.step(env.action_space.sample())
venv = make_vec_env("finetune_gym:FineTune-Digits-v0", n_envs=2, env_kwargs=kwargs, seed=0)
venv.reset()
print("ok", env.spec.id, venv.num_envs)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=limit(300)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "FineTune-Digits-v0", "2"]


def test_a_pickled_or_copied_environment_continues_exactly():
    import copy
    import pickle

    import numpy as np

    env = gym.make("FineTune-Digits-v0", **{**TINY_DIGITS, "epochs_per_episode": 3})
    env.reset(seed=0)
    env.step(np.full(5, 3))
    clones = [pickle.loads(pickle.dumps(env)), copy.deepcopy(env)]
    expected = [env.step(np.full(5, 4)) for _ in range(3)]
    for clone in clones:
        for (obs, reward, *_), (obs2, reward2, *_) in zip(
            expected, [clone.step(np.full(5, 4)) for _ in range(3)], strict=True
        ):
            np.testing.assert_array_equal(obs, obs2)
            assert reward == reward2
