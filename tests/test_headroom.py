"""The headroom study's pieces (issue 25): the stage_profile agent it searches, and the Optuna
study rebuilt from its results file (the storage it resumes from)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from finetune_gym.agents import make_agent
from finetune_gym.agents.config import RunConfig
from finetune_gym.agents.run import run_training


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final_model.pt", weights_only=True)["state_dict"]


def tiny(algo: str, **agent) -> RunConfig:
    return RunConfig(
        algo=algo,
        episodes=1,
        epochs_per_episode=2,
        ema=None,
        env_kwargs={"sampling_rate": 0.3, "batch_size": 64},
        agent_kwargs=agent,
    )


def test_an_empty_profile_is_the_base_run_itself(tmp_path):
    """Trial 0 of the study is scored from the grid's runs of the base: that holds only if the
    profile with every multiplier 1 trains exactly as the base's own agent."""
    run_training(tiny("prodigy"), tmp_path / "base", progress=False, verbose=False)
    run_training(
        tiny("stage_profile", optimizer="prodigy"), tmp_path / "profile", progress=False, verbose=False
    )
    base, profile = final_weights(tmp_path / "base"), final_weights(tmp_path / "profile")
    assert base.keys() == profile.keys()
    assert all(torch.equal(base[k], profile[k]) for k in base)


def test_a_profile_sets_each_stage_and_freezes_at_zero():
    import gymnasium as gym

    from finetune_gym.agents.registry import baseline_env_overrides

    agent_kwargs = {"optimizer": "ldog", "multipliers": {"stem": 0.0, "head": 4.0}, "schedule": "warmdown"}
    env = gym.make("FineTune-Digits-v0", **baseline_env_overrides("stage_profile", **agent_kwargs))
    agent = make_agent("stage_profile", env, **agent_kwargs)
    names = env.unwrapped.layer_names
    rates = env.unwrapped.lr_map(agent.predict(np.zeros((1, 1)))[0][0])
    expected = [0.0 if n == "stem" else 4.0 if n == "head" else 1.0 for n in names]
    np.testing.assert_allclose(rates, expected)
    assert env.unwrapped.schedule == "warmdown" and env.unwrapped.optimizer_name == "ldog"
    env.reset(seed=0)
    stem = [p.detach().clone() for p in env.unwrapped.layers[0].parameters]
    for _ in range(3):
        env.step(agent.predict(np.zeros((1, 1)))[0][0])
    assert all(torch.equal(a, b) for a, b in zip(stem, env.unwrapped.layers[0].parameters, strict=True))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"multipliers": {"layer9": 2.0}}, r"no layer or stage named \['layer9'\].*its stages are"),
        ({"multipliers": {"head": -1.0}}, "multipliers >= 0"),
        (
            {"optimizer": "adam"},
            r"stage_profile: optimizer 'adam' has no published default rate: give the rate",
        ),
        ({"schedule": "step"}, "unknown schedule 'step'"),
    ],
)
def test_bad_profiles_are_named(kwargs, message):
    import gymnasium as gym

    with pytest.raises(ValueError, match=message):
        make_agent("stage_profile", gym.make("FineTune-Digits-v0"), **kwargs)


@pytest.fixture
def headroom(tmp_path, monkeypatch):
    """The headroom study (benchmarks/headroom_study.py) with its results file in ``tmp_path``."""
    from benchmarks import harness, headroom_study

    monkeypatch.setattr(headroom_study, "RESULTS", harness.ResultsFile(tmp_path / "headroom.jsonl"))
    return headroom_study


def test_the_study_is_rebuilt_from_its_results_file_and_asks_an_unfinished_trial_again(headroom):
    setting = "gtsrb/r0.15"
    params = {**headroom.BASE_PARAMS, "head_log2": 1.5, "stem_frozen": True, "time": "cosine"}
    for seed, val in ((0, 0.70), (1, 0.74)):
        headroom.append(
            {
                "setting": setting,
                "kind": "run",
                "trial": 0,
                "params": headroom.BASE_PARAMS,
                "seed": seed,
                "results": {"final_val_accuracy": val},
            }
        )
    headroom.append({"setting": setting, "kind": "asked", "trial": 1, "params": params})
    headroom.append(
        {
            "setting": setting,
            "kind": "run",
            "trial": 1,
            "params": params,
            "seed": 0,
            "results": {"final_val_accuracy": 0.9},
        }
    )
    lines = headroom.load_lines()
    study, trials, finished = headroom.study_of(setting, "prodigy", lines, {})
    assert sorted(finished) == [0] and sorted(trials) == [0, 1]  # trial 1 lacks seed 1
    assert study.trials[0].value == pytest.approx(0.72)  # the mean over the search seeds
    space = headroom.distributions()
    assert set(space) == set(params)
    multipliers, schedule = headroom.profile(params)
    assert multipliers == {"stem": 0.0, "layer1": 1.0, "layer2": 1.0, "layer3": 1.0, "head": 2.0**1.5}
    assert schedule == "cosine"
    # The unfinished trial comes back with its parameters; once it is done, a new one is asked.
    assert headroom.next_trial(study, trials, finished) == (1, params, False)
    headroom.append(
        {
            "setting": setting,
            "kind": "run",
            "trial": 1,
            "params": params,
            "seed": 1,
            "results": {"final_val_accuracy": 0.8},
        }
    )
    study, trials, finished = headroom.study_of(setting, "prodigy", headroom.load_lines(), {})
    assert sorted(finished) == [0, 1] and max(t.value for t in study.trials) == pytest.approx(0.85)
    number, asked, new = headroom.next_trial(study, trials, finished)
    assert number == 2 and new and set(asked) == set(space)
    assert all(space[k]._contains(space[k].to_internal_repr(v)) for k, v in asked.items())


def _built(algo: str, **kwargs):
    import gymnasium as gym

    from finetune_gym.agents.registry import baseline_env_overrides

    env = gym.make(
        "FineTune-Digits-v0", **baseline_env_overrides(algo, **kwargs), sampling_rate=0.3, batch_size=64
    )
    return env, make_agent(algo, env, **kwargs)


def test_surgical_trains_one_block_and_the_head_only():
    env, agent = _built("surgical", block="layer1")
    base = env.unwrapped
    base.reset(seed=0)
    before = {layer.name: [p.detach().clone() for p in layer.parameters] for layer in base.layers}
    for _ in range(3):
        base.step(agent.predict(np.zeros((1, 1)))[0][0])
    for layer in base.layers:
        moved = any(not torch.equal(a, b) for a, b in zip(before[layer.name], layer.parameters, strict=True))
        assert moved == (layer.name.startswith("layer1") or layer is base.layers[-1]), layer.name
    with pytest.raises(ValueError, match=r"no block 'head' before the head; the blocks are \['stem'"):
        _built("surgical", block="head")
    with pytest.raises(ValueError, match="surgical needs the block"):
        _built("surgical")


def test_auto_rgn_gives_each_layer_its_relative_gradient_norm_share_of_the_base():
    """Lee et al.'s rule: rate_i = base * RGN_i / max_j RGN_j, on the grad_ratio the step read back."""
    env, agent = _built("auto_rgn", optimizer="ldog")
    base = env.unwrapped
    obs, _ = base.reset(seed=0)
    assert base.obs_extras == ("grad_ratio",)
    first = agent.predict(obs[None])[0][0]
    assert np.all(base.lr_map(first) == 1.0)  # nothing applied yet: every ratio alike, all at the base
    for _ in range(3):
        obs, *_ = base.step(agent.predict(obs[None])[0][0])
    ratios = 10.0 ** obs[-base.n_layers :].astype(np.float64)
    rates = base.lr_map(agent.predict(obs[None])[0][0])
    wanted = ratios / ratios.max()
    assert rates[np.argmax(ratios)] == 1.0
    kept = wanted >= 2.0**-8
    # Within a quarter-octave grid step (in log) of the rule; 0 only below the grid.
    assert np.all(np.abs(np.log2(rates[kept] / wanted[kept])) <= 0.125 + 1e-9)
    assert np.all((rates == 0) == ~kept) and len(set(rates.tolist())) > 1


def test_auto_rgn_reads_the_raw_observation_in_a_run(tmp_path, monkeypatch):
    """The run loop standardises observations (VecNormalize) for the agents that learn; a rule over
    the environment's own values must see them raw: the first grad_ratio is the floor, -8."""
    from finetune_gym.agents.baselines import AutoRGN

    seen = []
    original = AutoRGN.predict

    def recording(self, observation, *args, **kwargs):
        seen.append(np.array(observation, copy=True))
        return original(self, observation, *args, **kwargs)

    monkeypatch.setattr(AutoRGN, "predict", recording)
    run_training(tiny("auto_rgn", optimizer="ldog"), tmp_path / "run", progress=False, verbose=False)
    n_layers = 5
    assert np.all(seen[0][0, -n_layers:] == -8.0)
    assert all(np.all(obs[0, -n_layers:] <= 1.0) for obs in seen)  # log10 of ||g|| / ||w||, not z-scores
    assert len({tuple(obs[0, -n_layers:]) for obs in seen}) > 2


def test_importances_over_working_profiles_find_the_parameter_that_matters(headroom):
    """Over the trials that froze nothing, fANOVA names the multiplier the score depends on."""
    rng = np.random.default_rng(0)
    finished = {}
    for number in range(14):
        params = {**headroom.BASE_PARAMS, **{f"{s}_log2": float(rng.uniform(-3, 3)) for s in headroom.STAGES}}
        params["time"] = str(rng.choice(headroom.PROFILES))
        value = 0.5 + 0.1 * params["head_log2"]
        finished[number] = {
            "params": params,
            "runs": {s: {"final_val_accuracy": value} for s in headroom.SEARCH_SEEDS},
        }
    finished[99] = {"params": {**headroom.BASE_PARAMS, "head_frozen": True}, "runs": {}}  # left out
    weights, n = headroom.unfrozen_importances(finished)
    assert n == 14 and max(weights, key=weights.get) == "head_log2" and weights["head_log2"] > 0.5


def test_a_diverging_profile_scores_zero_instead_of_stopping_the_study(headroom, monkeypatch):
    """At clothing10 15% trial 47 (head x6.1 on L-DoG) made the loss non-finite for 10 updates in a row; the
    TrainingDiverged of one run stopped the whole study."""
    from finetune_gym.agents.recording import TrainingDiverged

    def diverge(run_dir, make_config):
        raise TrainingDiverged("10 updates in a row were skipped")

    monkeypatch.setattr(headroom.harness, "run_or_load", diverge)
    results = headroom.run_one("gtsrb/r0.15", "prodigy", headroom.BASE_PARAMS, 0, "unused")
    assert results["final_val_accuracy"] == 0.0 and "skipped" in results["diverged"]


def test_the_study_runs_its_trials_then_the_confirmation_and_a_second_call_runs_nothing(
    headroom, monkeypatch
):
    """The search loop on the harness, with the runs replaced by a cheap function of the profile:
    trial 0 comes from the grid's runs of the base, each trial's seeds run, then the best trial and
    the base on every confirmation seed; a call after that finds everything done."""
    import concurrent.futures as futures

    from benchmarks import grid
    from benchmarks import headroom as cli

    setting, (dataset, rate) = "gtsrb/r0.15", headroom.SETTINGS["gtsrb/r0.15"]
    done = {}
    for method, val in (
        ("schedulefree_adamw", 0.5),
        ("prodigy", 0.6),
        ("prodigy_layerwise", 0.4),
        ("ldog", 0.3),
    ):
        for seed in grid.seeds_on(dataset, rate):
            results = {"final_val_accuracy": val, "final_test_accuracy": val}
            done[grid.cell_id(method, rate, seed, dataset)] = {"results": results}

    def fake_run(setting, method, params, seed, run_dir):
        value = 0.6 + 0.01 * params["head_log2"]  # the head's multiplier is all that matters
        return {"final_val_accuracy": value, "final_test_accuracy": value + 0.001 * seed}

    def fake_base(setting, method, seed, run_dir, done):
        return {"final_val_accuracy": 0.6, "final_test_accuracy": 0.6 + 0.001 * seed}

    monkeypatch.setattr(grid, "load_done", lambda: done)
    monkeypatch.setattr(headroom, "run_one", fake_run)
    monkeypatch.setattr(headroom, "run_base", fake_base)
    monkeypatch.setattr(cli, "write_report", lambda: None)
    monkeypatch.setattr(cli.harness, "code_version", lambda: "test")
    with futures.ThreadPoolExecutor(2) as pool:
        cli.run_setting(setting, pool, workers=2, n_trials=4)
    lines = headroom.load_lines()
    trials = headroom.trials_of(setting, lines)
    assert sorted(trials) == [0, 1, 2, 3] and all(headroom.score(t) is not None for t in trials.values())
    assert trials[0]["params"] == headroom.BASE_PARAMS
    assert sorted(line["seed"] for line in lines if line["kind"] == "run" and line["trial"] == 0) == [0, 1]
    best = max(trials, key=lambda n: (headroom.score(trials[n]), -n))
    assert sorted(trials[best]["runs"]) == list(headroom.CONFIRM_SEEDS)  # confirmed on every seed
    bases = sorted(line["seed"] for line in lines if line["kind"] == "base")
    assert bases == [3, 4]  # seeds 0-2 of the base are the grid's own cells
    with futures.ThreadPoolExecutor(2) as pool:
        cli.run_setting(setting, pool, workers=2, n_trials=4)
    assert headroom.load_lines() == lines  # nothing ran twice
