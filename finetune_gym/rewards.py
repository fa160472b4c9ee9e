"""What a step is worth: the rewards an environment can give.

- ``"batch"`` (the paper's): accuracy of the updated model on the batch it was just trained on
  (one extra forward, in eval mode). Most of its value is how far training has come, not what
  the action did: within an episode it climbs from chance to near 1 whatever the agent chooses,
  so a critic learns the climb and the advantage left for the actor is mostly noise.
- ``"next_batch"``: accuracy of the updated model on the next batch, from the training forward
  the step runs anyway (no extra cost; a batch not yet trained on this epoch). The same caveat.
- ``"loss_improvement"``: how much lower the next batch's loss is than the running mean of
  recent training losses, relative to that mean, in [-1, 1]. The running mean follows training
  progress, so what is left depends on whether this step's rates did better than the trend.

A step whose update was skipped (non-finite loss) is worth 0.
"""

from __future__ import annotations

import numpy as np

from .arguments import check_choice
from .training import TrainingForward

REWARDS = ("batch", "next_batch", "loss_improvement")


def check_reward(reward: str) -> str:
    return check_choice("reward", reward, REWARDS)


def step_reward(
    mode: str,
    skipped: bool,
    trained: TrainingForward,
    trained_correct_after: float,
    nxt: TrainingForward,
    loss_mean_before: float,
) -> float:
    """The reward of a step that trained on ``trained`` (``trained_correct_after``: how many of it
    the updated model gets right, for ``"batch"``) and forwarded ``nxt``."""
    if skipped:
        return 0.0
    if mode == "batch":
        return trained_correct_after / len(trained.labels)
    if mode == "next_batch":
        return nxt.correct / len(nxt.labels)
    improvement = (loss_mean_before - nxt.loss_value) / loss_mean_before if loss_mean_before > 0 else 0.0
    return float(np.clip(np.nan_to_num(improvement, nan=-1.0), -1.0, 1.0))
