"""Issue 28: instance sets, the residual controller, and its meta-training by CMA-ES."""

from __future__ import annotations

import concurrent.futures as futures
import json
import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import CIFAR_CHECKPOINT, SHARED_DATA, digits_instance_set, killed_and_unbroken, needs_shared

import finetune_gym  # noqa: F401
from finetune_gym.agents import residual_controller as rc
from finetune_gym.agents.meta_train import (
    EVALUATIONS,
    MetaTrainConfig,
    MetaTrainer,
    generation_gains,
    run_instance,
)
from finetune_gym.agents.registry import baseline_env_overrides, load_agent, make_agent, save_agent
from finetune_gym.instances import DECLARED, Instance, InstanceSet

# -- instance sets -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_shipped_instance_sets_are_their_declaration(name):
    """The JSON file is the versioned record of the code's declaration: changing one without the
    other (or without a new version) fails here."""
    assert InstanceSet.load(name).to_json() == DECLARED[name]().to_json()


def test_v1_keeps_test_domains_out_of_training():
    v1 = InstanceSet.load("v1")
    train1, test1 = v1.split("1", "train"), v1.split("1", "test")
    train2, test2 = v1.split("2", "train"), v1.split("2", "test")
    assert {i.dataset for i in test1} == {"gtsrb"} and "gtsrb" not in {i.dataset for i in train1 + train2}
    assert {i.dataset for i in test2} == {"clothing10"} and "clothing10" not in {i.dataset for i in train2}
    assert len(train1) == 102 and {i.source for i in train1} >= {f"cifar_resnet{d}" for d in (20, 32, 44, 56)}
    # Held-out GTSRB instances are the grid's cells: same seeds, rates and budget.
    assert {(i.sampling_rate, i.seed, i.epochs) for i in test1} == {
        (r, s, 50) for r in (0.15, 0.3, 0.5, 1.0) for s in range(5)
    }


@needs_shared(CIFAR_CHECKPOINT)
def test_a_test_instance_is_the_grid_cell_it_names():
    """gtsrb at 15%, seed 0: the same environment arguments as the grid's cell of that name."""
    from benchmarks import grid

    instance = Instance("gtsrb", "cifar_resnet20", 0.15, 0, 50)
    config = grid.run_config("prodigy", 0.15, 0, grid.load_done())
    cell = {
        **gym.spec(config.env_id).kwargs,
        **config.env_kwargs,
        "seed": config.seed,
        "epochs_per_episode": config.epochs_per_episode,
    }
    mine = instance.env_kwargs(SHARED_DATA)
    differing = {k for k in mine if k not in ("lr_steps", "optimizer") and mine[k] != cell.get(k)}
    assert differing == set(), {k: (mine[k], cell.get(k)) for k in differing}


def test_instance_sets_refuse_bad_input(tmp_path):
    with pytest.raises(ValueError, match="dataset 'mnist' is unknown"):
        Instance("mnist", "cifar_resnet20", 0.15, 0, 10)
    with pytest.raises(ValueError, match="built-in digits go with their own"):
        Instance("digits", "cifar_resnet20", 0.15, 0, 10)
    with pytest.raises(ValueError, match="sampling"):
        Instance("gtsrb", "cifar_resnet20", 1.5, 0, 10)
    a, b = Instance("digits", "digits_resnet8", 0.3, 0, 1), Instance("digits", "digits_resnet8", 0.3, 1, 1)
    with pytest.raises(ValueError, match="in train and test"):
        InstanceSet("x", [a, b], {"1": {"train": [a.id, b.id], "test": [a.id]}})
    with pytest.raises(ValueError, match="does not hold"):
        InstanceSet("x", [a], {"1": {"train": [a.id], "test": [b.id]}})
    with pytest.raises(ValueError, match="no shipped instance set 'v0'"):
        InstanceSet.load("v0")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="is not an instance set"):
        InstanceSet.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="has no split '3'"):
        InstanceSet.load("v1").split("3", "train")
    with pytest.raises(ValueError, match="do not also give sampling_rates"):
        gym.make("FineTune-Tasks-v0", instance_set="v1", sampling_rates=[0.5])


def test_task_env_draws_from_an_instance_split(tmp_path):
    path = digits_instance_set(tmp_path)
    env = gym.make("FineTune-Tasks-v0", instance_set=path, split="1", part="train")
    seen = {env.reset(seed=s)[1]["task"]["name"] for s in range(6)}
    assert seen <= {f"digits/digits_resnet8/r0.3/s{s}/e2" for s in range(3)} and len(seen) > 1
    test = gym.make("FineTune-Tasks-v0", instance_set=path, split="1", part="test")
    _, info = test.reset(seed=0)
    assert (info["task"]["sampling_rate"], info["task"]["data_seed"]) == (0.5, 7)
    assert test.unwrapped.view.env.unwrapped.config["epochs_per_episode"] == 2


# -- the controller ------------------------------------------------------------------------


def test_grid_holds_exact_powers_of_two_and_rounds_to_quarter_octaves():
    grid = rc.multiplier_grid()
    assert grid[0] == 0.0 and grid[len(grid) // 2] == 1.0 and grid[1] == 1 / 8 and grid[-1] == 8
    index = rc.action_indices(np.array([0.0, 0.1, 0.13, -1.0, 5.0, -3.1, -3.2, -9.0]))
    assert grid[index].tolist() == [1.0, 1.0, 2**0.25, 0.5, 8.0, 1 / 8, 0.0, 0.0]


def _run(name: str, env_kwargs: dict | None = None, agent_seed: int = 0, **kwargs):
    env = gym.make(
        "FineTune-Digits-v0",
        epochs_per_episode=2,
        sampling_rate=0.3,
        **{**baseline_env_overrides(name, **kwargs), **(env_kwargs or {})},
    ).unwrapped
    agent = make_agent(name, env, seed=agent_seed, **kwargs)
    observation, _ = env.reset(seed=0)
    actions, done = [], False
    while not done:
        action, _ = agent.predict(observation[None])
        actions.append(action[0])
        observation, _, terminated, truncated, _ = env.step(action[0])
        done = terminated or truncated
    return env, agent, np.array(actions), observation


def test_zero_weights_reproduce_the_base_run_bit_for_bit():
    base, *_ = _run("prodigy")
    mine, _, actions, _ = _run("residual_controller")
    assert np.all(mine.lr_map.rates[actions] == 1.0)
    theirs, ours = base.fine_tuned_state_dict(), mine.fine_tuned_state_dict()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)


def test_over_a_cosine_base_zero_weights_are_prodigy_with_cosine_annealing_bit_for_bit():
    base, *_ = _run("prodigy", env_kwargs={"schedule": "cosine"})
    mine, agent, actions, _ = _run("residual_controller", schedule="cosine")
    assert mine.schedule == "cosine" and agent.env_overrides()["schedule"] == "cosine"
    assert np.all(mine.lr_map.rates[actions] == 1.0)
    theirs, ours = base.fine_tuned_state_dict(), mine.fine_tuned_state_dict()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    constant, *_ = _run("prodigy")  # and the schedule did change the run
    assert not all(torch.equal(constant.fine_tuned_state_dict()[k], ours[k]) for k in ours)


def test_controller_reads_features_and_sets_multipliers_per_layer():
    theta = np.zeros(len(rc.FEATURES))
    theta[rc.FEATURES.index("head")] = 1.0  # the head at 2x, every other layer at 1x
    theta[rc.FEATURES.index("depth")] = -0.5
    env, agent, actions, last = _run("residual_controller", theta=theta.tolist())
    multipliers = env.lr_map.rates[actions[-1]]
    depth = np.arange(env.n_layers) / (env.n_layers - 1)
    wanted = 2.0 ** (np.rint(4 * (-0.5 * depth + (depth == 1.0))) / 4)
    assert multipliers.tolist() == wanted.tolist()
    phi = rc.features(last, env.n_layers)
    assert phi.shape == (env.n_layers, len(rc.FEATURES))
    assert phi[:, rc.FEATURES.index("depth")].tolist() == pytest.approx(depth.tolist())
    assert phi[:, rc.FEATURES.index("progress")].tolist() == [1.0] * env.n_layers  # the episode's end
    for name in ("grad_ratio", "drift"):  # centred over the layers, and measured (not the floor)
        column = phi[:, rc.FEATURES.index(name)]
        assert abs(column.mean()) < 1e-9 and np.ptp(column) > 0
    assert np.all(np.abs(phi[:, rc.FEATURES.index("grad_cosine")]) <= 1)
    with pytest.raises(ValueError, match="is not 5 layers' activations"):
        rc.features(last[:-1], env.n_layers)


def test_jitter_adds_seeded_per_step_per_layer_noise_to_the_rule():
    """jitter: every step, every layer, a fresh N(0, jitter^2) on the log2 multiplier (rounded as
    the rule is), the same draws for the same seed; 0 draws nothing (the base run, above)."""
    env, agent, actions, _ = _run("residual_controller", jitter=0.37)
    logs = np.log2(env.lr_map.rates[actions])
    assert logs.shape[0] > 10 and np.all(np.isfinite(logs))
    assert np.allclose(logs * 4, np.rint(logs * 4))  # quarter octaves
    assert len({tuple(row) for row in logs}) > 1 and np.ptp(logs, axis=1).max() > 0  # steps, layers
    assert 0.25 < logs.std() < 0.5 and abs(logs.mean()) < 0.15
    assert agent.params["jitter"] == 0.37
    _, _, again, _ = _run("residual_controller", jitter=0.37)
    assert np.array_equal(actions, again)
    _, _, other, _ = _run("residual_controller", agent_seed=1, jitter=0.37)
    assert not np.array_equal(actions, other)
    # A checkpoint carries the generator: restored, it draws what it would have drawn.
    state = agent.get_rng_state()
    ahead = agent.rng.standard_normal(4)
    agent.set_rng_state(state)
    assert np.array_equal(agent.rng.standard_normal(4), ahead)
    assert "jitter" not in rc.ResidualController().params  # saved agents without noise read as before
    for bad in (-0.1, float("nan"), "much"):
        with pytest.raises(ValueError, match="jitter is a log2 standard deviation >= 0"):
            rc.ResidualController(jitter=bad)


def test_a_jittered_run_killed_after_its_first_checkpoint_resumes_bit_identically(tmp_path, package_cache):
    """The noise's generator is in the checkpoint: a resumed run draws what an unbroken one drew."""
    args = [
        "--algo", "residual_controller", "--agent-kwargs", "jitter=0.37", "--episodes", "1",
        "--epochs-per-episode", "4", "--ema", "none", "--sampling-rate", "0.3", "--no-progress",
    ]  # fmt: skip
    reference, killed = killed_and_unbroken(args, tmp_path, package_cache)
    a = torch.load(reference / "final_model.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "final_model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (reference, killed))
    assert ra["final_test_accuracy"] == rb["final_test_accuracy"]


def test_controller_files_save_load_safely_and_refuse_others(tmp_path):
    theta = [0.1 * k for k in range(len(rc.FEATURES))]
    rc.save_controller(tmp_path / "c.pt", theta, "prodigy", {"trainer": "test"})
    assert torch.load(tmp_path / "c.pt", weights_only=True)["theta"] == pytest.approx(theta)
    env, agent, *_ = _run("residual_controller", policy=str(tmp_path / "c.pt"))
    assert agent.theta.tolist() == pytest.approx(theta)
    save_agent(agent, tmp_path / "agent", "residual_controller")
    again, _ = load_agent(tmp_path / "agent", env)
    assert again.theta.tolist() == pytest.approx(theta)
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a residual controller file"):
        rc.ResidualController(policy=str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="theta must be 8 finite numbers"):
        rc.ResidualController(theta=[1.0, 2.0])
    with pytest.raises(ValueError, match="is not the weights of"):
        rc.ResidualController(theta=[0.0] * 8, policy=str(tmp_path / "c.pt"))
    # The base's schedule travels with the file; a file from before it had one ran at a constant rate.
    assert agent.env_overrides()["schedule"] == "constant"
    rc.save_controller(tmp_path / "cos.pt", theta, "prodigy", {"trainer": "test"}, schedule="cosine")
    assert rc.ResidualController(policy=str(tmp_path / "cos.pt")).env_overrides()["schedule"] == "cosine"
    with pytest.raises(ValueError, match="trained over a 'cosine' schedule of its base, not 'constant'"):
        rc.ResidualController(policy=str(tmp_path / "cos.pt"), schedule="constant")
    old = torch.load(tmp_path / "c.pt", weights_only=True)
    del old["schedule"]
    torch.save(old, tmp_path / "old.pt")
    assert rc.load_controller(tmp_path / "old.pt")["schedule"] == "constant"
    with pytest.raises(ValueError, match="schedule"):
        rc.save_controller(tmp_path / "bad.pt", theta, "prodigy", {}, schedule="linear")


def test_the_default_controller_is_the_shipped_one_or_a_clear_error(tmp_path, monkeypatch):
    if rc.SHIPPED_CONTROLLER.is_file():  # once one ships: it is the default, and it loads safely
        assert rc.ResidualController(policy="default").theta.tolist() == pytest.approx(
            torch.load(rc.SHIPPED_CONTROLLER, weights_only=True)["theta"]
        )
    monkeypatch.setattr(rc, "SHIPPED_CONTROLLER", tmp_path / "none.pt")
    with pytest.raises(ValueError, match="ships no meta-trained controller yet.*policy=PATH"):
        rc.ResidualController(policy="default")
    rc.save_controller(tmp_path / "none.pt", [0.5] * 8, "prodigy", {"trainer": "test"})
    assert rc.ResidualController(policy="default").theta.tolist() == [0.5] * 8


# -- meta-training -------------------------------------------------------------------------


class CountingExecutor(futures.ThreadPoolExecutor):
    """An in-process executor that counts the runs it was given."""

    def __init__(self) -> None:
        super().__init__(1)
        self.jobs = 0

    def submit(self, fn, /, *args, **kwargs):
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


def test_meta_training_searches_pairs_with_the_base_and_resumes_exactly(tmp_path):
    """Two generations of CMA-ES (3 candidates, 2 instances each): every candidate is paired with
    the base on the same instances; a run stopped mid-generation (its last evaluations lost)
    continues to the same controller, rerunning only what was lost; a longer run extends it."""
    config = MetaTrainConfig(instance_set=digits_instance_set(tmp_path), generations=2, batch=2, popsize=3)
    with CountingExecutor() as executor:
        logged = []
        full = MetaTrainer(config, tmp_path / "a", executor, log=lambda g, s: logged.append((g, s))).run()
        assert executor.jobs == 2 * 3 * 2 + len(
            {i.id for g in range(2) for i in MetaTrainer(config, tmp_path / "a", executor).batch(g)}
        )
    assert [g for g, _ in logged] == [0, 1] and all("mean_gain" in s and "sigma" in s for _, s in logged)
    records = [json.loads(line) for line in (tmp_path / "a" / EVALUATIONS).read_text().splitlines()]
    base = {r["instance"]: r["val"] for r in records if r["key"].startswith("base/")}
    generation = json.loads((tmp_path / "a" / "generations.jsonl").read_text().splitlines()[1])
    gains = [
        np.mean([r["val"] - base[r["instance"]] for r in records if r["key"].startswith(f"g1/c{k}/")])
        for k in range(3)
    ]
    assert generation["best_gain"] == pytest.approx(max(gains)) and generation["mean_gain"] == pytest.approx(
        np.mean(gains)
    )
    assert any(abs(g) > 0 for g in gains)  # the multipliers change the runs
    # The diagnostics read the same matrices back: their row means are each generation's fitnesses.
    matrices = generation_gains(records)
    assert sorted(matrices) == [0, 1] and matrices[1].shape == (3, 2)
    assert matrices[1].mean(axis=1) == pytest.approx(gains)
    finished_out_of_order = generation_gains(records[::-1])  # parallel workers append as runs finish
    assert all(np.array_equal(finished_out_of_order[g], matrices[g]) for g in (0, 1))
    assert generation_gains([r for r in records if r["key"] != records[-1]["key"]]).keys() == {0, 1} - {
        int(records[-1]["key"].split("/")[0][1:])
    }  # a generation with a run missing is left out
    saved = rc.load_controller(tmp_path / "a" / "controller.pt")
    assert saved["theta"] == pytest.approx(full.tolist()) and saved["card"]["runs"] == len(records)

    (tmp_path / "b").mkdir()
    kept = [json.dumps(r) for r in records[:-3]]
    cut = json.dumps(records[-3])[:20]  # a line a kill cut short while it was written
    (tmp_path / "b" / EVALUATIONS).write_text("\n".join(kept) + "\n" + cut)
    (tmp_path / "b" / "meta_config.json").write_text((tmp_path / "a" / "meta_config.json").read_text())
    with CountingExecutor() as executor:
        resumed = MetaTrainer(config, tmp_path / "b", executor).run()
        assert executor.jobs == 3
    assert resumed.tolist() == full.tolist()

    with CountingExecutor() as executor:
        longer = MetaTrainConfig(**{**config.__dict__, "generations": 3})
        MetaTrainer(longer, tmp_path / "a", executor).run()
        assert 3 * 2 <= executor.jobs <= 3 * 2 + 2  # only the third generation (and its new bases)
    with pytest.raises(ValueError, match="other settings \\(sigma0\\)"):
        MetaTrainer(MetaTrainConfig(**{**config.__dict__, "sigma0": 1.0}), tmp_path / "a", executor)
    # A folder written before the base had a schedule was a constant one: it continues as that, and
    # a cosine base is another search.
    saved_settings = json.loads((tmp_path / "a" / "meta_config.json").read_text())
    del saved_settings["schedule"]
    (tmp_path / "a" / "meta_config.json").write_text(json.dumps(saved_settings))
    MetaTrainer(config, tmp_path / "a", executor)
    with pytest.raises(ValueError, match="other settings \\(schedule\\)"):
        MetaTrainer(MetaTrainConfig(**{**config.__dict__, "schedule": "cosine"}), tmp_path / "a", executor)
    with pytest.raises(ValueError, match="schedule"):
        MetaTrainConfig(schedule="linear")

    # A recorded candidate that CMA-ES does not ask again (another cma, say) stops the replay before
    # any run, naming the versions that drew the search.
    import cma

    assert json.loads((tmp_path / "a" / "versions.json").read_text()) == {
        "cma": cma.__version__,
        "numpy": np.__version__,
    }
    (tmp_path / "c").mkdir()
    for name in ("meta_config.json", "versions.json"):
        (tmp_path / "c" / name).write_text((tmp_path / "a" / name).read_text())
    (tmp_path / "c" / "versions.json").write_text(json.dumps({"cma": "0.1", "numpy": np.__version__}))
    moved = [
        {**r, "theta": [v + 0.5 for v in r["theta"]]} if r["key"].startswith("g0/c0/") else r for r in records
    ]
    (tmp_path / "c" / EVALUATIONS).write_text("".join(json.dumps(r) + "\n" for r in moved))
    with CountingExecutor() as executor:
        with pytest.raises(RuntimeError, match=r"drawn with .*'cma': '0.1'.*pip install cma==0.1 numpy=="):
            MetaTrainer(config, tmp_path / "c", executor).run()
        assert executor.jobs == 0


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_run_instance_is_the_agent_run_of_the_same_instance(tmp_path, schedule):
    """The meta-trainer's evaluation is the same fine-tuning run as the controller deployed through
    make_agent on that instance's environment (over either base schedule)."""
    instance = Instance("digits", "digits_resnet8", 0.3, 0, 2)
    theta = [0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.0, 0.0]
    result = run_instance(instance.to_json(), theta, "prodigy", None, schedule)
    controller = rc.ResidualController(theta=theta, schedule=schedule)
    env = finetune_gym.FineTuneEnv(**instance.env_kwargs(), **controller.env_overrides())
    assert env.schedule == schedule
    agent = make_agent("residual_controller", env, theta=theta, schedule=schedule)
    observation, _ = env.reset(seed=0)
    done = False
    while not done:
        observation, _, terminated, truncated, _ = env.step(agent.predict(observation[None])[0][0])
        done = terminated or truncated
    assert result["val"] == env.evaluate("val")
    # It records the machine: results repeat bit for bit only on the same CPU model.
    assert result["machine"] == finetune_gym.device.describe_machine(env.device)


def test_machine_description_names_the_cpu_its_instruction_set_and_threads():
    """What results record of a CPU: its model, the instruction set PyTorch dispatches to, a
    fingerprint of its flags (two machines of one model name can differ in them) and the threads."""
    import torch

    from finetune_gym.device import _cpu_info, describe_machine

    text = describe_machine(torch.device("cpu"))
    model, fingerprint = _cpu_info()
    assert text.startswith(f"CPU {model} ") and f"flags {fingerprint} " in text
    assert torch.backends.cpu.get_cpu_capability() in text
    assert text.endswith(f"(torch threads {torch.get_num_threads()})")
    assert re.fullmatch(r"[0-9a-f]{8}|unknown", fingerprint)


def test_status_estimates_what_a_search_has_left(tmp_path):
    """`controller.py status`: the core-hours left at the cost per run and the runs per generation
    measured so far."""
    from benchmarks import controller_status

    run = tmp_path / "set-split1-s0"
    run.mkdir()
    (run / "meta_config.json").write_text(json.dumps({"generations": 3, "batch": 2}))
    (run / "evaluations.jsonl").write_text("".join(json.dumps({"wall_s": 1800.0}) + "\n" for _ in range(6)))
    summary = {"generation": 0, "mean_gain": 0.01, "best_gain": 0.02, "sigma": 0.5, "runs": 6}
    (run / "generations.jsonl").write_text(json.dumps(summary) + "\n")
    line = controller_status.status(tmp_path)[0]
    assert line.startswith("set-split1-s0: 6 runs (3.00 h of runs) of 3 generations x 2 instances")
    assert line.endswith("; 2 generations left, ~6.0 core-hours")  # 2 x 6 runs x 0.5 h


@pytest.mark.parametrize(
    ("late", "generations", "verdict"),
    [
        ([0.01] * 5, 15, "flattened, the search ends there"),
        ([0.09] * 4 + [0.08], 15, "still rising, it runs to its last generation"),
        ([0.09] * 4 + [0.08], 11, "still rising, all generations ran"),
    ],
)
def test_status_says_what_the_stopping_rule_decided(tmp_path, late, generations, verdict):
    """After generation 10 the status line names the rule's verdict and what follows from it (a
    search still rising that has run all its generations is done, not still running)."""
    from benchmarks import controller_status

    run = tmp_path / "set-split2-s0"
    run.mkdir()
    (run / "meta_config.json").write_text(json.dumps({"generations": generations, "batch": 4}))
    (run / "evaluations.jsonl").write_text(json.dumps({"wall_s": 60.0}) + "\n")
    gains = [-0.05, 0.01, 0.02, 0.03, 0.02, 0.01, *late]
    rows = [
        {"generation": g, "mean_gain": m, "best_gain": m, "sigma": 0.5, "runs": 36 * (g + 1)}
        for g, m in enumerate(gains)
    ]
    (run / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = controller_status.status(tmp_path)[0]
    assert f"; the stopping rule at generation 10: {verdict}" in line
    assert ("generations left" in line) == verdict.endswith("last generation")


def test_a_search_killed_mid_generation_continues_to_the_same_controller(tmp_path):
    """`controller.py run` SIGKILLed (with its worker processes) while a generation's runs finish:
    run again, it reaches the controller an uninterrupted search reaches, every evaluation equal."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT, limit

    instance_set = digits_instance_set(tmp_path, epochs=1)

    def command(folder: str) -> list[str]:
        return [
            sys.executable, "benchmarks/controller.py", "run", "--instance-set", instance_set,
            "--generations", "2", "--batch", "2", "--popsize", "3", "--folder", str(tmp_path / folder),
            "--executor", "processes", "--workers", "2", "--threads", "1",
        ]  # fmt: skip

    killed = tmp_path / "killed" / "set-split1-s0" / EVALUATIONS
    process = subprocess.Popen(
        command("killed"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + limit(300)
    while not (killed.is_file() and len(killed.read_text().splitlines()) >= 5):
        assert process.poll() is None, "the search finished before it was killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the search and its workers, as a crash would
    process.wait()
    for folder in ("killed", "whole"):
        done = subprocess.run(command(folder), cwd=ROOT, capture_output=True, text=True, timeout=limit(600))
        assert done.returncode == 0, done.stderr[-2000:]

    def evaluations(folder: str) -> dict[str, float]:
        path = tmp_path / folder / "set-split1-s0" / EVALUATIONS
        return {r["key"]: r["val"] for r in map(json.loads, path.read_text().splitlines())}

    assert evaluations("killed") == evaluations("whole")
    assert len(evaluations("whole")) >= 2 * 3 * 2 + 2
    theirs, ours = (
        rc.load_controller(tmp_path / f / "set-split1-s0" / "controller.pt") for f in ("whole", "killed")
    )
    assert ours["theta"] == theirs["theta"]


def test_a_continued_search_logs_on_to_the_same_wandb_run(tmp_path, monkeypatch):
    """`controller.py run --wandb-mode offline`, continued for another generation: one W&B run id,
    kept in the search's folder, so a search spread over sessions is one run in W&B; the replayed
    generations are not logged twice."""
    from benchmarks import controller, harness

    monkeypatch.setattr(harness, "RUNS_DIR", tmp_path / "wandb_runs")
    argv = [
        "run",
        "--instance-set",
        digits_instance_set(tmp_path, epochs=1),
        "--batch",
        "1",
        "--popsize",
        "2",
    ]
    argv += [
        "--folder",
        str(tmp_path / "runs"),
        "--executor",
        "processes",
        "--workers",
        "1",
        "--threads",
        "1",
    ]
    argv += ["--wandb-mode", "offline", "--wandb-project", "test", "--tensorboard", str(tmp_path / "tb")]
    controller.main([*argv, "--generations", "1"])
    controller.main([*argv, "--generations", "2"])
    from finetune_gym.agents.wandb_logging import WANDB_ID

    kept = (tmp_path / "runs" / "set-split1-s0" / WANDB_ID).read_text().strip()
    logs = sorted((tmp_path / "wandb_runs").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 2 and {path.name for path in logs} == {f"run-{kept}.wandb"}
    # The replayed generation is not logged again: TensorBoard holds each generation once.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted((tmp_path / "tb").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        steps += [event.step for event in accumulator.Scalars("meta/mean_gain")]
    assert sorted(steps) == [0, 1]


def test_ppo_status_counts_base_runs_and_estimates_what_is_left(tmp_path):
    from benchmarks import controller_status
    from finetune_gym.agents import controller_ppo as cp
    from finetune_gym.storage import atomic_torch_save

    run = tmp_path / "set-split1-s0-ppo"
    run.mkdir()
    (run / cp.CONFIG).write_text(json.dumps({"runs": 10}))
    atomic_torch_save({"state": {"runs": 4, "episodes": 3}}, run / cp.CHECKPOINT)
    episodes = [{"episode": e, "paired_gain": 0.01 * e, "wall_s": 1800.0} for e in (1, 2, 3)]
    (run / cp.EPISODES).write_text("".join(json.dumps(e) + "\n" for e in episodes))
    (run / cp.BASES).write_text(json.dumps({"instance": "x", "val": 0.5, "wall_s": 1800.0}) + "\n")
    (line,) = controller_status.ppo_status(tmp_path)
    assert line == (
        "set-split1-s0-ppo: 4 of 10 runs (bases included; 2.00 h of runs, ~3.0 core-hours left); "
        "last 3 runs' mean gain +2.00 points"
    )


def test_the_stopping_rule_compares_generations_6_to_10_with_1_to_5():
    from benchmarks.controller_status import flattened

    def rows(gains):
        return [{"mean_gain": g} for g in gains]

    start, early = [-0.05], [0.01, 0.02, 0.03, 0.02, 0.01]
    assert flattened(rows(start + early + [0.05] * 4)) is None  # generation 10 not run yet
    assert flattened(rows(start + early + [0.01, 0.02, 0.02, 0.01, 0.03])) is True
    assert flattened(rows(start + early + [0.05, 0.06, 0.05, 0.07, 0.06])) is False


def test_a_search_stops_where_its_rule_says_and_replays_to_the_same_place(tmp_path):
    """MetaTrainer's stopping rule: the search ends after the generation the rule names, its card
    says how many ran, and a replay asked for more stops at the same place without a run."""
    config = MetaTrainConfig(
        instance_set=digits_instance_set(tmp_path, epochs=1), generations=3, batch=1, popsize=2
    )
    with CountingExecutor() as executor:
        stopped = MetaTrainer(config, tmp_path / "a", executor, stop=lambda rows: len(rows) == 2).run()
        ran = executor.jobs
    assert len((tmp_path / "a" / "generations.jsonl").read_text().splitlines()) == 2
    assert rc.load_controller(tmp_path / "a" / "controller.pt")["card"]["generations"] == 2
    with CountingExecutor() as executor:
        again = MetaTrainer(config, tmp_path / "a", executor, stop=lambda rows: len(rows) == 2).run()
        assert executor.jobs == 0
    assert again.tolist() == stopped.tolist() and ran > 0


def test_a_search_over_the_cosine_base_runs_in_a_folder_of_its_own(tmp_path):
    """`controller.py run --schedule cosine`: the v2 search's folder, settings and controller file
    carry the base's schedule, so that its controller deploys over that base."""
    from benchmarks import controller

    argv = ["run", "--instance-set", digits_instance_set(tmp_path, epochs=1), "--batch", "1"]
    argv += ["--popsize", "2", "--generations", "1", "--folder", str(tmp_path / "runs")]
    argv += ["--executor", "processes", "--workers", "1", "--threads", "1", "--schedule", "cosine"]
    controller.main(argv)
    folder = tmp_path / "runs" / "set-split1-s0-cosine"
    assert json.loads((folder / "meta_config.json").read_text())["schedule"] == "cosine"
    saved = rc.load_controller(folder / "controller.pt")
    assert saved["schedule"] == "cosine"
    assert rc.ResidualController(policy=str(folder / "controller.pt")).env_overrides()["schedule"] == "cosine"
    assert not (tmp_path / "runs" / "set-split1-s0").exists()
