"""A schedule over the episode that scales every rate the action selects.

``constant`` (the paper's): the action's rates as they are. ``cosine``: multiplied by
``(1 + cos(pi * t)) / 2`` over the episode's progress ``t`` (from 1 to 0), after an optional
linear warm-up over the first ``warmup`` fraction of the episode. ``warmdown``: constant (after
the same optional warm-up), then linear to 0 over the last ``cooldown`` fraction of the episode
(the "warmup-stable-decay" profile; it ends as low as the cosine but keeps the peak rate for
longer). A uniform action under a cosine schedule is a tuned-cosine baseline; relative actions
(``lr_scale="relative"``) make it the base a policy modulates.
"""

from __future__ import annotations

import math

from .arguments import check_choice

SCHEDULES = ("constant", "cosine", "warmdown")


def check_schedule(schedule: str, warmup: float, cooldown: float = 0.2) -> None:
    check_choice("schedule", schedule, SCHEDULES)
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be a fraction of the episode in [0, 1), got {warmup}")
    if not 0.0 < cooldown <= 1.0:
        raise ValueError(f"cooldown must be a fraction of the episode in (0, 1], got {cooldown}")
    if warmup + cooldown > 1.0 and schedule == "warmdown":
        raise ValueError(
            f"warmup ({warmup}) and cooldown ({cooldown}) together exceed the episode: lower one of them"
        )


def schedule_factor(
    schedule: str, warmup: float, step: int, total_steps: int, cooldown: float = 0.2
) -> float:
    """The factor for step ``step`` (0-based) of ``total_steps``."""
    if schedule == "constant":
        return 1.0
    warmup_steps = int(round(warmup * total_steps))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "warmdown":
        cooldown_steps = max(1, int(round(cooldown * total_steps)))
        left = total_steps - step  # steps left including this one: the last step's factor is 1/n
        return min(1.0, left / (cooldown_steps + 1))
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / span))
