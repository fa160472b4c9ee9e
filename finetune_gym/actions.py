"""From the agent's discrete action to one learning rate per layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from gymnasium import spaces

from .arguments import check_choice

LrScale = Literal["linear", "log", "relative", "residual"]
LR_SCALES = ("linear", "log", "relative", "residual")
RELATIVE_RANGE = 8.0  # relative steps multiply the base rate by 1/8 ... 8


def learning_rate_steps(
    n_steps: int, lr_min: float, lr_max: float, scale: str, base_lr: float | None = None
) -> np.ndarray:
    """The ``n_steps`` learning rates an action index selects, ascending.

    - ``"linear"`` (the paper's): ``lr_min + k (lr_max - lr_min) / (n_steps - 1)``.
    - ``"log"``: step 0 is learning rate 0 (freeze the layer) and steps 1.. are
      log-spaced from ``lr_max / 1000`` to ``lr_max``; linear steps spend most of
      the range on rates above 1e-3, where fine-tuning usually diverges.
    - ``"relative"``: ``base_lr`` times multipliers log-spaced from 1/8 to 8, the middle one 1
      (``n_steps`` odd): a policy that knows nothing reproduces the base method, and random
      actions are random multipliers around it.
    - ``"residual"``: ``base_lr`` times 0 (freeze) or a power of two around 1: ``n_steps`` 6 gives
      {0, 1/4, 1/2, 1, 2, 4} (``n_steps`` even, at least 4). Powers of two are exact, so the action
      "1 everywhere" is the base run bit for bit; with a per-layer parameter-free base
      (``base_lr`` 1) each multiplier scales the layer's own estimated step.
    """
    check_choice("lr_scale", scale, LR_SCALES)
    if n_steps < 2:
        raise ValueError(f"n_lr_steps must be at least 2, got {n_steps}")
    if scale == "relative":
        if base_lr is None or not base_lr > 0:
            raise ValueError(
                f"lr_scale='relative' needs base_lr > 0, the rate a multiplier of 1 gives; got {base_lr}"
            )
        if n_steps % 2 == 0:
            raise ValueError(
                f"lr_scale='relative' needs an odd n_lr_steps, so that a multiplier of 1 is a step; got {n_steps}"
            )
        return base_lr * np.geomspace(1 / RELATIVE_RANGE, RELATIVE_RANGE, n_steps)
    if scale == "residual":
        if base_lr is None or not base_lr > 0:
            raise ValueError(
                f"lr_scale='residual' needs base_lr > 0, the rate a multiplier of 1 gives (1.0 for a "
                f"parameter-free optimizer); got {base_lr}"
            )
        if n_steps % 2 or n_steps < 4:
            raise ValueError(
                "lr_scale='residual' needs an even n_lr_steps of at least 4 (0, then powers of two "
                f"around 1: 6 gives 0, 1/4, 1/2, 1, 2, 4); got {n_steps}"
            )
        half = (n_steps - 2) // 2
        return np.concatenate([[0.0], base_lr * 2.0 ** np.arange(-half, half + 1, dtype=np.float64)])
    if not (0.0 <= lr_min < lr_max):
        raise ValueError(f"need 0 <= lr_min < lr_max, got lr_min={lr_min}, lr_max={lr_max}")
    if scale == "linear":
        return np.linspace(lr_min, lr_max, n_steps)
    return np.concatenate([[0.0], np.geomspace(lr_max / 1000.0, lr_max, n_steps - 1)])  # "log"


def lr_grid(
    n_steps: int,
    lr_min: float,
    lr_max: float,
    scale: str,
    rates: Sequence[float] | None = None,
    base_lr: float | None = None,
) -> np.ndarray:
    """The action's rate steps: ``rates`` when given (ascending, >= 0: baselines use it to apply
    exact rates such as 3e-4 that the paper's grid does not contain), else
    :func:`learning_rate_steps`. Every check of the grid's arguments is here: the grid's are
    checked even when ``rates`` replaces it, so a misspelt ``lr_scale`` is never ignored."""
    grid = learning_rate_steps(n_steps, lr_min, lr_max, scale, base_lr)
    if rates is None:
        return grid
    array = np.asarray(rates, dtype=np.float64)
    if array.ndim != 1 or len(array) < 2 or np.any(array < 0) or np.any(np.diff(array) <= 0):
        raise ValueError(f"lr_steps must be at least 2 ascending rates >= 0, got {list(rates)}")
    return array


class LearningRateMap:
    """Validates actions of ``MultiDiscrete([n_steps] * n_layers)`` and maps them to rates."""

    def __init__(
        self,
        n_layers: int,
        n_steps: int = 20,
        lr_min: float = 0.0,
        lr_max: float = 0.01,
        scale: str = "linear",
        rates: Sequence[float] | None = None,
        base_lr: float | None = None,
    ) -> None:
        """``rates``, when given, is the explicit list of steps and replaces the grid (see
        :func:`lr_grid`)."""
        self.rates = lr_grid(n_steps, lr_min, lr_max, scale, rates, base_lr)
        self.space = spaces.MultiDiscrete([len(self.rates)] * n_layers)

    def __call__(self, action: object) -> np.ndarray:
        """Learning rate of each layer for ``action``; ValueError for anything outside the space."""
        array = np.asarray(action)
        n_layers, n_steps = len(self.space.nvec), len(self.rates)
        if array.shape != (n_layers,):
            raise ValueError(
                f"action must have shape ({n_layers},), one index per layer; got shape {array.shape}"
            )
        if not np.issubdtype(array.dtype, np.integer):
            if not (np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0)):
                raise ValueError(f"action must hold integer step indices, got dtype {array.dtype}")
            array = array.astype(np.int64)
        if array.min() < 0 or array.max() >= n_steps:
            raise ValueError(
                f"action indices must be in [0, {n_steps - 1}], got min {array.min()}, max {array.max()}"
            )
        return self.rates[array]

    def index_of(self, lr: float) -> int:
        """The step whose learning rate is nearest ``lr`` (for baselines given as a rate)."""
        return int(np.argmin(np.abs(self.rates - lr)))
