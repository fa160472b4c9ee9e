"""The engine both run-level trainers share (agents/run_budget.py), on a toy environment whose
episodes are 3 steps long, each one "run": the budget is met at the end of a rollout that is
learned from, the checkpoint is the trained policy, a resume cuts the log back and goes on."""

from __future__ import annotations

import json
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO

from finetune_gym.agents.run_budget import (
    RunBudget,
    learn_to_budget,
    load_trainer,
    new_state,
    read_trainer,
)


class ThreeStepRuns(gym.Env):
    observation_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t == 3
        return (
            np.full(2, self.t / 3, dtype=np.float32),
            float(action),
            done,
            False,
            {"ran": True} if done else {},
        )


class ToyRuns(RunBudget):
    def finished(self, info: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
        return ({"steps": 3}, 1) if info.get("ran") else None


def _model() -> PPO:
    return PPO("MlpPolicy", ThreeStepRuns(), n_steps=8, batch_size=8, n_epochs=2, seed=0, device="cpu")


def _same_policy(model: PPO, saved: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, saved[k]) for k, v in model.policy.state_dict().items())


def test_the_budget_ends_after_a_rollout_that_is_learned_from_and_resumes(tmp_path):
    checkpoint, log = tmp_path / "checkpoint.pt", tmp_path / "runs.jsonl"
    model = _model()
    callback = ToyRuns(checkpoint, log, budget=4, state=new_state())
    learn_to_budget(model, callback, resumed=False)
    # Runs end at steps 3, 6 | 9, 12, 15: the budget of 4 is met in the second rollout, which is
    # finished and learned from (2 updates), and learning stops at the next step.
    assert callback.state == {"runs": 5, "episodes": 5}
    assert model._n_updates == 2 * 2
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["episode"] for line in lines] == [1, 2, 3, 4, 5]
    saved = read_trainer(checkpoint)
    # The last save: the policy after the second update, and the step that stopped it counted.
    assert saved["num_timesteps"] == 17 and saved["state"] == {"runs": 5, "episodes": 5}
    assert _same_policy(model, saved["policy"])  # the checkpoint is the trained policy

    with open(log, "a") as out:  # a run logged after the last update, then a kill
        out.write(json.dumps({"episode": 6, "steps": 3}) + "\n")
    resumed = _model()
    assert not _same_policy(resumed, saved["policy"])
    state = load_trainer(saved, resumed, log)
    assert _same_policy(resumed, saved["policy"]) and resumed.num_timesteps == 17
    assert len(log.read_text().splitlines()) == 5
    again = ToyRuns(checkpoint, log, budget=5, state=state)
    learn_to_budget(resumed, again, resumed=True)  # the budget is met: nothing runs
    assert resumed.num_timesteps == 17
    more = ToyRuns(checkpoint, log, budget=7, state=state)
    learn_to_budget(resumed, more, resumed=True)
    assert state["runs"] >= 7 and read_trainer(checkpoint)["num_timesteps"] > 17
    assert [json.loads(line)["episode"] for line in log.read_text().splitlines()] == list(
        range(1, state["episodes"] + 1)
    )


def test_a_run_that_ends_in_the_stopping_step_is_counted_but_not_learned_from(tmp_path):
    """Runs end at steps 3 and 6 of the first rollout (8 steps): the budget of 2 is met. The next
    rollout's first step, 9, stops the training and also ends a run: paid for, so counted and
    logged, and saved with the policy of the one update."""
    checkpoint, log = tmp_path / "checkpoint.pt", tmp_path / "runs.jsonl"
    model = _model()
    callback = ToyRuns(checkpoint, log, budget=2, state=new_state())
    learn_to_budget(model, callback, resumed=False)
    assert model._n_updates == 1 * 2 and callback.state == {"runs": 3, "episodes": 3}
    assert len(log.read_text().splitlines()) == 3
    saved = read_trainer(checkpoint)
    assert saved["state"] == {"runs": 3, "episodes": 3} and saved["num_timesteps"] == 9
    assert _same_policy(model, saved["policy"])


def test_a_damaged_checkpoint_says_what_to_do(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="start the training again in a new folder"):
        read_trainer(tmp_path / "checkpoint.pt")
    # A trainer names its own way to start again, and its own error (pretraining: its run folder's).
    from finetune_gym.agents.rundir import RunDirectoryError

    with pytest.raises(
        RunDirectoryError, match="^checkpoint .*; start the pretraining again with --overwrite$"
    ):
        read_trainer(
            tmp_path / "checkpoint.pt", "start the pretraining again with --overwrite", RunDirectoryError
        )
