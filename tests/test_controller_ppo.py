"""Issue 28: PPO as a second trainer of the residual controller (same policy class, instances and
objective as the CMA-ES search)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import digits_instance_set
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import finetune_gym
from finetune_gym.agents import controller_ppo as cp
from finetune_gym.agents import residual_controller as rc
from finetune_gym.agents.registry import make_agent
from finetune_gym.agents.run_budget import read_trainer
from finetune_gym.instances import Instance


def _env(tmp_path, **kwargs) -> cp.ControllerTasksEnv:
    config = cp.ControllerPPOConfig(instance_set=digits_instance_set(tmp_path))
    bases = cp.BaseScores(tmp_path / cp.BASES, "prodigy", None)
    return cp.ControllerTasksEnv(config.training_instances(), bases, **kwargs)


def test_the_training_environment_passes_both_checkers(tmp_path):
    env = _env(tmp_path)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(_env(tmp_path), warn=True)


def test_at_its_start_the_policy_is_the_base_run_and_scores_a_gain_of_exactly_zero(tmp_path):
    """theta = 0 and a deterministic action (the mean): every multiplier 1, the base run bit for
    bit, so the paired gain of the run is 0.0 exactly; the base was run once and cached."""
    from stable_baselines3 import PPO

    env = _env(tmp_path)
    model = PPO(cp.SharedRulePolicy, env, n_steps=8, batch_size=8, seed=0, device="cpu")
    assert np.all(model.policy.theta() == 0.0)
    observation, info = env.reset(seed=0)
    done = False
    while not done:
        action, _ = model.predict(observation, deterministic=True)
        assert np.all(rc.action_indices(action[: env.env.n_layers]) == rc.action_indices(np.zeros(1))[0])
        observation, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    assert info["paired_gain"] == 0.0 and reward == 0.0 and info["base_ran"]
    lines = (tmp_path / cp.BASES).read_text().splitlines()
    assert [json.loads(line)["instance"] for line in lines] == [info["instance"]]
    assert env.bases.get(next(i for i in env.instances if i.id == info["instance"])) == (info["val"], False)


def test_the_rule_is_shared_by_every_layer_and_reads_padded_layers_as_zero(tmp_path):
    import torch

    rule = cp.SharedRule(len(rc.FEATURES))
    with torch.no_grad():
        rule.theta.copy_(torch.arange(len(rc.FEATURES), dtype=torch.float32))
    phi = torch.randn(2, cp.MAX_LAYERS, len(rc.FEATURES))
    phi[:, 5:] = 0.0
    mean = rule(phi.flatten(1))
    assert torch.allclose(mean, phi @ rule.theta) and torch.all(mean[:, 5:] == 0.0)
    env = _env(tmp_path)
    observation, _ = env.reset(seed=0)
    assert np.all(observation[env.env.n_layers :] == 0.0) and np.all(
        observation[: env.env.n_layers, 0] == 1.0
    )


def test_training_counts_runs_saves_a_deployable_controller_and_resumes(tmp_path):
    """A budget of runs (base runs counted), every run logged with its paired gain, the trained
    theta saved as a controller file the agent registry deploys; a second call with a larger budget
    goes on from the saved trainer; other settings in the same folder are refused."""
    config = cp.ControllerPPOConfig(
        instance_set=digits_instance_set(tmp_path), runs=5, n_steps=16, batch_size=16, n_epochs=2
    )
    import torch

    before = torch.get_num_threads()
    theta = cp.train_controller_ppo(config, tmp_path / "run", threads=max(1, before - 1) if before > 1 else 2)
    assert torch.get_num_threads() == before  # scoped: later runs in this process keep theirs
    state = read_trainer(tmp_path / "run" / cp.CHECKPOINT)["state"]
    episodes = [json.loads(line) for line in (tmp_path / "run" / cp.EPISODES).read_text().splitlines()]
    bases = (tmp_path / "run" / cp.BASES).read_text().splitlines()
    assert state["runs"] >= 5 and state["runs"] == len(episodes) + len(bases)
    assert len(bases) == len({e["instance"] for e in episodes}) == sum(e["base_ran"] for e in episodes)
    assert not np.all(theta == 0.0)  # PPO moved the rule
    card = rc.load_controller(tmp_path / "run" / cp.CONTROLLER)
    assert card["theta"] == pytest.approx(theta.tolist()) and card["card"]["trainer"] == "ppo"

    instance = Instance("digits", "digits_resnet8", 0.5, 7, 2)
    env = finetune_gym.FineTuneEnv(
        **instance.env_kwargs(), **rc.ResidualController(theta=card["theta"]).env_overrides()
    )
    agent = make_agent("residual_controller", env, policy=str(tmp_path / "run" / cp.CONTROLLER))
    observation, _ = env.reset(seed=0)
    action, _ = agent.predict(observation[None])
    assert action.shape == (1, env.n_layers)

    with open(tmp_path / "run" / cp.EPISODES, "a") as out:  # a run logged after the last save, then a kill
        out.write(json.dumps({"episode": state["episodes"] + 1, "paired_gain": 1.0}) + "\n")
    longer = cp.ControllerPPOConfig(**{**config.__dict__, "runs": state["runs"] + 3})
    cp.train_controller_ppo(longer, tmp_path / "run")
    after = read_trainer(tmp_path / "run" / cp.CHECKPOINT)["state"]
    assert after["runs"] >= state["runs"] + 3 and after["episodes"] > state["episodes"]
    logged = (tmp_path / "run" / cp.EPISODES).read_text().splitlines()
    assert [json.loads(line)["episode"] for line in logged] == list(range(1, after["episodes"] + 1))
    with pytest.raises(ValueError, match="other settings \\(clip_range\\)"):
        cp.train_controller_ppo(
            cp.ControllerPPOConfig(**{**config.__dict__, "clip_range": 0.2}), tmp_path / "run"
        )


def test_a_resumed_environment_goes_on_with_its_instance_order(tmp_path):
    """SB3 seeds every environment at its first reset, a resumed trainer's as well: the order of
    instances goes on from the draws the checkpoint counted, not from the start (split 1's PPO run
    repeated its first instances after a resume before this held)."""

    def draws(env, n, seed):
        env.reset(seed=seed)  # what SB3 does first
        out = [env.instance.id]
        for _ in range(n - 1):
            env.reset()
            out.append(env.instance.id)
        env.close()
        return out

    whole = draws(_env(tmp_path, seed=5), 8, seed=11)
    assert whole[3:8] != whole[0:5]  # repeating the start would show
    assert draws(_env(tmp_path, seed=5, draws_done=3), 5, seed=11) == whole[3:8]


def test_bad_settings_are_refused_with_the_setting_named():
    with pytest.raises(ValueError, match="runs must be a positive integer"):
        cp.ControllerPPOConfig(runs=0)
    with pytest.raises(ValueError, match="clip_range must be > 0"):
        cp.ControllerPPOConfig(clip_range=0.0)


def test_the_benchmark_command_trains_with_ppo_and_reports_it_beside_the_searches(tmp_path, capsys):
    """`controller.py ppo` at a budget of 3 runs, TensorBoard events from SB3, then `status`."""
    from benchmarks import controller

    path = digits_instance_set(tmp_path)
    controller.main(
        ["ppo", "--instance-set", path, "--runs", "3", "--folder", str(tmp_path / "runs"), "--workers", "1",
         "--tensorboard", str(tmp_path / "tb")]
    )  # fmt: skip
    name = controller.run_name(path, "1", 0, "ppo")
    assert name.endswith("-ppo")
    out = capsys.readouterr().out
    assert f"{name}: controller" in out
    assert re.search(
        r"^run [0-9]+/3 \(episode 1\): digits/.+: val .+%, paired gain [+-][0-9.]+ points", out, re.M
    )
    assert rc.load_controller(tmp_path / "runs" / name / cp.CONTROLLER)["card"]["runs"] >= 3
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    controller.main(["status", "--folder", str(tmp_path / "runs")])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{name}: ") and "of 3 runs" in line and "mean gain" in line


def test_two_environments_drawing_one_instance_run_its_base_once(tmp_path, monkeypatch):
    """Base runs are shared by the environment processes through one file: an instance drawn by two
    at once is run once (the second waits for it and reads it), another instance meanwhile runs
    beside it."""
    import concurrent.futures as futures
    import time

    calls = []

    def slow_base(instance, theta, optimizer, data_root):
        calls.append(instance["seed"])
        time.sleep(0.5)
        return {"val": 0.5 + instance["seed"] / 100, "wall_s": 0.5}

    monkeypatch.setattr(cp, "run_instance", slow_base)
    bases = cp.BaseScores(tmp_path / cp.BASES, "prodigy", None)
    a, b = (Instance("digits", "digits_resnet8", 0.3, seed, 1) for seed in (0, 1))
    started = time.perf_counter()
    with futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(bases.get, [a, a, b, a]))
    assert sorted(calls) == [0, 1]
    assert [val for val, _ in results] == [0.5, 0.5, 0.51, 0.5] and sum(ran for _, ran in results) == 2
    assert time.perf_counter() - started < 1.4  # a's and b's bases side by side, not one after the other
    assert len((tmp_path / cp.BASES).read_text().splitlines()) == 2


def test_two_environment_processes_train_share_base_runs_and_keep_their_count(tmp_path):
    """`controller.py ppo --workers 2`'s path: two spawned environment processes, one base run per
    instance however they draw, each process's draws saved; a resume with another count is refused."""
    config = cp.ControllerPPOConfig(
        instance_set=digits_instance_set(tmp_path, epochs=1), runs=4, n_steps=8, batch_size=16, n_epochs=1
    )
    cp.train_controller_ppo(config, tmp_path / "run", n_envs=2, threads=1)
    state = read_trainer(tmp_path / "run" / cp.CHECKPOINT)["state"]
    assert len(state["draws"]) == 2 and all(d >= 1 for d in state["draws"])
    episodes = [json.loads(line) for line in (tmp_path / "run" / cp.EPISODES).read_text().splitlines()]
    bases = [json.loads(line)["instance"] for line in (tmp_path / "run" / cp.BASES).read_text().splitlines()]
    assert len(bases) == len(set(bases)) == sum(e["base_ran"] for e in episodes)
    assert state["runs"] == len(episodes) + len(bases) >= 4
    with pytest.raises(ValueError, match="trained with 2 environments: pass n_envs=2"):
        cp.train_controller_ppo(config, tmp_path / "run", n_envs=1)
