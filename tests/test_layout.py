"""The README's architecture section lists the tree as it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _architecture_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    return section.split("```")[3]  # the second code block: the tree


def test_readme_tree_lists_every_module_and_only_existing_ones():
    block = _architecture_block()
    listed: set[str] = set()
    folder = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        name = line.split()[0]
        if not line.startswith(" "):
            folder = name if name.endswith("/") else ""
            if not name.endswith("/"):
                listed.add(name)
            continue
        for part in re.split(r",\s*", line.strip().split("  ")[0]):
            listed.add(folder + part)
    for path in listed:
        assert (ROOT / path).exists(), f"README lists {path}, which does not exist"
    for package in ("finetune_gym", "agents"):
        for module in (ROOT / package).glob("*.py"):
            assert f"{package}/{module.name}" in listed, f"README's tree misses {package}/{module.name}"
        for sub in (ROOT / package).iterdir():
            if sub.is_dir() and (sub / "__init__.py").is_file():
                assert f"{package}/{sub.name}/" in listed, f"README's tree misses {package}/{sub.name}/"


def test_console_scripts_point_at_the_command_lines():
    import importlib
    import shutil
    import subprocess

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"finetune-gym-train", "finetune-gym-evaluate", "finetune-gym-demo"} <= set(scripts)
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
        installed = shutil.which(name)
        if installed:  # pip install -e . (the README's commands, CI) puts them on the PATH
            result = subprocess.run([installed, "--help"], capture_output=True, text=True, timeout=120)
            assert result.returncode == 0 and result.stdout.startswith("usage: "), name
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "finetune_gym" / "py.typed").exists() and (ROOT / "agents" / "py.typed").exists()
