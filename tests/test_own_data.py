"""Fine-tuning on your own images: the README's commands, every id on an image folder, dataset
options that follow the dataset, and the thread option (issue 16)."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess

import gymnasium as gym
import pytest
from conftest import CIFAR_CHECKPOINT, ROOT, TINY_TRAIN_ARGS, limit, make_image_folder

import finetune_gym  # noqa: F401
import train
from finetune_gym import ENV_IDS, default_config
from finetune_gym.agents.threads import load_warning

WEIGHTS = CIFAR_CHECKPOINT


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    # 27 per class: 64 training images after validation, 2 steps an epoch (the least RL-Tune takes).
    return make_image_folder(tmp_path_factory.mktemp("own") / "photos", n_classes=3, per_class=27, size=16)


def _own_data_block() -> str:
    section = (ROOT / "README.md").read_text().split("## Your own data", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash", 1)[1].split("```", 1)[0]


@pytest.mark.slow
@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"the CIFAR-10 ResNet-20 checkpoint is not at {WEIGHTS}")
def test_readme_own_data_commands_run_as_written(photos, tmp_path):
    block = _own_data_block()
    # The block as written, with its three placeholders pointing at a generated folder.
    values = {"PHOTOS": str(photos), "WEIGHTS": str(WEIGHTS), "RUNS": str(tmp_path / "runs")}
    for name, value in values.items():
        block, count = re.subn(rf"^{name}=\S+", f"{name}={value}", block, count=1, flags=re.M)
        assert count == 1, f"the README block no longer sets {name}"
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=limit(1800),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "runs" / "table.md").read_text()
    for method in ("uniform[lr=0.001]", "schedulefree_adamw", "rl_tune", "random"):
        assert f"| {method} |" in table, table
    for run in ("uniform", "schedulefree", "rl_tune", "random"):
        results = json.loads((tmp_path / "runs" / run / "results.json").read_text())
        assert results["config"]["env_kwargs"]["dataset"] == "imagefolder"
        assert 0.0 <= results["final_test_accuracy"] <= 1.0


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_every_id_builds_and_steps_on_an_image_folder(env_id, photos):
    kwargs = {"dataset": "imagefolder", "data_root": str(photos), "batch_size": 16, "epochs_per_episode": 1}
    if env_id == "FineTune-Digits-v0":  # a greyscale source network: decode the folder as greyscale
        kwargs["dataset_kwargs"] = {"channels": 1}
    else:
        kwargs.update(weights=None, image_size=32)
    env = gym.make(env_id, **kwargs)
    observation, _ = env.reset(seed=0)
    assert env.observation_space.contains(observation)
    observation, reward, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(observation) and 0.0 <= reward <= 1.0
    assert env.unwrapped.dataset.classes == ["class_0", "class_1", "class_2"]
    env.close()


def test_a_greyscale_network_on_a_colour_folder_says_how(photos):
    with pytest.raises(ValueError, match=r"dataset_kwargs=\{'channels': 1\}"):
        gym.make("FineTune-Digits-v0", dataset="imagefolder", data_root=str(photos))
    with pytest.raises(ValueError, match="channels must be 1"):
        gym.make(
            "FineTune-Digits-v0", dataset="imagefolder", data_root=str(photos), dataset_kwargs={"channels": 2}
        )


def test_switching_dataset_drops_the_ids_dataset_options(photos):
    # The id's GTSRB option stays its default (and GTSRB's), but it does not follow another dataset.
    assert default_config("FineTune-CIFARResNet-v0")["dataset_kwargs"] == {"one_frame_per_track": True}
    env = gym.make("FineTune-CIFARResNet-v0", dataset="imagefolder", data_root=str(photos), weights=None)
    assert env.unwrapped.config["dataset_kwargs"] is None
    env.close()
    # An option the user gives is theirs: an error names it when the dataset does not take it.
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['one_frame_per_track'\]"):
        gym.make(
            "FineTune-CIFARResNet-v0",
            dataset="imagefolder",
            data_root=str(photos),
            weights=None,
            dataset_kwargs={"one_frame_per_track": True},
        )
    spec = gym.spec("FineTune-CIFARResNet-v0")
    assert pickle.loads(pickle.dumps(spec.kwargs))["dataset_kwargs"].dataset == "gtsrb"


def test_the_obvious_train_command_on_own_photos_works(photos, tmp_path):
    run_dir = tmp_path / "run"
    code = train.main(
        ["--env", "FineTune-CIFARResNet-v0", "--dataset", "imagefolder", "--data-root", str(photos)]
        + ["--env-kwargs", "weights=None", "--episodes", "1", "--epochs-per-episode", "2", "--no-progress"]
        + ["--run-dir", str(run_dir)]
    )
    assert code == 0 and (run_dir / "results.json").is_file()


def test_threads_are_set_recorded_and_checked(tmp_path):
    run_dir = tmp_path / "run"
    assert train.main([*TINY_TRAIN_ARGS, "--threads", "1", "--run-dir", str(run_dir), "--no-progress"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["threads"] == 1 and "(torch threads 1)" in results["machine"]
    with pytest.raises(SystemExit):
        train.main([*TINY_TRAIN_ARGS, "--threads", "0", "--run-dir", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_load_warning_says_what_to_do():
    assert load_warning(2, load=0.1, cores=2) is None
    busy = load_warning(2, load=1.2, cores=2)
    assert busy is not None and "--threads 1" in busy and "1.2 on 2 cores" in busy
    assert "slower until the other work ends" in load_warning(1, load=3.0, cores=2)
    assert os.cpu_count() is None or load_warning(1, load=0.0) is None
