"""A Tune stopper that ends an experiment in which no result has come for a while.

Why: Tune's restore of a synchronous PBT experiment can leave every member PAUSED with nothing
ever scheduled again (seen here twice, once in the test that kills a population; a pull request
to Ray describes the cause, ray-project/ray#48616, closed without being merged). Nothing in Tune
notices: ``fit()`` would wait forever. With this stopper it returns, and the caller
(``benchmarks/pbt.py``) starts that population over. Its own module: a restored experiment
unpickles it by reference.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Stopper


class StallStopper(Stopper):
    """Stops every trial once ``seconds`` pass without a result (counted from the first poll)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self._last: float | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self._last = time.monotonic()
        return False

    def stop_all(self) -> bool:
        now = time.monotonic()
        if self._last is None:
            self._last = now
        return now - self._last > self.seconds

    def __getstate__(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "_last": None}  # a clock from another process means nothing
