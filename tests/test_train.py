"""train.py end to end: every agent, the run directory, W&B offline, resume after a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN_ARGS, kill_after_first_checkpoint, limit
from wandb_files import offline_run

import evaluate
import train
from finetune_gym.agents import load_agent
from finetune_gym.agents.config import RunConfig
from finetune_gym.agents.outputs import load_final_model
from finetune_gym.agents.run import build_env
from finetune_gym.optimizers import DEFAULT_LR

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_TRAIN_ARGS


def run_train(tmp_path, *args, name="run"):
    run_dir = tmp_path / name
    code = train.main(["--run-dir", str(run_dir), *TINY, *args])
    assert code == 0
    return run_dir


@pytest.mark.parametrize(
    "algo",
    [
        "rl_tune",
        "ppo",
        "a2c",
        "trpo",
        "uniform",
        "cosine",
        "schedulefree_adamw",
        "prodigy",
        "prodigy_layerwise",
        "ldog",
        "mechanic",
        "auto_rgn",
        "layerwise_decay",
        "random",
        "linear_probe",
    ],
)
def test_every_agent_runs_end_to_end(tmp_path, algo):
    run_dir = run_train(tmp_path, "--algo", algo)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["algo"] == algo and results["env_id"] == "FineTune-Digits-v0"
    assert results["config"]["episodes"] == 2 and len(results["episodes"]) == 2
    assert results["env_config"]["sampling_rate"] == 0.3
    assert results["images_seen"] > 0 and results["wall_time_s"] > 0 and results["machine"]
    assert 0.0 <= results["final_test_accuracy"] <= 1.0
    timing = results["timing"]
    assert 0 < timing["env_steps_s"] < timing["loop_s"] and timing["checkpoints_s"] > 0
    assert results["wall_time_s"] > timing["loop_s"]  # the whole run, not since the last checkpoint
    assert (timing["agent_updates_s"] > 0) == (algo in ("rl_tune", "ppo", "a2c", "trpo"))
    # The saved model is the one the env reported on at the end of the last episode.
    assert results["final_val_accuracy"] == results["episodes"][-1]["val_accuracy"]
    env, meta = load_final_model(run_dir / "final_model.pt")
    assert env.evaluate("val") == pytest.approx(results["final_val_accuracy"], abs=1e-12)
    assert env.evaluate("test") == pytest.approx(results["final_test_accuracy"], abs=1e-12)
    schedule = np.load(run_dir / "lr_schedule.npz")
    assert schedule["learning_rates"].shape == (results["steps"], env.n_layers)
    assert list(schedule["layer_names"]) == env.layer_names
    rates = schedule["learning_rates"]
    if algo == "uniform":
        np.testing.assert_allclose(rates, 1e-3, rtol=1e-6)
    elif (
        algo in DEFAULT_LR
    ):  # one rate, the optimizer's published default (a multiplier of 1 for Prodigy, L-DoG)
        np.testing.assert_allclose(rates, DEFAULT_LR[algo], rtol=1e-6)
        assert results["env_config"]["optimizer"] == algo
    elif algo == "cosine":  # 1e-3 decayed over each episode
        assert (
            rates[0, 0] == pytest.approx(1e-3) and np.all(rates <= 1e-3 * (1 + 1e-6)) and rates.min() < 3e-4
        )
    elif algo == "linear_probe":
        assert np.all(rates[:, :-1] == 0) and np.allclose(rates[:, -1], 1e-3)
    elif algo == "layerwise_decay":
        np.testing.assert_allclose(rates[0, 1:] / rates[0, :-1], 1 / 0.8, rtol=1e-5)
    for png in ("lr_heatmap.png", "accuracy.png"):
        assert (run_dir / png).read_bytes()[:4] == b"\x89PNG"
    # The saved agent loads and acts in a fresh environment of the same run.
    venv, _ = build_env(RunConfig.from_json(results["config"]))
    agent, venv = load_agent(run_dir / "agent", venv.venv)
    action, _ = agent.predict(venv.reset(), deterministic=True)
    assert action.shape == (1, env.n_layers)
    assert not (run_dir / "checkpoint.pt").exists()


def test_without_a_terminal_a_run_prints_one_line_per_episode(tmp_path, capsys):
    run_train(tmp_path, "--algo", "random")  # tests capture the output: not a terminal
    out = capsys.readouterr().out
    assert "episode 1/2 (step " in out and "episode 2/2 (step " in out and "\r" not in out


def test_lr_heatmap_of_a_long_run_shows_epochs(tmp_path, monkeypatch):
    import matplotlib.axes

    from finetune_gym.agents import plots

    schedule = {
        "learning_rates": np.tile([1e-4, 1e-2, 0.0], (340, 1)),  # per layer: two decades apart, frozen
        "layer_names": np.array(["a", "b", "c"]),
        "episode": np.repeat(np.arange(2), 170),
        "epoch": np.tile(np.repeat(np.arange(10), 17), 2),
    }
    drawn = {}
    original = matplotlib.axes.Axes.imshow

    def spy(self, data, **kwargs):
        drawn["shape"], drawn["norm"] = np.shape(data), kwargs.get("norm")
        return original(self, data, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    assert plots.lr_heatmap(schedule, tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert drawn["shape"] == (3, 20)  # layers x (2 episodes x 10 epochs): one column per epoch
    assert drawn["norm"] is not None  # the rates span two decades: a log colour scale


def test_exact_uniform_rate_not_on_the_paper_grid(tmp_path):
    run_dir = run_train(tmp_path, "--algo", "uniform", "--agent-kwargs", "lr=3e-4", "--ema", "none")
    rates = np.load(run_dir / "lr_schedule.npz")["learning_rates"]
    np.testing.assert_allclose(rates, 3e-4, rtol=1e-6)


def test_wandb_offline_logs_steps_epochs_episodes_agent_and_artifacts(tmp_path):
    run_dir = run_train(tmp_path, "--wandb", "offline", "--wandb-tags", "unit-test")
    logged = offline_run(run_dir)
    keys = set().union(*logged["history"])
    assert {"step/reward", "step/loss", "lr/mean", "lr/head"} <= keys
    assert {"epoch/train_accuracy", "episode/val_accuracy"} <= keys
    assert {
        "agent/train/policy_gradient_loss",
        "agent/train/value_loss",
        "agent/train/entropy_loss",
        "agent/train/approx_kl",
    } <= keys
    assert any(k.startswith("lr_heatmap") for k in keys)
    results = json.loads((run_dir / "results.json").read_text())
    assert logged["summary"]["final_test_accuracy"] == pytest.approx(results["final_test_accuracy"])
    assert logged["config"]["algo"] == "rl_tune" and logged["config"]["env_id"] == "FineTune-Digits-v0"
    # The agent's hyperparameters, not SB3's internals as text (WandbCallback's copy of __dict__)
    assert not {"_last_obs", "rollout_buffer", "_logger", "policy", "env"} & set(logged["config"])
    sb3 = logged["config"]["sb3"]
    assert sb3["algo"] == "RecurrentPPO" and sb3["clip_range"] == 0.1 and isinstance(sb3["n_steps"], int)
    assert not any(k.startswith("_") for k in sb3)
    assert logged["artifacts"], "results and final model must be logged as an artifact"
    steps = [row["_step"] for row in logged["history"] if "step/reward" in row]
    assert steps == list(range(1, results["steps"] + 1))


def test_wandb_environment_variables_are_the_defaults(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_RUN_GROUP", "group-from-env")
    monkeypatch.setenv("WANDB_TAGS", "a,b")
    run_dir = run_train(tmp_path, "--algo", "uniform", "--wandb", "offline")
    logged = offline_run(run_dir)
    assert logged["project"] == "from-env" and logged["group"] == "group-from-env"
    assert {"a", "b"} <= set(logged["tags"])
    assert f"wandb sync {run_dir / 'wandb'}" in capsys.readouterr().out
    monkeypatch.setenv("WANDB_PROJECT", "ignored")  # a flag wins over the variable
    logged = offline_run(
        run_train(tmp_path, "--algo", "uniform", "--wandb", "offline", "--wandb-project", "flag", name="r2")
    )
    assert logged["project"] == "flag"


def test_two_settings_without_a_run_dir_never_share_a_folder(tmp_path, monkeypatch):
    """What a sweep does: the same command with other hyperparameters, no --run-dir."""
    monkeypatch.chdir(tmp_path)
    for lr in ("1e-3", "3e-4"):
        assert train.main([*TINY, "--algo", "uniform", "--agent-kwargs", f"lr={lr}"]) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert (
        len(runs) == 2
        and "uniform_lr=0.001" in runs[0] + runs[1]
        and "uniform_lr=0.0003" in runs[0] + runs[1]
    )
    methods = {
        json.loads((tmp_path / "runs" / r / "results.json").read_text())["config"]["agent_kwargs"]["lr"]
        for r in runs
    }
    assert methods == {1e-3, 3e-4}
    from finetune_gym.agents import report

    rows = report.load_rows(report.find_runs([tmp_path / "runs"]))
    assert {r.method for r in rows} == {"uniform[lr=0.001]", "uniform[lr=0.0003]"}  # two table rows


@pytest.mark.parametrize("wandb_mode", ["disabled", "offline"])
def test_tensorboard_logs_env_and_agent_with_or_without_wandb(tmp_path, wandb_mode):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    logs = tmp_path / "tb"
    run_dir = run_train(tmp_path, "--tensorboard", str(logs), "--wandb", wandb_mode)
    steps = json.loads((run_dir / "results.json").read_text())["steps"]

    def tags(folder):
        events = event_accumulator.EventAccumulator(str(folder))
        events.Reload()
        return events, set(events.Tags()["scalars"])

    env_events, env_tags = tags(logs / "env")
    assert {"step/reward", "step/loss", "lr/mean", "epoch/train_accuracy", "episode/val_accuracy"} <= env_tags
    assert [e.step for e in env_events.Scalars("step/reward")] == list(range(1, steps + 1))
    _, agent_tags = tags(logs / "agent")
    assert {"train/value_loss", "train/entropy_loss"} <= agent_tags  # RecurrentPPO's own statistics
    if wandb_mode == "offline":  # and W&B still gets them too
        assert "agent/train/value_loss" in set().union(*offline_run(run_dir)["history"])


def test_refusals(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--algo", "dqn", "--run-dir", str(tmp_path / "x")])
    assert "DQN needs a Discrete action space" in capsys.readouterr().err
    run_dir = run_train(tmp_path, "--algo", "uniform")
    before = (run_dir / "results.json").read_text()
    assert train.main(["--run-dir", str(run_dir), *TINY, "--algo", "random"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run_dir / "results.json").read_text() == before, "an existing run must not be touched"
    assert train.main(["--run-dir", str(run_dir), "--resume", "--no-progress"]) == 2
    assert "finished run" in capsys.readouterr().err
    assert train.main(["--run-dir", str(run_dir), *TINY, "--algo", "random", "--overwrite"]) == 0
    assert json.loads((run_dir / "results.json").read_text())["algo"] == "random"
    empty = tmp_path / "never"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    assert train.main(["--run-dir", str(empty), "--resume"]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


def _train_cmd(run_dir, *extra):
    return [
        sys.executable,
        "train.py",
        "--run-dir",
        str(run_dir),
        "--episodes",
        "3",
        "--epochs-per-episode",
        "4",
        "--no-progress",
        *extra,
    ]


def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path, package_cache):
    env = {**os.environ, "FINETUNE_GYM_HOME": str(package_cache / "finetune_gym")}
    reference = tmp_path / "reference"
    subprocess.run(
        _train_cmd(reference), cwd=ROOT, env=env, check=True, capture_output=True, timeout=limit(300)
    )

    killed = tmp_path / "killed"
    assert kill_after_first_checkpoint(_train_cmd(killed), killed, env) == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    # Mark the time the killed process had spent, to see that the resumed run's timing includes it.
    payload = torch.load(killed / "checkpoint.pt", weights_only=False)
    for key in ("updates_s", "checkpoints_s"):
        payload["timing"][key] += 1000.0
    payload["recorder"]["env_seconds"] += 1000.0
    payload["timing"]["loop_s"] += 3000.0  # the loop holds the other three
    payload["timing"]["wall_s"] += 5000.0
    torch.save(payload, killed / "checkpoint.pt")

    resumed = subprocess.run(
        _train_cmd(killed, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit(300)
    )
    assert resumed.returncode == 0, resumed.stderr
    start = int(resumed.stdout.split("at step ")[1].split()[0])
    # Resumed mid-run, at the end of an epoch (digits at 100%: 17 steps an epoch, 12 epochs): where
    # depends on when the kill landed, so any epoch but the last will do.
    assert 0 < start < 3 * 4 * 17 and start % 17 == 0
    a = torch.load(reference / "final_model.pt", weights_only=True)
    b = torch.load(killed / "final_model.pt", weights_only=True)
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (reference, killed))
    assert ra["steps"] == rb["steps"] == 3 * 4 * 17
    assert ra["final_test_accuracy"] == rb["final_test_accuracy"]
    timing = rb["timing"]
    assert timing["resumed"] and timing["loop_s"] > 3000 and timing["env_steps_s"] > 1000
    assert rb["wall_time_s"] > 5000 > ra["wall_time_s"]
    assert timing["agent_updates_s"] > 1000 and timing["checkpoints_s"] > 1000
    assert 0 < timing["agent_acting_s"] < timing["loop_s"] - 3000  # the marks cancel out
    np.testing.assert_array_equal(
        np.load(reference / "lr_schedule.npz")["learning_rates"],
        np.load(killed / "lr_schedule.npz")["learning_rates"],
    )


@pytest.mark.slow
def test_train_with_no_arguments_runs_the_offline_default(tmp_path, package_cache):
    env = {**os.environ, "FINETUNE_GYM_HOME": str(package_cache / "finetune_gym")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=limit(600),
    )
    assert result.returncode == 0, result.stderr
    assert "final test accuracy" in result.stdout
    results = json.loads(
        (tmp_path / "runs" / "FineTune-Digits-v0-digits-r1-rl_tune-s0" / "results.json").read_text()
    )
    assert results["config"]["episodes"] == 5 and results["config"]["epochs_per_episode"] == 10
    assert results["final_test_accuracy"] > 0.8


def test_a_sweep_over_run_settings_gets_a_row_and_a_wandb_group_per_setting(tmp_path, monkeypatch):
    """Two settings that differ only outside the method's name (here the EMA) had their own folders
    but shared a table row and a W&B group: --table stopped with "same seed more than once"."""
    monkeypatch.chdir(tmp_path)
    for ema in ("0.2", "none"):
        assert train.main([*TINY, "--algo", "uniform", "--ema", ema, "--wandb", "offline"]) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    groups = {offline_run(r)["group"] for r in runs}
    assert len(groups) == 2, groups
    table = tmp_path / "table.md"
    assert evaluate.main(["--table", str(table), str(tmp_path / "runs")]) == 0
    text = table.read_text()
    assert "| uniform{ema=0.2} |" in text and "| uniform{ema=null} |" in text
