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

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .arguments import check_choice
from .training import TrainingForward, batch_correct


@dataclass(frozen=True)
class Reward:
    """One reward: its name, the range its values lie in, and whether it needs the extra forward
    of the updated model on the batch just trained on (the paper's ``"batch"`` does; the others
    read the forward of the next batch that every step runs anyway). The shape of CompilerGym's
    ``Reward`` spaces: what a reward is and what it costs live together."""

    name: str
    range: tuple[float, float]
    extra_forward: bool

    def batch_forward(
        self, model: nn.Module, trained: TrainingForward, skipped: bool, amp_dtype: torch.dtype | None
    ) -> torch.Tensor | None:
        """How many of the trained batch the updated model gets right (a device scalar, read back
        with the step's one transfer), for a reward that needs it; None otherwise."""
        if not self.extra_forward or skipped:
            return None
        return batch_correct(model, trained.inputs, trained.labels, amp_dtype)

    def __call__(
        self,
        skipped: bool,
        trained: TrainingForward,
        trained_correct_after: float,
        nxt: TrainingForward,
        loss_mean_before: float,
    ) -> float:
        """The reward of a step that trained on ``trained`` (``trained_correct_after``: what
        :meth:`batch_forward` counted) and forwarded ``nxt``."""
        if skipped:
            return 0.0
        if self.name == "batch":
            return trained_correct_after / len(trained.labels)
        if self.name == "next_batch":
            return nxt.correct / len(nxt.labels)
        improvement = (loss_mean_before - nxt.loss_value) / loss_mean_before if loss_mean_before > 0 else 0.0
        return float(np.clip(np.nan_to_num(improvement, nan=-1.0), -1.0, 1.0))


REWARD_SPECS: dict[str, Reward] = {
    reward.name: reward
    for reward in (
        Reward("batch", (0.0, 1.0), extra_forward=True),
        Reward("next_batch", (0.0, 1.0), extra_forward=False),
        Reward("loss_improvement", (-1.0, 1.0), extra_forward=False),
    )
}
REWARDS = tuple(REWARD_SPECS)


def check_reward(reward: str) -> str:
    return check_choice("reward", reward, REWARDS)


def make_reward(reward: str) -> Reward:
    """The reward named ``reward`` (a clear error naming the choices otherwise)."""
    return REWARD_SPECS[check_reward(reward)]
