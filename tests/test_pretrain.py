"""Pretraining a policy over many fine-tuning runs, and deploying it (rl_tune_pretrained)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, kill_after_first_checkpoint, limit

import train
from finetune_gym.agents.pretrain import PretrainConfig, build_model, build_vec_env, pretrain
from finetune_gym.agents.pretrained import SHIPPED_POLICY, PolicyFileError, load_policy
from finetune_gym.agents.registry import layer_tokens, make_agent

TINY = {"runs": 3, "n_steps": 8, "epochs_per_episode": 1, "max_layers": 16, "sampling_rates": [0.3]}
DEPLOY = [
    "--episodes",
    "1",
    "--epochs-per-episode",
    "3",
    "--ema",
    "none",
    "--sampling-rate",
    "0.3",
    "--no-progress",
]


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    pretrain(PretrainConfig(**TINY), run_dir, verbose=False, command="test")
    return run_dir / "policy.pt"


def test_pretraining_writes_a_policy_with_its_card(policy_file):
    run_dir = policy_file.parent
    policy, card = load_policy(policy_file)  # weights_only inside
    assert card["budget"]["runs"] >= 3 and card["budget"]["timesteps"] >= 16 and card["budget"]["images"] > 0
    assert card["tasks"] == "digits" and card["max_layers"] == 16 and card["n_actions"] == 7
    assert card["env_kwargs"]["lr_scale"] == "relative" and card["command"] == "test"
    assert json.loads((run_dir / "policy.pt.json").read_text()) == card
    runs = [json.loads(line) for line in (run_dir / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == card["budget"]["runs"]
    assert all(r["task"]["dataset"] == "digits" and r["task"]["sampling_rate"] == 0.3 for r in runs)
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in runs)
    # The last rollout was learned from: the policy is the one after the second update (2 x 8
    # steps; the last save also counts the step that stopped it), and it differs from the untrained
    # policy (same seed).
    last = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert last["num_timesteps"] == 17 and last["state"]["runs"] == card["budget"]["runs"]
    assert all(torch.equal(v, last["policy"][k]) for k, v in policy.state_dict().items())
    threads = torch.get_num_threads()
    venv = build_vec_env(PretrainConfig(**TINY))  # one env: in this process, its threads untouched
    untrained = build_model(PretrainConfig(**TINY), venv).policy.state_dict()
    venv.close()
    assert torch.get_num_threads() == threads
    assert any(not torch.equal(v, untrained[k]) for k, v in policy.state_dict().items())


def test_pretraining_refuses_bad_configurations(tmp_path):
    with pytest.raises(ValueError, match="runs must be a positive integer"):
        PretrainConfig(runs=0)
    with pytest.raises(ValueError, match="unknown task set 'gtsrb'"):
        PretrainConfig(tasks="gtsrb").resolved_tasks()
    with pytest.raises(ValueError, match="not PPO settings"):
        PretrainConfig(agent_kwargs={"lr": 1})
    for command in ("--pretrain", "pretrain"):  # the subcommand and its first spelling
        with pytest.raises(SystemExit) as error:
            train.main([command, "--runs", "1", "--tasks", str(tmp_path / "missing.json")])
        assert error.value.code == 2


def test_pretraining_in_subprocesses_and_resuming_after_a_kill(tmp_path):
    run_dir = tmp_path / "run"
    # 8 steps a rollout: each process finishes a run (5 steps) before the first checkpoint.
    cmd = [sys.executable, "train.py", "--pretrain", "--runs", "6", "--n-envs", "2", "--n-steps", "8"]
    cmd += [
        "--epochs-per-episode",
        "1",
        "--max-layers",
        "16",
        "--sampling-rates",
        "0.3",
        "--run-dir",
        str(run_dir),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    assert kill_after_first_checkpoint(cmd, run_dir, env) == -9
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    killed_at, kept = checkpoint["num_timesteps"], checkpoint["state"]["episodes"]
    log = run_dir / "runs.jsonl"
    refused = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit(600))
    assert refused.returncode == 2 and "--resume" in refused.stderr
    done = subprocess.run(
        [*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit(600)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    card = json.loads((run_dir / "results.json").read_text())
    assert card["budget"]["runs"] >= 6 and card["budget"]["timesteps"] > killed_at
    assert card["budget"]["n_envs"] == 2
    # The log holds exactly the runs counted (those finished after the checkpoint were cut and run
    # again), and after the resume the processes draw new tasks, not the first ones again.
    seeds = [json.loads(line)["task"]["data_seed"] for line in log.read_text().splitlines()]
    assert len(seeds) == card["budget"]["runs"] and kept >= 2
    after = seeds[kept:]
    assert after[:2] != seeds[:2]


def test_deployed_policy_frozen_replays_exactly(policy_file, tmp_path):
    run = tmp_path / "deploy"
    assert (
        train.main(
            [
                "--algo",
                "rl_tune_pretrained",
                "--agent-kwargs",
                f"policy={policy_file}",
                *DEPLOY,
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["algo"] == "rl_tune_pretrained"
    saved = json.loads((run / "agent" / "agent.json").read_text())
    assert saved["params"]["policy"] == str(policy_file.resolve()) and saved["params"]["learn"] is False
    schedule = dict(__import__("numpy").load(run / "lr_schedule.npz"))
    rates = schedule[next(iter(schedule))]
    assert rates.size and (rates > 0).all()  # relative steps around Schedule-Free's rate: never 0
    import evaluate

    replay = tmp_path / "replay"
    assert (
        evaluate.main(
            [
                "--agent",
                str(run / "agent"),
                "--episodes",
                "1",
                "--epochs-per-episode",
                "3",
                "--sampling-rate",
                "0.3",
                "--run-dir",
                str(replay),
            ]
        )
        == 0
    )
    again = json.loads((replay / "results.json").read_text())
    assert again["final_test_accuracy"] == results["final_test_accuracy"]
    # The environment was built with the options the policy was trained with.
    assert json.loads((run / "config.json").read_text())["algo"] == "rl_tune_pretrained"


def test_deployed_policy_learning_resumes_bit_identical(policy_file, tmp_path):
    args = ["--algo", "rl_tune_pretrained", "--agent-kwargs", f"policy={policy_file}", "learn=True", *DEPLOY]
    whole = tmp_path / "whole"
    assert train.main([*args, "--run-dir", str(whole)]) == 0
    killed = tmp_path / "killed"
    cmd = [sys.executable, "train.py", *args, "--run-dir", str(killed)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    assert kill_after_first_checkpoint(cmd, killed, env) == -9
    assert train.main([*args, "--run-dir", str(killed), "--resume"]) == 0
    a = torch.load(whole / "final_model.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "final_model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((whole / "agent" / "agent.json").read_text())
    assert saved["algorithm"] == "PPO" and (whole / "agent" / "policy.pt").is_file()
    assert not (whole / "agent" / "vecnormalize.pt").exists()  # tokens are not normalised


def test_deployment_errors_name_the_fix(policy_file, tmp_path):
    import gymnasium as gym

    env = gym.make("FineTune-Digits-v0", epochs_per_episode=1, batch_size=64, sampling_rate=0.3)
    with pytest.raises(ValueError, match="learn must be True or False"):
        make_agent("rl_tune_pretrained", env, learn="yes")
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something else"}, bad)
    with pytest.raises(PolicyFileError, match="is not a finetune-gym-policy-1 file"):
        make_agent("rl_tune_pretrained", env, policy=str(bad))
    with pytest.raises(PolicyFileError, match="no pretrained policy at"):
        load_policy(tmp_path / "missing.pt")
    assert layer_tokens("rl_tune") is None
    assert layer_tokens("rl_tune_pretrained", policy=str(policy_file)) == 16


def test_pretraining_logs_to_wandb_offline(tmp_path):
    from wandb_files import offline_run

    run_dir = tmp_path / "run"
    before = torch.get_num_threads()
    mine = 2 if before == 1 else 1  # the pretraining's own, unlike the caller's
    pretrain(
        PretrainConfig(**{**TINY, "threads": mine}),
        run_dir,
        verbose=False,
        wandb_mode="offline",
        wandb_project="test",
    )
    # The caller's thread count is back: a run after it in this process (whose checkpoints record
    # it for an exact resume) does not inherit the pretraining's.
    assert torch.get_num_threads() == before
    logged = offline_run(run_dir)
    keys = set().union(*logged["history"])
    assert {"run/return", "run/steps", "run/val_accuracy/digits"} <= keys
    assert {"agent/train/policy_gradient_loss", "agent/train/value_loss"} <= keys
    card = json.loads((run_dir / "results.json").read_text())
    assert logged["summary"]["runs"] == card["budget"]["runs"]
    assert logged["group"] == "pretrain/digits" and logged["artifacts"]
    returns = [row["run/return"] for row in logged["history"] if "run/return" in row]
    runs = [json.loads(line)["return"] for line in (run_dir / "runs.jsonl").read_text().splitlines()]
    assert returns == pytest.approx(runs)


def test_shipped_policy_is_the_default_and_deploys(tmp_path):
    """The policy inside the package: rl_tune_pretrained's default, recorded as "default" (the
    same on every machine), its card portable (no machine's paths), and it acts in a new run."""
    payload = torch.load(SHIPPED_POLICY, map_location="cpu", weights_only=True)
    card = payload["card"]
    assert card["tasks"] == "no-gtsrb" and "gtsrb" not in {
        t.get("name", t["dataset"]) for t in card["task_details"]
    }
    assert card["budget"]["runs"] > 0 and card["commit"] and card["shipped"]["command"]
    assert "/work/" not in json.dumps(card) and str(Path.home()) not in json.dumps(card)
    assert json.loads(SHIPPED_POLICY.with_name(SHIPPED_POLICY.name + ".json").read_text()) == card
    run = tmp_path / "deploy"
    assert train.main(["--algo", "rl_tune_pretrained", *DEPLOY, "--run-dir", str(run)]) == 0
    saved = json.loads((run / "agent" / "agent.json").read_text())
    assert saved["params"]["policy"] == "default"
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["final_test_accuracy"] <= 1.0
    assert results["env_config"]["lr_scale"] == "relative"  # the options the policy was trained with


@pytest.mark.slow
def test_wheel_ships_the_default_policy(tmp_path):
    """A fresh install gets the policy: the built wheel holds it and its card, loadable as is."""
    import io
    import zipfile

    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the source tree to build from is unknown")
    source = tmp_path / "src"
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("finetune_gym-*.whl")
    inside = "finetune_gym/agents/pretrained_policies/" + SHIPPED_POLICY.name
    with zipfile.ZipFile(wheel) as archive:
        assert inside + ".json" in archive.namelist()
        payload = torch.load(io.BytesIO(archive.read(inside)), weights_only=True)
        instances = json.loads(archive.read("finetune_gym/instance_sets/v1.json"))  # the declared sets too
    assert payload["card"] == load_policy(SHIPPED_POLICY)[1]
    assert instances == json.loads((ROOT / "finetune_gym" / "instance_sets" / "v1.json").read_text())
    from finetune_gym.agents.residual_controller import SHIPPED_CONTROLLER, load_controller

    if SHIPPED_CONTROLLER.is_file():  # the meta-trained controller, once one ships
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read("finetune_gym/agents/pretrained_policies/" + SHIPPED_CONTROLLER.name)
        (tmp_path / "from_wheel.pt").write_bytes(data)  # read by the package's own (weights_only) loader
        assert load_controller(tmp_path / "from_wheel.pt") == load_controller(SHIPPED_CONTROLLER)


def test_pretraining_over_an_instance_set_runs_its_training_part(tmp_path):
    """train.py --pretrain --instance-set: every run is one of the split's training instances (its
    own rate and length), never a test instance; tasks and rates given beside it are refused."""
    from finetune_gym.instances import Instance, InstanceSet

    train_part = [Instance("digits", "digits_resnet8", 0.3, s, 1) for s in (0, 1)]
    test_part = [Instance("digits", "digits_resnet8", 0.5, 5, 1)]
    splits = {"1": {"train": [i.id for i in train_part], "test": [i.id for i in test_part]}}
    InstanceSet("pretrain-test", [*train_part, *test_part], splits).save(tmp_path / "set.json")
    argv = ["--pretrain", "--instance-set", str(tmp_path / "set.json"), "--runs", "3", "--n-steps", "8"]
    argv += ["--max-layers", "16", "--run-dir", str(tmp_path / "run"), "--quiet"]
    assert train.main(argv) == 0
    runs = [json.loads(line) for line in (tmp_path / "run" / "runs.jsonl").read_text().splitlines()]
    assert len(runs) >= 3
    assert {r["task"]["name"] for r in runs} <= {i.id for i in train_part}
    assert all(r["task"]["sampling_rate"] == 0.3 and r["task"]["data_seed"] in (0, 1) for r in runs)
    _, card = load_policy(tmp_path / "run" / "policy.pt")
    assert card["instance_set"] == str(tmp_path / "set.json") and card["split"] == "1"
    with pytest.raises(ValueError, match="do not also give sampling_rates"):
        PretrainConfig(instance_set=str(tmp_path / "set.json"), sampling_rates=[0.5])
    with pytest.raises(ValueError, match="has no split '2'"):
        PretrainConfig(instance_set=str(tmp_path / "set.json"), split="2")
