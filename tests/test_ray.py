"""The benchmarks on Ray (issue 27): jobs as Ray tasks on a cluster, here two simulated nodes on
this machine (``ray.cluster_utils.Cluster``): they land on both, and a worker killed in the
middle of a job loses no finished result while the job resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
from conftest import limit  # noqa: E402
from ray import cloudpickle  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from wandb_files import offline_run  # noqa: E402

from benchmarks import harness  # noqa: E402

# This module is not on the Ray workers' path (the benchmarks are): its jobs travel whole.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def where(x: int) -> dict:
    import time

    time.sleep(0.5)  # long enough that the two jobs in flight overlap
    return {"value": x, "node": ray.get_runtime_context().get_node_id()}


def dies_once(folder: str, x: int) -> dict:
    """A job with a checkpoint: it does half its work, saves it, and its worker dies on the first
    attempt; the retried attempt resumes from the checkpoint instead of starting over."""
    checkpoint, attempts = Path(folder) / f"{x}.ckpt", Path(folder) / f"{x}.attempts"
    attempts.write_text(attempts.read_text() + "." if attempts.exists() else ".")
    if not checkpoint.exists():
        checkpoint.write_text(str(x * 10))  # the first half of the work
        if x == 2:
            os._exit(1)  # the worker process dies in the middle of the job
    return {"value": int(checkpoint.read_text()) + x, "attempts": len(attempts.read_text())}


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def run_all(address: str, jobs: list[harness.Job], store: harness.ResultsFile) -> int:
    def ready():
        done = store.by("cell")
        return [job for job in jobs if job.key not in done]

    def finished(job: harness.Job, result: dict) -> None:
        store.append({"cell": job.key, **result})

    with harness.ray_pool(address, workers=2, threads=1) as pool:
        return harness.run_jobs(pool, ready, finished, workers=2)


def test_jobs_land_on_both_nodes_of_a_cluster(cluster, tmp_path):
    store = harness.ResultsFile(tmp_path / "r.jsonl")
    jobs = [harness.Job(f"c{x}", where, (x,)) for x in range(6)]
    assert run_all(cluster.address, jobs, store) == 6
    lines = store.by("cell")
    assert sorted(line["value"] for line in lines.values()) == list(range(6))
    assert len({line["node"] for line in lines.values()}) == 2, lines


def test_a_worker_killed_mid_job_loses_nothing_and_the_job_resumes(cluster, tmp_path):
    store = harness.ResultsFile(tmp_path / "r.jsonl")
    jobs = [harness.Job(f"c{x}", dies_once, (str(tmp_path), x)) for x in range(4)]
    assert run_all(cluster.address, jobs, store) == 4
    lines = store.by("cell")
    assert {k: v["value"] for k, v in lines.items()} == {f"c{x}": 11 * x for x in range(4)}
    assert lines["c2"]["attempts"] == 2  # retried once, from its checkpoint (10x + x, not redone)
    assert all(lines[f"c{x}"]["attempts"] == 1 for x in (0, 1, 3))  # nothing finished ran again


def long_first_half(folder: str, x: int) -> dict:
    """Its first attempt saves a checkpoint, says where it runs, then works on for a while (its node
    is removed meanwhile); a retry finds the checkpoint and finishes at once."""
    import time

    checkpoint, node = Path(folder) / f"{x}.ckpt", ray.get_runtime_context().get_node_id()
    if not checkpoint.exists():
        checkpoint.write_text(str(x * 10))
        (Path(folder) / f"{x}.started").write_text(node)
        time.sleep(20)
    return {"value": int(checkpoint.read_text()) + x, "node": node}


def test_a_node_removed_mid_job_loses_nothing_and_the_job_resumes_elsewhere(tmp_path):
    import threading
    import time

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    side = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    store = harness.ResultsFile(tmp_path / "r.jsonl")
    jobs = [harness.Job(f"c{x}", long_first_half, (str(tmp_path), x)) for x in range(2)]
    try:
        runner = threading.Thread(target=run_all, args=(cluster.address, jobs, store))
        runner.start()
        started = [tmp_path / f"{x}.started" for x in range(2)]
        deadline = time.time() + limit(120)
        while not all(f.exists() for f in started) and time.time() < deadline:
            time.sleep(0.2)
        on_side = [x for x in range(2) if started[x].read_text() == side.node_id]
        assert len(on_side) == 1, "the two jobs should start one on each node"
        cluster.remove_node(side)  # the node dies with its job in the middle of it
        runner.join(timeout=limit(180))
        assert not runner.is_alive()
    finally:
        ray.shutdown()
        cluster.shutdown()
    lines = store.by("cell")
    assert {k: v["value"] for k, v in lines.items()} == {"c0": 0, "c1": 11}
    assert lines[f"c{on_side[0]}"]["node"] != side.node_id  # finished on the head, from its checkpoint


def tiny_digits(rank: int):
    """A built-in digits environment a few steps an episode (module level: Ray sends it whole)."""

    def make():
        import gymnasium as gym
        import torch

        import finetune_gym  # noqa: F401  (registers the ids)

        torch.set_num_threads(1)  # in both executors: results depend on the thread count
        return gym.make("FineTune-Digits-v0", epochs_per_episode=1, batch_size=64, sampling_rate=0.3)

    return make


def test_ray_vec_env_steps_exactly_as_subproc_vec_env(tmp_path):
    """The same environments, seeds and actions through SubprocVecEnv and through Ray actors: the same
    observations, rewards, episode ends (across an auto-reset) and infos."""
    from stable_baselines3.common.vec_env import SubprocVecEnv

    from finetune_gym.agents.ray_vec_env import RayVecEnv

    def roll(venv) -> list:
        venv.seed(7)
        out = [venv.reset()]
        rng = np.random.default_rng(0)
        steps = venv.get_attr("episode_steps")[0] + 2  # across one auto-reset
        for _ in range(steps):
            nvec = venv.action_space.nvec
            obs, rewards, dones, infos = venv.step(rng.integers(0, nvec, (venv.num_envs, len(nvec))))
            ends = [info.get("terminal_observation") for info in infos]
            out.append((obs, rewards, dones, [sorted(info) for info in infos], ends))
        out.append(venv.get_attr("n_layers"))
        venv.close()
        return out

    reference = roll(SubprocVecEnv([tiny_digits(r) for r in range(2)], start_method="spawn"))
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        mine = roll(RayVecEnv([tiny_digits(r) for r in range(2)], threads=1))
    finally:
        ray.shutdown()
    assert any(step[2].any() for step in reference[1:-1])  # the roll crossed an episode's end
    _assert_same(mine, reference)


def _assert_same(a, b) -> None:
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def test_pretraining_through_ray_actors_learns_exactly_as_through_subprocesses(tmp_path):
    """``train.py --pretrain --vec-env ray``: two environments as Ray actors, PPO updates over their
    steps; the same tasks and the same policy, to the bit, as through SubprocVecEnv."""
    import json

    import torch

    from finetune_gym.agents.pretrain import PretrainConfig, pretrain

    tiny = {"runs": 4, "n_steps": 8, "epochs_per_episode": 1, "max_layers": 16, "sampling_rates": [0.3]}
    tiny |= {"n_envs": 2, "threads": 1}
    results = {}
    for vec_env in ("subproc", "ray"):
        run_dir = tmp_path / vec_env
        card = pretrain(PretrainConfig(**tiny, vec_env=vec_env), run_dir, verbose=False, command="test")
        tasks = [json.loads(line)["task"] for line in (run_dir / "runs.jsonl").read_text().splitlines()]
        policy = torch.load(run_dir / "policy.pt", weights_only=True)
        results[vec_env] = (card["budget"]["timesteps"], tasks, policy)
    assert not ray.is_initialized()  # the pretraining shut down the Ray it started
    (steps, tasks, policy), (ray_steps, ray_tasks, ray_policy) = results["subproc"], results["ray"]
    assert steps == ray_steps >= 2 * 2 * 8  # at least two rollouts of both environments: updates ran
    assert tasks == ray_tasks
    state, ray_state = policy["state_dict"], ray_policy["state_dict"]
    assert state.keys() == ray_state.keys()
    assert all(torch.equal(state[k], ray_state[k]) for k in state)


def test_pbt_two_members_two_intervals_exploit_exactly_and_resume(tmp_path):
    """benchmarks/pbt.py on the built-in digits: two members, two perturbation intervals; at each,
    the worse member continues from the better one's exact environment state; the best member's
    test accuracy is read once; a second call restores the finished experiment instead of rerunning."""
    from benchmarks import pbt

    config = {"env_id": "FineTune-Digits-v0", "env_kwargs": {"batch_size": 64, "sampling_rate": 0.3}}
    config |= {"seed": 0, "optimizer": "prodigy", "lr": 1.0, "epochs": 2, "interval": 1}
    with harness.ray_pool(None, workers=2, threads=1):
        results = pbt.run_population("digits", config, 2, tmp_path)
        assert len(results) == 2 and not results.errors
        assert all(r.metrics["epoch"] == 2 for r in results)  # every member ends on a result of its own
        assert any(r.metrics["restored"] for r in results)  # at least one ended from a checkpoint
        exploits = (tmp_path / "digits" / "pbt_global.txt").read_text().splitlines()
        assert exploits  # Tune's record: a member took another's checkpoint and explored from it
        val, test, knobs = pbt.test_accuracy_of_best(results, config)
        assert 0.0 <= test <= 1.0 and set(knobs) == set(pbt.KNOBS)
        again = pbt.run_population("digits", config, 2, tmp_path)  # restored, nothing reruns
        assert again.get_best_result(metric="val", mode="max", scope="last").metrics["val"] == val


PBT_SCRIPT = """
import sys
from benchmarks import harness, pbt
config = {"env_id": "FineTune-Digits-v0", "env_kwargs": {"batch_size": 64, "sampling_rate": 0.3}}
config |= {"seed": 0, "optimizer": "prodigy", "lr": 1.0, "epochs": 4, "interval": 1}
with harness.ray_pool(None, workers=2, threads=1):
    results = pbt.run_population("digits", config, 3, __import__("pathlib").Path(sys.argv[1]), stall_s=45)
    print("EPOCHS", sorted(r.metrics["epoch"] for r in results), "ERRORS", len(results.errors), flush=True)
"""


def _member_epochs(folder: Path) -> list[int]:
    epochs = []
    for result in folder.glob("digits/member_*/result.json"):
        lines = result.read_text().splitlines()
        if lines:
            epochs.append(json.loads(lines[-1])["epoch"])
    return epochs


@pytest.mark.slow
def test_pbt_population_killed_mid_run_resumes_to_the_end(tmp_path):
    """A population SIGKILLed once its members are past the first sync point is finished by the
    next call: restored by Tune, or, where Tune's restore stalls (it does, now and then: every
    member PAUSED), moved aside after the stall and run again from its start."""
    import signal
    import subprocess
    import time

    script = tmp_path / "population.py"
    script.write_text(PBT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(harness.ROOT)}
    first = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "pbt")], env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + limit(300)
    while time.monotonic() < deadline and not (
        len(_member_epochs(tmp_path / "pbt")) == 3 and min(_member_epochs(tmp_path / "pbt")) >= 2
    ):
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert 2 <= min(_member_epochs(tmp_path / "pbt")) < 4, _member_epochs(tmp_path / "pbt")
    # The Ray the killed driver started (its session folder is named after the driver's pid).
    subprocess.run(["pkill", "-9", "-f", f"session_[0-9_-]*_{first.pid}"], capture_output=True)
    second = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "pbt")], env=env, capture_output=True, text=True,
        timeout=limit(300),
    )  # fmt: skip
    assert "EPOCHS [4, 4, 4] ERRORS 0" in second.stdout, second.stdout[-3000:] + second.stderr[-3000:]
    stalled = list((tmp_path / "pbt").glob("digits-stalled-*"))
    assert ("starting it over" in second.stdout) == bool(stalled)


def fake_profile_run(setting: str, method: str, params: dict, seed: int, run_dir: str) -> dict:
    """A stand-in for a profile's fine-tuning run: the head's multiplier is all that matters."""
    value = 0.6 + 0.01 * params["head_log2"]
    return {"final_val_accuracy": value, "final_test_accuracy": value + 0.001 * seed}


def test_headroom_search_through_tune_records_each_trial_and_resumes(tmp_path, monkeypatch):
    """headroom_tune.py: Optuna's TPE inside Tune, the base as an evaluated point; each finished trial
    lands in the study's results file (numbered after trial 0); a second call restores the finished
    experiment and runs nothing; headroom.py run then leaves the setting to this engine."""
    from benchmarks import grid, headroom_tune
    from benchmarks import headroom_study as study

    setting, (dataset, rate) = "gtsrb/r0.15", study.SETTINGS["gtsrb/r0.15"]
    done = {
        grid.cell_id(m, rate, s, dataset): {"results": {"final_val_accuracy": v, "final_test_accuracy": v}}
        for m, v in (("schedulefree_adamw", 0.5), ("prodigy", 0.6), ("prodigy_layerwise", 0.4), ("ldog", 0.3))
        for s in grid.seeds_on(dataset, rate)
    }
    monkeypatch.setattr(study, "RESULTS", harness.ResultsFile(tmp_path / "headroom.jsonl"))
    monkeypatch.setattr(grid, "load_done", lambda: done)
    monkeypatch.setattr(harness, "code_version", lambda: "test")
    monkeypatch.setenv("WANDB_MODE", "offline")  # restored after the test (tune_callbacks sets it)
    monkeypatch.setenv("WANDB_SILENT", "true")
    loggers = harness.tune_callbacks("offline", "finetune-gym-test", "headroom")
    with harness.ray_pool(None, workers=3, threads=1):
        results = headroom_tune.search(
            setting, 3, tmp_path / "tune", runner=fake_profile_run, loggers=loggers
        )
        assert len(results) == 2 and not results.errors
        for result in results:  # each trial: TensorBoard events, and an offline W&B run with its score
            folder = Path(result.path)
            assert list(folder.glob("events.out.tfevents.*"))
            run = offline_run(folder)
            assert run["project"] == "finetune-gym-test" and run["group"] == "headroom"
            assert [row["val"] for row in run["history"]] == [pytest.approx(result.metrics["val"])]
        lines = study.load_lines()
        trials = study.trials_of(setting, lines)
        assert sorted(trials) == [0, 1, 2] and all(study.score(t) is not None for t in trials.values())
        assert trials[0]["params"] == study.BASE_PARAMS and study.engine_of(setting, lines) == "tune"
        headroom_tune.search(setting, 3, tmp_path / "tune", runner=fake_profile_run)
        assert study.load_lines() == lines  # restored: nothing ran again
    from benchmarks import headroom

    headroom.run_setting(setting, None, workers=2, n_trials=4)  # leaves it to Tune: no pool needed
    assert study.load_lines() == lines


def test_meta_training_candidates_run_as_ray_tasks_and_resume(tmp_path):
    """benchmarks/controller.py: one CMA-ES generation on the built-in digits, its candidates and
    base runs as Ray tasks; run again, it evaluates nothing (every result is in its folder)."""
    from benchmarks import controller
    from finetune_gym.instances import Instance, InstanceSet

    train = [Instance("digits", "digits_resnet8", 0.3, s, 1) for s in range(2)]
    test = [Instance("digits", "digits_resnet8", 0.5, 9, 1)]
    splits = {"1": {"train": [i.id for i in train], "test": [i.id for i in test]}}
    InstanceSet("ray-test", [*train, *test], splits).save(tmp_path / "set.json")
    argv = ["run", "--instance-set", str(tmp_path / "set.json"), "--generations", "1", "--batch", "2"]
    argv += ["--popsize", "2", "--folder", str(tmp_path / "runs"), "--executor", "ray", "--workers", "2"]
    argv += ["--tensorboard", str(tmp_path / "tb")]
    controller.main(argv)
    folder = tmp_path / "runs" / "set-split1-s0"
    lines = (folder / "evaluations.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 + 2  # 2 candidates x 2 instances, and the 2 base runs
    assert (folder / "controller.pt").is_file() and list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    controller.main(argv)
    assert (folder / "evaluations.jsonl").read_text().splitlines() == lines
    from benchmarks.controller_status import status

    assert "set-split1-s0: 6 runs" in status(tmp_path / "runs")[0]
