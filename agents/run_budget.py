"""PPO trained to a budget of finished fine-tuning runs, resumable at its last update: the engine
the two run-level trainers share (pretraining a learning-rate policy, :mod:`.pretrain`, and PPO
over the residual controller, :mod:`.controller_ppo`).

Why not SB3's own: ``learn(total_timesteps)`` budgets steps, and a run's length in steps differs
from task to task; ``StopTrainingOnMaxEpisodes`` counts episodes but stops in the middle of a
rollout, which SB3 then drops (the last runs are paid for and never learned from), and saves
nothing. Here:

- a run counts when an environment's ``info`` says one finished (:meth:`RunBudget.finished`: the
  line to log and how many fine-tuning runs it cost); each is appended to a JSON-lines log;
- after every policy update the trainer is saved (:func:`save_trainer`: the policy, its optimizer,
  the step count and the counters, in one file loadable with ``weights_only=True``);
- the budget is met at the end of a rollout: the policy learns from the rollout in which the last
  run finished, and learning stops at the next step (so a budget can be overshot by the runs that
  finish in that rollout, and in that one step: all are counted, as all were paid for; the last
  save records them);
- a resume (:func:`load_trainer`) cuts the log back to the runs the checkpoint counts: the runs
  finished after the last update were not learned from, and are run again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from finetune_gym.storage import UnreadableFile, atomic_torch_save, load_tensors


def new_state() -> dict[str, Any]:
    """The counters a trainer starts from (a trainer may add its own)."""
    return {"runs": 0, "episodes": 0}


class RunBudget(BaseCallback):
    """Counts and logs finished runs, saves the trainer after each update, stops at the budget.

    Subclasses say what a finished run is (:meth:`finished`) and may add to what a step or a run
    records (:meth:`on_info`, :meth:`on_run`) and to what a save holds (:meth:`before_save`)."""

    def __init__(self, checkpoint: Path, log: Path, budget: int, state: dict[str, Any]) -> None:
        super().__init__()
        self.checkpoint, self.log, self.budget, self.state = Path(checkpoint), Path(log), budget, state
        self.rollouts, self.steps_in_rollout = 0, 0

    def finished(self, info: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
        """For an environment's ``info``: (the line to log, the runs it cost) if a run ended, else None."""
        raise NotImplementedError

    def on_info(self, info: dict[str, Any]) -> None:
        """Every environment's info at every step (counters of a trainer's own)."""

    def on_run(self, line: dict[str, Any]) -> None:
        """A run was logged (W&B, printing)."""

    def before_save(self) -> None:
        """Just before a save: what the state should also hold."""

    def save(self) -> None:
        self.before_save()
        save_trainer(self.checkpoint, self.model, self.state)

    def _on_rollout_start(self) -> None:
        # Called after the previous rollout's update: the state to resume from.
        if self.rollouts:
            self.save()
        self.rollouts += 1
        self.steps_in_rollout = 0

    def _on_step(self) -> bool:
        self.steps_in_rollout += 1
        # The budget was met in the last rollout, which has been learned from: this step ends the
        # training. A run that ended in it is still counted (it was paid for), not learned from.
        stop = self.state["runs"] >= self.budget and self.steps_in_rollout == 1
        for info in self.locals["infos"]:
            self.on_info(info)
            run = self.finished(info)
            if run is None:
                continue
            line, cost = run
            self.state["runs"] += cost
            self.state["episodes"] += 1
            line = {"episode": self.state["episodes"], **line}
            with open(self.log, "a") as out:
                out.write(json.dumps(line, default=str) + "\n")
            self.on_run(line)
        return not stop


def learn_to_budget(model: BaseAlgorithm, callback: RunBudget, resumed: bool, **learn_kwargs: Any) -> None:
    """``model.learn`` until the callback's budget of runs is met (nothing if it already is), then
    one last save: the policy as the last update left it (nothing after it was learned from), the
    counters with every run finished."""
    if callback.state["runs"] < callback.budget:
        model.learn(
            total_timesteps=10**12, callback=callback, reset_num_timesteps=not resumed, **learn_kwargs
        )
        callback.save()


def save_trainer(path: Path, model: BaseAlgorithm, state: dict[str, Any]) -> None:
    """The trainer as a resume reads it back (plain values and tensors: ``weights_only`` loads it)."""
    payload = {
        "policy": model.policy.state_dict(),
        "optimizer": model.policy.optimizer.state_dict(),
        "num_timesteps": int(model.num_timesteps),
        "state": {k: v for k, v in state.items() if not k.startswith("_")},
    }
    atomic_torch_save(payload, path)


def read_trainer(
    path: Path, fix: str = "start the training again in a new folder", error: type[Exception] = RuntimeError
) -> dict[str, Any]:
    """A checkpoint :func:`save_trainer` wrote; for a damaged one, ``error`` saying why and ``fix``
    (each trainer names its own way to start again)."""
    try:
        return load_tensors(path)
    except UnreadableFile as unreadable:
        raise error(f"checkpoint {unreadable}; {fix}") from unreadable


def load_trainer(payload: dict[str, Any], model: BaseAlgorithm, log: Path) -> dict[str, Any]:
    """``model`` as :func:`save_trainer` left it (from :func:`read_trainer`'s ``payload``), and the
    run log cut back to the runs the checkpoint counts; returns the counters."""
    model.policy.load_state_dict(payload["policy"])
    model.policy.optimizer.load_state_dict(payload["optimizer"])
    model.num_timesteps = int(payload["num_timesteps"])
    state = dict(payload["state"])
    lines = log.read_text().splitlines() if log.is_file() else []
    log.write_text("".join(f"{line}\n" for line in lines[: state["episodes"]]))
    return state
