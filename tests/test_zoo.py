"""The RL Zoo path: hyperparams/<algo>.yml generated from the package's hyperparameters, the
ppo_lstm alias, and a zoo training run and replay end to end (when rl_zoo3 is installed: the dev
extra installs it, so CI runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from conftest import SHARED_DATA, limit

from finetune_gym import ENV_IDS
from finetune_gym.agents import registry
from finetune_gym.agents.zoo import STEPS_PER_EPOCH, ZOO_ALGOS, render, zoo_hyperparams

ROOT = Path(__file__).resolve().parents[1]
SHARED = SHARED_DATA


@pytest.mark.parametrize("algo", sorted(ZOO_ALGOS))
def test_hyperparameter_files_are_generated_from_the_package(algo):
    path = ROOT / "hyperparams" / f"{algo}.yml"
    assert path.read_text() == render(algo), (
        f"{path} differs from finetune_gym/agents/hyperparams.py: run python -m finetune_gym.agents.zoo hyperparams"
    )
    yaml = pytest.importorskip("yaml")
    parsed = yaml.safe_load(path.read_text())
    assert set(parsed) == set(ENV_IDS)
    for env_id, block in parsed.items():
        assert block == zoo_hyperparams(algo)[env_id]
        assert block["n_timesteps"] == 50 * block["n_steps"]
        assert block["normalize"] == "dict(norm_obs=True, norm_reward=False)"


@pytest.mark.parametrize("env_id", ["FineTune-Digits-v0", "FineTune-CIFARResNet-v0"])
def test_rollout_length_is_one_epoch_of_the_default_configuration(env_id):
    kwargs = {}
    if env_id == "FineTune-CIFARResNet-v0":
        if not (SHARED / "gtsrb").is_dir():
            pytest.skip("GTSRB is not under ../shared/data")
        kwargs = {"data_root": str(SHARED), "weights": None}
    env = gym.make(env_id, **kwargs)
    assert STEPS_PER_EPOCH[env_id] == env.unwrapped.steps_per_epoch
    env.close()


def test_ppo_lstm_is_rl_tune():
    assert registry.canonical_name("ppo_lstm") == "rl_tune"
    assert registry.canonical_name("PPO-LSTM") == "rl_tune"


@pytest.mark.slow
def test_zoo_trains_and_replays_an_environment(tmp_path):
    pytest.importorskip("rl_zoo3")
    env_kwargs = ["--env-kwargs", "sampling_rate:0.3", "batch_size:64", "epochs_per_episode:1"]
    common = ["--algo", "ppo_lstm", "--env", "FineTune-Digits-v0", "--gym-packages", "finetune_gym"]
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "rl_zoo3.train",
            *common,
            "--conf-file",
            str(ROOT / "hyperparams" / "ppo_lstm.yml"),
        ]
        + ["-n", "12", *env_kwargs, "--hyperparams", "n_steps:3", "batch_size:3"]
        + ["--eval-freq", "-1", "-f", "logs", "--seed", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=limit(600),
    )
    assert train.returncode == 0, train.stderr[-3000:]
    saved = tmp_path / "logs" / "ppo_lstm" / "FineTune-Digits-v0_1"
    assert (saved / "FineTune-Digits-v0.zip").is_file()
    assert (saved / "FineTune-Digits-v0" / "vecnormalize.pkl").is_file()
    assert "total_timesteps      | 12" in train.stdout
    enjoy = subprocess.run(
        [sys.executable, "-m", "rl_zoo3.enjoy", *common, "-f", "logs", "--exp-id", "1", "-n", "6"]
        + [*env_kwargs, "--deterministic"],  # rendered, as users type it (issue 24)
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=limit(600),
    )
    assert enjoy.returncode == 0, enjoy.stderr[-3000:]
    assert "Mean reward:" in enjoy.stdout and "Episode Length 3" in enjoy.stdout
    # "human" rendering prints each step: its rates, batch accuracy and loss.
    assert "epoch 0 step 3: batch accuracy" in enjoy.stdout and "lr stem=" in enjoy.stdout
