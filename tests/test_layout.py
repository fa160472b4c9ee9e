"""The README's architecture section lists the tree as it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import TINY_TRAIN_ARGS, limit

ROOT = Path(__file__).resolve().parents[1]


def _architecture_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    return section.split("```")[3]  # the second code block: the tree


def _listed_paths(block: str) -> set[str]:
    """The paths the tree names: a line indented under a folder line is inside that folder."""
    listed: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indent, folder path) of the open folder lines
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prefix = stack[-1][1] if stack else ""
        parts = re.split(r",\s*", line.strip().split("  ")[0])
        for part in parts:
            listed.add(prefix + part)
        if len(parts) == 1 and parts[0].endswith("/"):
            stack.append((indent, prefix + parts[0]))
    return listed


def test_readme_tree_lists_every_module_and_only_existing_ones():
    listed = _listed_paths(_architecture_block())
    for path in listed:
        assert (ROOT / path).exists(), f"README lists {path}, which does not exist"
    for package in ("finetune_gym", "agents"):
        for module in (ROOT / package).glob("*.py"):
            assert f"{package}/{module.name}" in listed, f"README's tree misses {package}/{module.name}"
        for sub in (ROOT / package).iterdir():
            if sub.is_dir() and (sub / "__init__.py").is_file():
                assert f"{package}/{sub.name}/" in listed, f"README's tree misses {package}/{sub.name}/"
    # A folder whose modules the tree opens lists all of them.
    for folder in {p for p in listed if p.endswith("/")}:
        if any(p.startswith(folder) and p != folder for p in listed):
            for module in (ROOT / folder).glob("*.py"):
                assert f"{folder}{module.name}" in listed, f"README's tree misses {folder}{module.name}"


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
            result = subprocess.run([installed, "--help"], capture_output=True, text=True, timeout=limit(120))
            assert result.returncode == 0 and result.stdout.startswith("usage: "), name
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "finetune_gym" / "py.typed").exists() and (ROOT / "agents" / "py.typed").exists()


def test_installed_package_list_covers_every_package_folder():
    """pyproject lists packages by hand (the agents folder installs under another name): a new
    subpackage left out of the list would be missing from every wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {"finetune_gym.agents": "agents", **setuptools["package-dir"]}
    listed = set(setuptools["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "finetune_gym").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    found |= {
        "finetune_gym.agents" + "".join("." + part for part in init.parent.relative_to(ROOT / "agents").parts)
        for init in (ROOT / "agents").rglob("__init__.py")
    }
    assert listed == found
    assert dirs["finetune_gym.agents"] == "agents"


def test_no_module_imports_a_top_level_agents_package():
    """One import name everywhere: ``finetune_gym.agents``, never ``agents``."""
    import ast

    offenders = []
    for path in ROOT.rglob("*.py"):
        if {"runs", ".git", "build"} & set(path.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "agents"
            ]
    assert not offenders, f"imports of the top-level name 'agents': {offenders}"


def test_another_agents_package_coexists(tmp_path):
    """A package named ``agents`` (openai-agents' import name) stays importable beside finetune-gym,
    and a run imports nothing under that name (W&B reads a loaded ``agents`` module as an LLM-agents
    run). A subprocess outside the repository, as an installed user runs."""
    import subprocess
    import sys

    other = tmp_path / "site" / "agents"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("OTHER = True\n")
    code = (
        "import sys\n"
        "from finetune_gym.agents.train_cli import main\n"
        f"main({TINY_TRAIN_ARGS + ['--run-dir', str(tmp_path / 'run'), '--no-progress']!r})\n"
        "assert 'agents' not in sys.modules, sorted(m for m in sys.modules if m.startswith('agents'))\n"
        "import agents\n"
        "assert agents.OTHER, agents.__file__\n"
        "print('ok')\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=limit(300),
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("\nok"), result.stderr[-2000:]


def test_the_agents_folder_refuses_a_top_level_import():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import agents"], cwd=ROOT, capture_output=True, text=True, timeout=limit(120)
    )
    assert result.returncode != 0
    assert "imported as finetune_gym.agents" in result.stderr


def test_the_environment_imports_no_agent_sb3_or_wandb():
    """Data flows one way: the environment package never imports what runs on it."""
    import ast

    for path in (ROOT / "finetune_gym").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            else:
                continue
            for name in names:
                assert not (
                    name.startswith(("finetune_gym.agents", "stable_baselines3", "sb3_contrib", "wandb"))
                    or name.lstrip(".").startswith("agents")
                ), f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"


def test_time_limits_scale_with_the_machines_load(monkeypatch):
    """A loaded 2-core machine ran a benchmark's subprocess past its fixed 600 s (issue 24): every
    limit in the suite goes through conftest.limit, which grows with the load per core."""
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 0.0, 0.0))
    monkeypatch.delenv("FINETUNE_GYM_TEST_TIME_SCALE", raising=False)
    assert limit(100) == 100  # under one runnable process per core: as written
    monkeypatch.setattr(os, "getloadavg", lambda: (8.0, 0.0, 0.0))
    assert limit(100) == 400  # 4 processes per core: 4x
    monkeypatch.setenv("FINETUNE_GYM_TEST_TIME_SCALE", "2")
    assert limit(100) == 800
    literal = re.compile(r"timeout=\d|time\.(?:time|monotonic)\(\) \+ \d")
    for path in sorted((ROOT / "tests").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not literal.search(line), f"{path.name}:{number}: a fixed limit; use limit(...)"


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_scripts_in_a_clone_that_was_never_installed_say_how_to_install(script, tmp_path):
    """Without the install, finetune_gym.agents (the agents/ folder) cannot be imported: the
    script says so in one line with the command to run, instead of a ModuleNotFoundError."""
    import subprocess
    import sys

    # Only the plain path finders, and the repository first: finetune_gym is found in the folder,
    # its agents nowhere (as in a fresh clone; the editable install's mapping is left out).
    code = (
        "import runpy, sys\n"
        "plain = ('BuiltinImporter', 'FrozenImporter', 'PathFinder')\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, '__name__', '') in plain]\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"sys.argv = [{script!r}]\n"
        f"runpy.run_path({str(ROOT / script)!r}, run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=limit(120)
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: finetune-gym is not installed"), lines
    assert 'pip install -e "."' in lines[0]
