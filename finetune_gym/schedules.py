"""A schedule over the episode that scales every rate the action selects.

``constant`` (the paper's): the action's rates as they are. ``cosine``: multiplied by
``(1 + cos(pi * t)) / 2`` over the episode's progress ``t`` (from 1 to 0), after an optional
linear warm-up over the first ``warmup`` fraction of the episode. A uniform action under a
cosine schedule is a tuned-cosine baseline; relative actions (``lr_scale="relative"``) make
it the base a policy modulates.
"""

from __future__ import annotations

import math

from .arguments import check_choice

SCHEDULES = ("constant", "cosine")


def check_schedule(schedule: str, warmup: float) -> None:
    check_choice("schedule", schedule, SCHEDULES)
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be a fraction of the episode in [0, 1), got {warmup}")


def schedule_factor(schedule: str, warmup: float, step: int, total_steps: int) -> float:
    """The factor for step ``step`` (0-based) of ``total_steps``."""
    if schedule == "constant":
        return 1.0
    warmup_steps = int(round(warmup * total_steps))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / span))
