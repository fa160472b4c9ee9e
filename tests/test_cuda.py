"""CUDA paths: run only where a GPU is present (never in CI, which has none).

They check what the CPU tests cannot: the device defaults (bf16 autocast,
channels-last, fused Adam, the image cache on the GPU), at most one synchronising
transfer per step, and a whole run through train.py on the GPU.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import TINY_DIGITS, TINY_TRAIN_ARGS, TINY_VIT

import train
from finetune_gym import FineTuneEnv, default_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda_env(**overrides) -> FineTuneEnv:
    config = {**default_config("FineTune-Digits-v0"), **TINY_DIGITS, "device": "cuda", **overrides}
    config.pop("ema")
    return FineTuneEnv(**config)


def test_device_defaults_and_an_episode():
    env = cuda_env(epochs_per_episode=2)
    assert env.amp_dtype == torch.bfloat16 and env.channels_last
    assert env.stream.images.device.type == "cuda"  # the uint8 cache lives on the device
    obs, _ = env.reset(seed=0)
    assert env.optimizer.defaults.get("fused") is True
    rewards, terminated = [], False
    while not terminated:
        obs, reward, terminated, _, info = env.step(np.full(env.n_layers, 4))
        assert np.all(np.isfinite(obs)) and math.isfinite(info["loss"])
        rewards.append(reward)
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5])
    assert 0.0 <= env.evaluate("test") <= 1.0


def test_zero_learning_rate_freezes_on_the_gpu():
    env = cuda_env()
    env.reset(seed=0)
    before = [p.detach().clone() for p in env.layers[0].parameters]
    action = np.full(env.n_layers, 4)
    action[0] = 0
    env.step(action)
    assert all(torch.equal(a, b) for a, b in zip(before, env.layers[0].parameters, strict=True))


def test_at_most_one_synchronising_transfer_per_step():
    env = cuda_env(epochs_per_episode=3)
    env.reset(seed=0)
    action = np.full(env.n_layers, 4)
    env.step(action)  # allocations and lazy initialisation happen on the first steps
    env.step(action)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            env.step(action)  # a step inside the first epoch: no epoch or episode boundary
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, [str(w.message) for w in syncs]


def test_train_runs_on_the_gpu(tmp_path):
    run_dir = tmp_path / "run"
    assert train.main(["--run-dir", str(run_dir), *TINY_TRAIN_ARGS, "--device", "cuda"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["machine"] == torch.cuda.get_device_name(0)
    assert 0.0 <= results["final_test_accuracy"] <= 1.0


@pytest.mark.parametrize(
    "model, kwargs",
    [
        ("mobilenet_v3_small", {}),  # dropout: a seed per batch
        ("efficientnet_b0", {}),  # stochastic depth too
        (TINY_VIT["model"], {"model_kwargs": TINY_VIT["model_kwargs"]}),  # tokens
    ],
)
def test_families_step_on_the_gpu_with_one_sync(tmp_path, model, kwargs):
    """Other families on the GPU (bf16, channels-last): finite steps, the per-batch dropout seed
    costs no extra synchronisation, and the caller's CUDA generator is left as it was."""
    from conftest import make_image_folder

    root = make_image_folder(tmp_path / "folder", per_class=12)
    env = FineTuneEnv(
        model=model,
        weights=None,
        dataset="imagefolder",
        data_root=str(root),
        image_size=32,
        batch_size=8,
        epochs_per_episode=3,
        device="cuda",
        **kwargs,
    )
    env.reset(seed=0)
    action = np.full(env.n_layers, 4)
    env.step(action)
    env.step(action)
    before = torch.cuda.get_rng_state()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            obs, _, _, _, info = env.step(action)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, [str(w.message) for w in syncs]
    assert np.all(np.isfinite(obs)) and math.isfinite(info["loss"])
    assert torch.equal(before, torch.cuda.get_rng_state())
