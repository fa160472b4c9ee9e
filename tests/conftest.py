"""Shared fixtures: real small data (made here, shipped by scikit-learn, or in ../shared/data)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune_gym import presets

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = presets.data_root()
CIFAR_CHECKPOINT = presets.cifar_checkpoint(SHARED_DATA)
GTSRB_ROOT = SHARED_DATA


def limit(seconds: float) -> float:
    """A time limit for a subprocess or a wait, scaled to how loaded the machine is now.

    The limits catch hangs, not slowness: a limit set on a quiet machine fails a correct test on a
    busy one (the suite took 1 h 42 min on a loaded 2-core machine, and a benchmark's subprocess
    ran past its 600 s). Each limit is multiplied by the run queue per core (the 1-minute load
    average over the core count, at least 1) and by ``FINETUNE_GYM_TEST_TIME_SCALE`` (default 1)
    for machines slower than this one."""
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        load = 1.0
    scale = float(os.environ.get("FINETUNE_GYM_TEST_TIME_SCALE", "1"))
    return seconds * max(1.0, load) * max(1.0, scale)


@pytest.fixture(scope="session", autouse=True)
def package_cache(tmp_path_factory):
    """Keep the digits source network and any hub downloads out of the user's home."""
    home = tmp_path_factory.mktemp("finetune_gym_home")
    old = {k: os.environ.get(k) for k in ("FINETUNE_GYM_HOME", "TORCH_HOME")}
    os.environ["FINETUNE_GYM_HOME"] = str(home / "finetune_gym")
    os.environ["TORCH_HOME"] = str(home / "torch")
    yield home
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def needs_shared(path: Path):
    return pytest.mark.skipif(
        not path.exists(), reason=f"real data not found at {path} (see ../shared/data/README.md)"
    )


def make_image_folder(
    root: Path, n_classes: int = 3, per_class: int = 6, size: int = 24, test_per_class: int = 3
):
    """A real (tiny) image tree: each class a differently coloured, noisy square pattern."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for c in range(n_classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = np.zeros((size, size, 3), dtype=np.float64)
                base[..., c % 3] = 200
                base[c * 4 : c * 4 + 8, :, :] = 255
                pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "folder")


TINY_VIT = {  # torchvision's VisionTransformer class by import path, at a size a test can afford
    "model": "torchvision.models.vision_transformer:VisionTransformer",
    "model_kwargs": {
        "image_size": 32,
        "patch_size": 8,
        "num_layers": 2,
        "num_heads": 2,
        "hidden_dim": 16,
        "mlp_dim": 32,
    },
}


TINY_DIGITS = {"epochs_per_episode": 1, "batch_size": 64, "sampling_rate": 0.3}

# train.py arguments for a run of a few seconds on the digits default.
TINY_TRAIN_ARGS = [
    "--episodes",
    "2",
    "--epochs-per-episode",
    "1",
    "--sampling-rate",
    "0.3",
    "--no-progress",
    "--env-kwargs",
    "batch_size=64",
]


def kill_after_first_checkpoint(cmd: list[str], run_dir: Path, env: dict[str, str]) -> int:
    """Start ``cmd`` (a train.py run into ``run_dir``), SIGKILL it once its first checkpoint exists,
    as a crash would; returns its exit status."""
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + limit(120)
    while not (run_dir / "checkpoint.pt").exists():
        assert process.poll() is None, "the run finished before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    return process.wait()


def killed_and_unbroken(args: list[str], tmp_path: Path, package_cache: Path) -> tuple[Path, Path]:
    """Run ``train.py args`` twice: once unbroken (``tmp_path/reference``) and once SIGKILLed after
    its first checkpoint and resumed (``tmp_path/killed``); their run folders, for a test to compare
    (a resume must give the unbroken run, bit for bit)."""
    import sys

    env = {**os.environ, "FINETUNE_GYM_HOME": str(package_cache / "finetune_gym")}
    cmd = [sys.executable, "train.py", *args]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(
        [*cmd, "--run-dir", str(reference)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=limit(600),
    )
    assert kill_after_first_checkpoint([*cmd, "--run-dir", str(killed)], killed, env) == -signal.SIGKILL
    resumed = subprocess.run(
        [*cmd, "--run-dir", str(killed), "--resume"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=limit(600),
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "at step " in resumed.stdout  # it resumed mid-run, not from the start
    return reference, killed


def digits_instance_set(tmp_path: Path, epochs: int = 2) -> str:
    """A tiny instance set on the built-in digits: split 1 trains on 3 seeds at 30% and tests on
    one at 50%; the file's path."""
    from finetune_gym.instances import Instance, InstanceSet

    train = [Instance("digits", "digits_resnet8", 0.3, s, epochs) for s in range(3)]
    test = [Instance("digits", "digits_resnet8", 0.5, 7, epochs)]
    splits = {"1": {"train": [i.id for i in train], "test": [i.id for i in test]}}
    InstanceSet("digits-test", [*train, *test], splits).save(tmp_path / "set.json")
    return str(tmp_path / "set.json")
