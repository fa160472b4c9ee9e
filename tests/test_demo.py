"""The README's main command, end to end, in a fresh process."""

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import limit

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_the_offline_default(package_cache):
    result = subprocess.run(
        [sys.executable, "-m", "finetune_gym", "--episodes", "2", "--epochs-per-episode", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=limit(300),
        env={**os.environ, "FINETUNE_GYM_HOME": str(package_cache / "finetune_gym")},
    )
    assert result.returncode == 0, result.stderr
    assert "FineTune-Digits-v0: 5 layers" in result.stdout
    assert len(re.findall(r"episode \d: validation accuracy", result.stdout)) == 2
    test_accuracy = float(re.search(r"test accuracy of the final model: ([0-9.]+)", result.stdout).group(1))
    assert test_accuracy > 0.5  # random learning rates in [0, 0.01] still fine-tune digits


def test_demo_rejects_bad_kwargs():
    result = subprocess.run(
        [sys.executable, "-m", "finetune_gym", "--env-kwargs", "sampling_rate=3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=limit(120),
    )
    assert result.returncode != 0
    assert "sampling_rate must be in (0, 1]" in result.stderr
