"""Fault and adversarial inputs, kept apart (as CompilerGym keeps its fuzz tests): nothing is lost,
nothing is executed, nothing is silently wrong. One section per kind of fault."""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN_ARGS, kill_after_first_checkpoint, limit
from test_env import digits_env

import evaluate
import train

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_TRAIN_ARGS


def run_train(run_dir: Path, *args: str) -> int:
    return train.main(["--run-dir", str(run_dir), *TINY, *args])


def finished_run(tmp_path: Path, name: str = "run", *args: str) -> Path:
    run_dir = tmp_path / name
    assert run_train(run_dir, "--algo", "uniform", *args) == 0
    return run_dir


class Payload:
    """A pickle that, when unpickled, creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# -------------------------------------------------------------- 1. --overwrite never loses anything


def test_overwrite_validates_before_deleting_a_finished_run(tmp_path, capsys):
    run_dir = finished_run(tmp_path)
    before = (run_dir / "results.json").read_text()
    assert run_train(run_dir, "--overwrite", "--sampling-rate", "0") != 0
    assert "sampling_rate" in capsys.readouterr().err
    assert (run_dir / "results.json").read_text() == before


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("three years of work")
    assert run_train(folder, "--overwrite", "--algo", "uniform") == 2
    assert "not a finetune-gym run directory" in capsys.readouterr().err
    assert (folder / "thesis.tex").read_text() == "three years of work"


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ctrl_c_before_the_first_checkpoint_of_an_overwrite_brings_the_old_run_back(tmp_path, monkeypatch):
    from finetune_gym import FineTuneEnv

    run_dir = finished_run(tmp_path)
    before = _tree(run_dir)

    def interrupted(self, action):
        raise KeyboardInterrupt

    monkeypatch.setattr(FineTuneEnv, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_train(run_dir, "--overwrite", "--algo", "uniform", "--seed", "1")
    after = _tree(run_dir)
    assert {k: v for k, v in after.items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


def test_an_overwrite_killed_before_its_first_checkpoint_loses_nothing(tmp_path, package_cache, capsys):
    """SIGKILL cannot be caught: the old run waits aside, and the next command on the folder puts
    it back (the new run never reached a checkpoint); once one exists, the old run is gone."""
    run_dir = finished_run(tmp_path)
    before = (run_dir / "results.json").read_text()
    env = {**os.environ, "FINETUNE_GYM_HOME": str(package_cache / "finetune_gym")}
    cmd = [sys.executable, "train.py", "--run-dir", str(run_dir), *TINY, "--algo", "uniform"]
    # A first epoch of ~90 batches: the kill comes long before its checkpoint.
    slow = ["--sampling-rate", "1.0", "--env-kwargs", "batch_size=8"]
    process = subprocess.Popen([*cmd, *slow, "--overwrite", "--seed", "1"], cwd=ROOT, env=env)
    deadline = time.time() + limit(120)
    while not (run_dir / ".replaced").is_dir():  # moved aside: the new run has started
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "results.json").exists()
    assert train.main(["--run-dir", str(run_dir), "--resume"]) == 2  # the next command on it
    assert "holds a finished run" in capsys.readouterr().err
    assert (run_dir / "results.json").read_text() == before
    assert not (run_dir / ".replaced").exists()
    # An overwrite that runs through deletes the old run after its first checkpoint.
    assert run_train(run_dir, "--overwrite", "--algo", "uniform", "--seed", "1") == 0
    assert (run_dir / "results.json").read_text() != before and not (run_dir / ".replaced").exists()


# -------------------------------------------------------------- 2. one process per run directory


def test_a_run_directory_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    run_dir = finished_run(tmp_path)
    holder = os.open(run_dir / ".lock", os.O_RDWR)
    os.ftruncate(holder, 0)
    os.pwrite(holder, b"4242", 0)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running process holds it
    try:
        before = (run_dir / "results.json").read_text()
        assert run_train(run_dir, "--overwrite", "--algo", "random") == 2
        assert "in use by another process (PID 4242)" in capsys.readouterr().err
        assert (run_dir / "results.json").read_text() == before
    finally:
        os.close(holder)
    assert run_train(run_dir, "--overwrite", "--algo", "random") == 0  # released: allowed again


def test_two_processes_on_one_run_directory(tmp_path, package_cache):
    env = {**os.environ, "FINETUNE_GYM_HOME": str(package_cache / "finetune_gym")}
    run_dir = tmp_path / "shared"
    # Long enough to outlive both refused attempts (each starts Python and torch) on a slow
    # machine: it is killed at the end, never run to completion.
    cmd = [sys.executable, "train.py", "--run-dir", str(run_dir), "--episodes", "50", "--no-progress"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + limit(120)
        while not (run_dir / "checkpoint.pt").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        for extra in (["--overwrite"], ["--resume"]):
            second = subprocess.run(
                cmd + extra, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit(300)
            )
            assert second.returncode == 2, second.stderr
            assert f"in use by another process (PID {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


# -------------------------------------------------------------- 3. non-finite losses


def test_a_non_finite_loss_leaves_batchnorm_untouched():
    env = digits_env(epochs_per_episode=2)
    env.reset(seed=0)
    env.step(np.full(env.n_layers, 2))
    before = [b.clone() for b in env.model.buffers()]
    with torch.no_grad():  # the next Adam step keeps this infinite: the next forward is non-finite
        env.model.conv1.weight.fill_(math.inf)
    _, _, _, _, info = env.step(np.full(env.n_layers, 2))
    assert math.isnan(env.step(np.full(env.n_layers, 2))[4]["loss"])
    for buffer, saved in zip(env.model.buffers(), before, strict=True):
        assert torch.equal(buffer, saved)
    assert all(torch.isfinite(b.float()).all() for b in env.model.buffers())


def test_a_diverging_run_stops_with_a_clear_error(tmp_path, capsys):
    code = run_train(
        tmp_path / "run", "--algo", "uniform", "--agent-kwargs", "lr=1e30", "--episodes", "1",
        "--epochs-per-episode", "4", "--ema", "none",
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "updates in a row were skipped" in err and "Lower the learning rates" in err
    assert not (tmp_path / "run" / "results.json").exists()


def test_skipped_updates_are_counted_and_the_saved_model_is_finite(tmp_path):
    from finetune_gym.agents.config import RunConfig
    from finetune_gym.agents.run import run_training

    config = RunConfig(
        algo="uniform",
        episodes=2,
        epochs_per_episode=2,
        env_kwargs={"sampling_rate": 0.3, "batch_size": 64},
        agent_kwargs={"lr": 1e30},
        max_skipped_in_a_row=1000,
    )
    results = run_training(config, tmp_path / "run", progress=False, verbose=False)
    assert results["skipped_updates"] > 0
    state = torch.load(tmp_path / "run" / "final_model.pt", weights_only=True)["state_dict"]
    for name, tensor in state.items():
        if "running" in name:
            assert torch.isfinite(tensor).all(), name


# -------------------------------------------------------------- 4. loading a run folder runs no code


def _killed_run(tmp_path: Path, package_cache: Path, *extra: str, threads: int | None = None) -> Path:
    env = {**os.environ, "FINETUNE_GYM_HOME": str(package_cache / "finetune_gym")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "train.py", "--run-dir", str(run_dir), "--no-progress", *extra]
    assert kill_after_first_checkpoint(cmd, run_dir, env) == -signal.SIGKILL
    return run_dir


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path, package_cache):
    """A full disk or ``ulimit -f`` during the first checkpoint: PyTorch's ``RuntimeError: [enforce
    fail at inline_container.cc ...]`` traceback, and a run folder left behind."""
    import resource

    def small_files() -> None:  # 600 KB: the source weights (310 KB) fit, the first checkpoint does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))

    run_dir = tmp_path / "run"
    env = {**os.environ, "FINETUNE_GYM_HOME": str(package_cache / "finetune_gym")}
    done = subprocess.run(
        [sys.executable, "train.py", "--run-dir", str(run_dir), *TINY],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        timeout=limit(300),
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "could not write" in last and "checkpoint.pt" in last and "File too large" in last, done.stderr
    assert "Traceback" not in done.stderr
    assert not run_dir.exists()


def test_a_crafted_checkpoint_runs_no_code(tmp_path, capsys):
    run_dir = finished_run(tmp_path)
    (run_dir / "results.json").unlink()
    marker = tmp_path / "executed"
    torch.save({"steps": 1, "payload": Payload(marker)}, run_dir / "checkpoint.pt")
    assert train.main(["--run-dir", str(run_dir), "--resume", "--no-progress"]) == 2
    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert "checkpoint.pt" in capsys.readouterr().err


def test_replay_without_the_normalisation_statistics_stops(tmp_path, capsys):
    """Without agent/vecnormalize.pt the policy acted on raw observations it never saw, and the
    replay reported its accuracy with exit status 0."""
    run_dir = tmp_path / "run"
    assert run_train(run_dir, "--algo", "ppo") == 0
    (run_dir / "agent" / "vecnormalize.pt").unlink()
    replay = tmp_path / "replay"
    code = evaluate.main(["--agent", str(run_dir / "agent"), "--run-dir", str(replay), "--no-progress"])
    assert code == 2
    assert "lacks vecnormalize.pt" in capsys.readouterr().err
    assert not replay.exists()


def test_a_crafted_saved_agent_runs_no_code(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_train(run_dir, "--algo", "ppo") == 0
    marker = tmp_path / "executed"
    for name in ("vecnormalize.pkl", "model.zip"):  # files an SB3 loader would unpickle
        torch.save(Payload(marker), run_dir / "agent" / name)
    code = evaluate.main(
        ["--agent", str(run_dir / "agent"), "--run-dir", str(tmp_path / "replay"), "--no-progress"]
    )
    assert not marker.exists(), "loading the saved agent ran code"
    assert code == 0
    torch.save(Payload(marker), run_dir / "agent" / "policy.pt")
    code = evaluate.main(
        ["--agent", str(run_dir / "agent"), "--run-dir", str(tmp_path / "r2"), "--no-progress"]
    )
    assert code == 2 and not marker.exists()
    assert "policy.pt" in capsys.readouterr().err


# -------------------------------------------------------------- 5. no argument silently ignored


def test_resume_refuses_arguments_that_change_the_run(tmp_path, package_cache, capsys):
    run_dir = _killed_run(tmp_path, package_cache, "--episodes", "3")
    assert train.main(["--run-dir", str(run_dir), "--resume", "--episodes", "4", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "episodes: 3 -> 4" in err and "seed: 0 -> 3" in err
    assert (run_dir / "checkpoint.pt").exists()


def test_resume_refuses_a_checkpoint_another_run_wrote(tmp_path, package_cache, capsys):
    """A checkpoint copied in from another run folder (here: another algorithm) was accepted and
    failed only at the run's end."""
    ours = _killed_run(tmp_path / "ours", package_cache, "--episodes", "3", "--algo", "ppo")
    theirs = _killed_run(tmp_path / "theirs", package_cache, "--episodes", "3", "--algo", "a2c")
    shutil.copy2(theirs / "checkpoint.pt", ours / "checkpoint.pt")
    before = (ours / "checkpoint.pt").read_bytes()
    assert train.main(["--run-dir", str(ours), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "written by another run" in err and "algo: 'a2c' -> 'ppo'" in err, err
    assert "does not match the run's configuration" in err
    assert (ours / "checkpoint.pt").read_bytes() == before and not (ours / "results.json").exists()


def test_flags_and_env_kwargs_may_not_disagree(tmp_path, capsys):
    for extra in (["--env-kwargs", "epochs_per_episode=1"], ["--env-kwargs", "seed=5"]):
        with pytest.raises(SystemExit):
            train.main(["--run-dir", str(tmp_path / "x"), *extra])
        assert "not in env_kwargs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(
            ["--run-dir", str(tmp_path / "x"), "--sampling-rate", "0.5", "--env-kwargs", "sampling_rate=0.3"]
        )
    assert "given twice" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# -------------------------------------------------------------- 6. evaluate.py never passes a bad value


@pytest.mark.parametrize("value", ["NaN", '"high"', "null", "1.5"])
def test_evaluate_flags_stored_values_that_are_not_accuracies(tmp_path, capsys, value):
    bad = finished_run(tmp_path, "bad")
    good = finished_run(tmp_path, "good", "--seed", "1")
    text = (bad / "results.json").read_text()
    stored = json.loads(text)["final_test_accuracy"]
    (bad / "results.json").write_text(
        text.replace(f'"final_test_accuracy": {stored}', f'"final_test_accuracy": {value}')
    )
    capsys.readouterr()
    assert evaluate.main([str(bad), str(good)]) == 1
    out = capsys.readouterr().out
    assert "not an accuracy" in out and out.rstrip().endswith("| ok |")


# -------------------------------------------------------------- 7. an epoch of one batch


@pytest.mark.parametrize("algo", ["rl_tune", "ppo", "trpo"])
def test_learning_agents_refuse_an_epoch_of_one_step(tmp_path, capsys, algo):
    run_dir = tmp_path / "run"
    assert run_train(run_dir, "--algo", algo, "--env-kwargs", "batch_size=1024") == 2
    assert "an epoch here is 1 step" in capsys.readouterr().err
    assert not run_dir.exists()


# -------------------------------------------------------------- 8. resume on another thread count


def test_resume_with_another_thread_count_is_bit_identical(tmp_path, package_cache):
    env = {**os.environ, "FINETUNE_GYM_HOME": str(package_cache / "finetune_gym"), "OMP_NUM_THREADS": "1"}
    args = ["--episodes", "2", "--epochs-per-episode", "3"]
    reference = tmp_path / "reference"
    cmd = [sys.executable, "train.py", "--no-progress", *args]
    subprocess.run([*cmd, "--run-dir", str(reference)], cwd=ROOT, env=env, check=True, capture_output=True)
    killed = _killed_run(tmp_path, package_cache, *args, threads=1)
    resumed = subprocess.run(
        [*cmd, "--run-dir", str(killed), "--resume"],
        cwd=ROOT,
        env={**env, "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(reference / "final_model.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "final_model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# -------------------------------------------------------------- 9. one line, naming the input and the fix


@pytest.mark.parametrize(
    "content", [b"", b"PK\x03\x04 truncated", os.urandom(256)], ids=["empty", "truncated", "random"]
)
def test_unreadable_checkpoints_are_named(tmp_path, capsys, content):
    run_dir = finished_run(tmp_path)
    (run_dir / "results.json").unlink()
    (run_dir / "checkpoint.pt").write_bytes(content)
    capsys.readouterr()  # the finished run's own output (a busy machine's load warning, say)
    assert train.main(["--run-dir", str(run_dir), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("damage", ["no env_kwargs", "a list"])
def test_a_damaged_config_json_is_named_on_resume(tmp_path, capsys, damage):
    """A config.json without env_kwargs resumed with the defaults (another dataset) or failed on
    a KeyError; one that is not an object, on an attribute error."""
    run_dir = finished_run(tmp_path)
    (run_dir / "results.json").unlink()
    (run_dir / "checkpoint.pt").write_bytes(b"kept as it is")
    saved = json.loads((run_dir / "config.json").read_text())
    del saved["env_kwargs"]
    (run_dir / "config.json").write_text(json.dumps(saved if damage == "no env_kwargs" else [saved]))
    capsys.readouterr()
    assert train.main(["--run-dir", str(run_dir), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "--overwrite" in err and "Traceback" not in err
    assert ("lacks env_kwargs" in err) == (damage == "no env_kwargs")
    assert (run_dir / "checkpoint.pt").read_bytes() == b"kept as it is"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--env-kwargs", "colour=red"], "unexpected keyword argument 'colour'"),
        (["--env-kwargs", "lr_max=abc"], "lr_max must be float, got 'abc'"),
        (["--algo", "rl_tune", "--agent-kwargs", "clip_range=(0.1"], "clip_range must be a finite number"),
        # A baseline's rate: "does not take ['lr']" (a comparison failing on the text 'nan')
        (["--algo", "uniform", "--agent-kwargs", "lr=nan"], "lr must be a finite number (default 0.001)"),
        (["--algo", "ppo", "--agent-kwargs", "learning_rate=inf"], "learning_rate must be a finite number"),
        (["--ema", "abc"], "argument --ema: expected a weight"),
        (
            ["--dataset", "gtsrb", "--data-root", "{tmp}/nowhere", "--env-kwargs", "download=True"],
            "downloading dataset",
        ),
    ],
)
def test_bad_inputs_end_in_one_line_and_leave_nothing(tmp_path, capsys, args, expected):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    try:
        code = run_train(tmp_path / "run", *args)
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "nowhere").exists()


def test_missing_imagenet_weights_end_in_one_line(tmp_path, capsys, image_folder):
    """Offline and not in the torch hub cache (the test's TORCH_HOME is empty)."""
    code = train.main(
        ["--run-dir", str(tmp_path / "run"), "--env", "FineTune-ResNet50-v0", "--dataset", "imagefolder",
         "--data-root", str(image_folder), "--no-progress", "--env-kwargs", "image_size=32", "dataset_kwargs={}"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "pre-download" in err and "weights=None" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_run_directory_problems_are_named(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert run_train(a_file) == 2
    assert "is a file" in capsys.readouterr().err
    assert run_train(a_file / "below") == 2
    assert "cannot use" in capsys.readouterr().err
    run_dir = finished_run(tmp_path)
    (run_dir / "results.json").unlink()
    (run_dir / "checkpoint.pt").write_bytes(b"")
    (run_dir / "config.json").write_text("{not json")
    assert train.main(["--run-dir", str(run_dir), "--resume"]) == 2
    assert "config.json" in capsys.readouterr().err


def test_a_config_that_does_not_match_its_checkpoint_is_named(tmp_path, package_cache, capsys):
    run_dir = _killed_run(tmp_path, package_cache, "--episodes", "3")
    config = json.loads((run_dir / "config.json").read_text())
    config["env_kwargs"]["sampling_rate"] = 0.5  # edited by hand: other training data
    (run_dir / "config.json").write_text(json.dumps(config))
    assert train.main(["--run-dir", str(run_dir), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "does not match the run's configuration" in err
    assert "env_kwargs.sampling_rate: '(unset)' -> 0.5" in err  # what differs, before anything loads


def test_a_full_disk_ends_in_one_line(tmp_path, capsys, monkeypatch):
    import finetune_gym.agents.outputs

    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "run" / "final_model.pt"))

    monkeypatch.setattr(finetune_gym.agents.outputs.torch, "save", full)
    assert run_train(tmp_path / "run", "--algo", "uniform") == 2
    assert "No space left on device" in capsys.readouterr().err


def test_wandb_online_without_a_key_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config"))
    assert run_train(tmp_path / "run", "--wandb", "online") == 2
    err = capsys.readouterr().err
    assert "wandb login" in err and "--wandb offline" in err
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------- 10. nothing left behind


def test_a_resume_removes_partial_checkpoint_writes(tmp_path, package_cache):
    run_dir = _killed_run(tmp_path, package_cache, "--episodes", "2")
    orphan = run_dir / ".checkpoint.pt.abc123"
    orphan.write_bytes(b"x" * 1000)  # what a kill during an atomic write leaves
    assert train.main(["--run-dir", str(run_dir), "--resume", "--no-progress"]) == 0
    assert not orphan.exists() and (run_dir / "results.json").exists()


def test_a_failed_start_leaves_nothing_that_blocks_the_rerun(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run_dir = tmp_path / "run"
    assert run_train(run_dir, "--wandb", "online") == 2
    assert run_train(run_dir) == 0  # the same command without the mistake


def test_abbreviated_flags_are_refused(tmp_path, capsys):
    """An abbreviation (--epochs for --epochs-per-episode) would pass unseen by --resume's check."""
    with pytest.raises(SystemExit):
        train.main(["--run-dir", str(tmp_path / "x"), "--epochs", "3"])
    assert "unrecognized arguments: --epochs 3" in capsys.readouterr().err
