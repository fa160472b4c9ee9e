"""Presets: every shared default in one place, composable, and what the ids and tasks are built from."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from finetune_gym import FineTuneEnv, presets
from finetune_gym.agents.registry import baseline_env_overrides
from finetune_gym.models.resnets import CIFAR_FILES
from finetune_gym.optimizers import DEFAULT_LR
from finetune_gym.registration import default_config
from finetune_gym.tasks import DEFAULT_TASKS, SHARED_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {
    "digits": presets.digits,
    "cifar_source": presets.cifar_source,
    "gtsrb": lambda: presets.gtsrb("/data"),
    "imagefolder": lambda: presets.imagefolder("/data/clothing10"),
    "relative": presets.relative,
    "residual": presets.residual,
    "uniform": lambda: presets.uniform(1e-3),
    "cosine": lambda: presets.cosine(1e-2, 0.1),
    "published": lambda: presets.published("prodigy"),
}


def test_data_root_follows_the_variable_and_defaults_beside_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv(presets.DATA_ENV_VAR, raising=False)
    assert presets.data_root() == ROOT.parent / "shared" / "data"
    monkeypatch.setenv(presets.DATA_ENV_VAR, str(tmp_path))
    assert presets.data_root() == tmp_path
    # Everything derived from it moves with it.
    assert presets.cifar_checkpoint() == tmp_path / "resnet_cifar10" / CIFAR_FILES[20]


def test_cifar_checkpoint_names_the_published_file_and_refuses_unknown_depths(tmp_path):
    for depth, name in CIFAR_FILES.items():
        assert presets.cifar_checkpoint(tmp_path, depth) == tmp_path / "resnet_cifar10" / name
    with pytest.raises(ValueError, match=r"depth 18.*\[20, 32, 44, 56\]"):
        presets.cifar_checkpoint(tmp_path, 18)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_sets_only_environment_arguments_and_returns_a_fresh_dict(name):
    made = PRESETS[name]()
    assert set(made) <= set(FineTuneEnv.default_config()), name
    made.clear()  # the caller owns what it got
    assert PRESETS[name](), name


def test_registered_ids_and_the_task_distribution_are_declared_over_the_presets():
    digits = default_config("FineTune-Digits-v0")
    assert {k: digits[k] for k in presets.digits()} == presets.digits()
    cifar = default_config("FineTune-CIFARResNet-v0")
    expected = {**presets.cifar_source("cifar10"), **presets.gtsrb()}
    assert {k: cifar[k] for k in expected} == expected
    assert DEFAULT_TASKS == [presets.digits()]
    assert {k: SHARED_DEFAULTS[k] for k in presets.relative()} == presets.relative("schedulefree_adamw")
    assert SHARED_DEFAULTS["base_lr"] == DEFAULT_LR["schedulefree_adamw"]


def test_baselines_that_are_environment_settings_are_declared_by_presets():
    """The cosine schedule and the published optimizers are settings of the environment: their
    agents only pick the one rate the preset's grid holds."""
    assert baseline_env_overrides("uniform", lr=3e-3) == presets.uniform(3e-3) == {"lr_steps": [0.0, 3e-3]}
    assert baseline_env_overrides("cosine", lr=1e-2, warmup=0.1) == presets.cosine(1e-2, 0.1)
    assert presets.cosine(1e-2)["schedule"] == "cosine"
    for name, optimizer in (("prodigy", "prodigy"), ("ldog", "ldog"), ("mechanic", "mechanic_adamw")):
        assert baseline_env_overrides(name) == presets.published(optimizer)
        assert presets.published(optimizer)["lr_steps"] == [0.0, DEFAULT_LR[optimizer]]
    assert baseline_env_overrides("schedulefree_adamw", lr=1e-3) == presets.published(
        "schedulefree_adamw", 1e-3
    )


def test_presets_compose_into_a_working_environment():
    """digits | relative: the middle action is the base optimizer's published rate; digits |
    residual: 0 (freeze), then powers of two around the base's own step."""
    env = FineTuneEnv(**(presets.digits() | presets.relative("schedulefree_adamw")))
    try:
        rates = env.unwrapped.lr_map.rates
        assert len(rates) == presets.RELATIVE_STEPS
        assert rates[len(rates) // 2] == pytest.approx(DEFAULT_LR["schedulefree_adamw"])
    finally:
        env.close()
    env = FineTuneEnv(**(presets.digits() | presets.residual("ldog")))
    try:
        np.testing.assert_allclose(env.unwrapped.lr_map.rates, [0, 0.25, 0.5, 1, 2, 4])
    finally:
        env.close()


def test_the_data_folder_and_the_checkpoint_file_name_are_written_in_one_place():
    """Code builds ``shared/data`` paths and the CIFAR checkpoint's file name only through presets
    (text in help strings and docs may name them)."""
    pattern = re.compile(r'"shared"\s*/\s*"data"|"resnet_cifar10"\s*/|resnet20-12fca82f\.th"\)')
    allowed = {
        ROOT / "finetune_gym" / "presets.py",
        ROOT / "finetune_gym" / "models" / "resnets.py",
        Path(__file__).resolve(),  # checks the values themselves
    }
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("finetune_gym", "agents", "benchmarks", "tests")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path not in allowed
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, f"use finetune_gym.presets (data_root, cifar_checkpoint) instead: {found}"


def _numbers_and_defaults(path: Path) -> list[tuple[int, str]]:
    """(line, what) for each published base rate written as a number, and each
    ``epochs_per_episode`` given a literal number (a default, a keyword or a dict entry)."""
    import ast

    rates = set(DEFAULT_LR.values()) - {1.0}  # 1.0 (a parameter-free multiplier) is everywhere
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and type(node.value) is float and node.value in rates:
            found.append((node.lineno, f"base rate {node.value}"))
        pairs: list[tuple[object, object]] = []
        if isinstance(node, ast.Dict):
            pairs = [
                (k.value if isinstance(k, ast.Constant) else None, v)
                for k, v in zip(node.keys, node.values, strict=True)
            ]
        elif isinstance(node, ast.keyword):
            pairs = [(node.arg, node.value)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            pairs = [(node.target.id, node.value)]
        elif isinstance(node, ast.arguments):
            positional = node.posonlyargs + node.args
            pairs = [
                (a.arg, d)
                for a, d in zip(
                    positional[len(positional) - len(node.defaults) :], node.defaults, strict=True
                )
            ]
            pairs += [(a.arg, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True)]
        for name, value in pairs:
            literal = isinstance(value, ast.Constant) and type(value.value) is int
            if name == "epochs_per_episode" and literal:
                found.append((value.lineno, f"epochs_per_episode={value.value}"))
    return found


def test_the_base_rates_and_the_episode_length_are_written_in_one_place():
    """The published rates live in optimizers.DEFAULT_LR and the episode's length in FineTuneEnv's
    signature; the package reads them there (tests and benchmark protocols may state their own)."""
    owners = {
        ROOT / "finetune_gym" / "optimizers.py": "base rate",
        ROOT / "finetune_gym" / "env.py": "epochs_per_episode",
    }
    found = [
        f"{path.relative_to(ROOT)}:{line} {what}"
        for folder in ("finetune_gym", "agents")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line, what in _numbers_and_defaults(path)
        if not what.startswith(owners.get(path, "\0"))
    ]
    found += [
        f"{name}:{line} {what}"
        for name in ("train.py", "evaluate.py")
        for line, what in _numbers_and_defaults(ROOT / name)
    ]
    assert not found, f"read these from optimizers.DEFAULT_LR / FineTuneEnv.default_config(): {found}"
    # The check sees what it is meant to: the owners themselves hold the values.
    assert _numbers_and_defaults(ROOT / "finetune_gym" / "optimizers.py")
    assert any(
        "epochs_per_episode=10" in w for _, w in _numbers_and_defaults(ROOT / "finetune_gym" / "env.py")
    )


def test_an_optimizer_without_a_published_rate_needs_one_given():
    for preset in (presets.relative, presets.residual, presets.published):
        with pytest.raises(ValueError, match=r"'adam' has no published default rate: give the rate"):
            preset("adam")
    assert presets.relative("adam", base_lr=1e-3)["base_lr"] == 1e-3
    assert presets.residual("adam", base_lr=1e-3)["base_lr"] == 1e-3
    assert presets.published("sgd", 0.1) == {"lr_steps": [0.0, 0.1], "optimizer": "sgd"}


# What a method needs besides its defaults to run on the digits network (stem, layer1..3, head).
METHOD_ARGS: dict[str, dict] = {
    "surgical": {"block": "layer2"},
    "stage_profile": {"multipliers": {"stem": 0.5}},
}


def test_every_method_builds_and_acts_on_an_environment_declared_by_presets():
    """Each agent name, on presets.digits() plus what the method declares: an action in the space."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from finetune_gym.agents import AGENT_NAMES, make_agent
    from finetune_gym.agents.registry import layer_tokens
    from finetune_gym.layerwise import LayerwiseView

    for name in AGENT_NAMES:
        kwargs = METHOD_ARGS.get(name, {})
        config = presets.digits() | {"sampling_rate": 0.2, "epochs_per_episode": 1, "batch_size": 64}
        env = FineTuneEnv(**(config | baseline_env_overrides(name, **kwargs)))
        tokens = layer_tokens(name, **kwargs)
        wrapped = env if tokens is None else LayerwiseView(env, tokens)
        venv = DummyVecEnv([lambda wrapped=wrapped: wrapped])
        try:
            agent = make_agent(name, venv, **kwargs)
            action, _ = agent.predict(venv.reset(), deterministic=True)
            assert wrapped.action_space.contains(action[0]), name
        finally:
            venv.close()
