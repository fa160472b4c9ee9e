"""The README's main command, end to end, in a fresh process."""

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import limit

ROOT = Path(__file__).resolve().parents[1]


def _python(args: list[str], cwd: Path, package_cache: Path) -> subprocess.CompletedProcess:
    """``python ARGS`` in a fresh process, with the session's package cache (the digits source)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=limit(300),
        env={**os.environ, "FINETUNE_GYM_HOME": str(package_cache / "finetune_gym")},
    )


def test_demo_runs_the_offline_default(package_cache):
    result = _python(
        ["-m", "finetune_gym", "--episodes", "2", "--epochs-per-episode", "2"], ROOT, package_cache
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


def test_readme_sb3_example_runs_as_written(package_cache, tmp_path):
    """The README's RecurrentPPO block, copied out of the README and run in a fresh process: the
    example a newcomer pastes first must work, and train and act as it says."""
    readme = (ROOT / "README.md").read_text()
    blocks = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "RecurrentPPO(" in block]
    assert len(blocks) == 1, "the README should hold one RecurrentPPO example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    result = _python([str(script)], tmp_path, package_cache)
    assert result.returncode == 0, result.stderr
    accuracy = float(re.search(r"validation accuracy after the episode: ([0-9.]+)", result.stdout).group(1))
    assert accuracy > 0.5, result.stdout  # two epochs fine-tune digits 5-9 well above chance (0.2)
