"""Where a run's time goes: the whole run, its training loop, agent updates, checkpoints.

A resumed run starts from the totals its checkpoint saved, so its timing covers the
whole run (work redone after an interruption counts once). The environment's own time
(steps, resets, the final test evaluation) is measured by :class:`agents.recording.RunRecorder`.
"""

from __future__ import annotations

import time
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback


class Timer:
    """Clocks of one run, continued across resumes through :meth:`get_state`/:meth:`resume`."""

    def __init__(self) -> None:
        self._started = time.perf_counter()  # this process's part of the run
        self._wall_before = self._loop_before = 0.0
        self._loop_started: float | None = None
        self.updates_s = self.checkpoints_s = 0.0

    def resume(self, state: dict[str, float]) -> None:
        """Continue the totals of the processes before this one."""
        self._wall_before, self._loop_before = state["wall_s"], state["loop_s"]
        self.updates_s, self.checkpoints_s = state["updates_s"], state["checkpoints_s"]

    def wall_s(self) -> float:
        """The whole run's wall time so far."""
        return self._wall_before + time.perf_counter() - self._started

    def start_loop(self) -> None:
        self._loop_started = time.perf_counter()

    def loop_s(self) -> float:
        """The training loop's time: this process's since :meth:`start_loop`, plus earlier processes'."""
        running = 0.0 if self._loop_started is None else time.perf_counter() - self._loop_started
        return self._loop_before + running

    def get_state(self) -> dict[str, float]:
        # Saved before the checkpoint being written adds its own time: that much is left out.
        return {
            "wall_s": self.wall_s(),
            "loop_s": self.loop_s(),
            "updates_s": self.updates_s,
            "checkpoints_s": self.checkpoints_s,
        }

    def breakdown(self, env_s: float, test_s: float, resumed: bool) -> dict[str, Any]:
        """``results.json``'s ``timing``: the loop split into the environment (steps, resets, the
        final test evaluation), agent updates, checkpoints, and what remains: agent acting."""
        loop_s = self.loop_s()
        return {
            "loop_s": loop_s,
            "env_steps_s": env_s,  # steps and resets (EMA update, first forward)
            "agent_updates_s": self.updates_s,
            "checkpoints_s": self.checkpoints_s,
            "test_evaluation_s": test_s,
            # Policy inference plus the vectorised-env wrappers (VecNormalize, Monitor) and SB3's bookkeeping.
            "agent_acting_s": loop_s - env_s - test_s - self.updates_s - self.checkpoints_s,
            "resumed": resumed,
        }


class AgentUpdates(BaseCallback):
    """Times each agent update: from the end of a rollout to the start of the next, or the end."""

    def __init__(self, timer: Timer) -> None:
        super().__init__()
        self.timer, self._rollout_end = timer, None

    def _close(self) -> None:
        if self._rollout_end is not None:
            self.timer.updates_s += time.perf_counter() - self._rollout_end
            self._rollout_end = None

    def _on_rollout_end(self) -> None:
        self._rollout_end = time.perf_counter()

    def _on_rollout_start(self) -> None:
        self._close()

    def _on_training_end(self) -> None:
        self._close()

    def _on_step(self) -> bool:
        return True
