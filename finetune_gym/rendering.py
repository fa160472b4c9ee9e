"""What ``render()`` shows: the last step's per-layer learning rates, batch accuracy and loss.

Fine-tuning has no scene to draw, but tools render by default (``rl_zoo3.enjoy`` without
``--no-render`` asks for ``"human"``, SB3's ``make_vec_env`` for ``"rgb_array"``), so each mode
shows what a person watching a run wants: ``"ansi"`` one line of text, ``"human"`` that line on
stdout, ``"rgb_array"`` one bar per layer (height: the rate's step on the action grid) over a
strip whose length is the batch accuracy. Everything comes from the step's ``info``, so rendering
costs no forward pass and does not touch the model or any random state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RENDER_MODES = ["human", "ansi", "rgb_array"]
RENDER_FPS = 4  # a video of the steps (RecordVideo): a few steps a second stay readable
HEIGHT, BAR, GAP, STRIP = 96, 8, 2, 8  # pixels: image height, bar width, gap, accuracy strip
BACKGROUND, BAR_COLOUR, STRIP_COLOUR = (255, 255, 255), (31, 119, 180), (44, 160, 44)


def check_render_mode(render_mode: str | None, owner: str) -> str | None:
    """``render_mode`` if it is None or one of :data:`RENDER_MODES`; a clear error otherwise."""
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(
            f"render_mode={render_mode!r}: {owner} renders {', '.join(map(repr, RENDER_MODES))} or None "
            "(the last step's learning rate per layer, batch accuracy and loss)"
        )
    return render_mode


@dataclass
class Frame:
    """What the last step showed (before the first step: the layers, and nothing yet)."""

    layer_names: Sequence[str]
    grid: np.ndarray  # the action grid's rates: a bar's height is its rate's step on it
    epoch: int = 0
    step: int = 0
    learning_rates: np.ndarray | None = None
    batch_accuracy: float | None = None
    loss: float | None = None

    def update(self, info: dict[str, Any]) -> None:
        self.epoch, self.step = int(info["epoch"]), int(info["step"]) + 1
        self.learning_rates = np.asarray(info["learning_rates"], dtype=np.float64)
        self.batch_accuracy, self.loss = float(info["batch_accuracy"]), float(info["loss"])

    def text(self) -> str:
        if self.learning_rates is None:
            return f"reset: {len(self.layer_names)} layers, no step yet"
        rates = " ".join(
            f"{name}={lr:.2g}" for name, lr in zip(self.layer_names, self.learning_rates, strict=True)
        )
        return (
            f"epoch {self.epoch} step {self.step}: batch accuracy {self.batch_accuracy:.3f}, "
            f"loss {self.loss:.4f}; lr {rates}"
        )

    def image(self) -> np.ndarray:
        n = len(self.layer_names)
        width = GAP + n * (BAR + GAP)
        image = np.empty((HEIGHT + STRIP, width, 3), np.uint8)
        image[:] = BACKGROUND
        if self.learning_rates is None:
            return image
        grid = np.sort(self.grid)
        steps = np.linspace(0.0, 1.0, len(grid)) if len(grid) > 1 else np.ones(1)
        for i, lr in enumerate(self.learning_rates):
            # The rate's position on the grid, linear or log alike (a schedule's factor lands
            # between steps; np.interp clips outside the grid).
            height = int(round(HEIGHT * float(np.interp(lr, grid, steps))))
            left = GAP + i * (BAR + GAP)
            image[HEIGHT - height : HEIGHT, left : left + BAR] = BAR_COLOUR
        accuracy = min(max(self.batch_accuracy or 0.0, 0.0), 1.0)
        image[HEIGHT + 2 : HEIGHT + STRIP - 1, : int(round(width * accuracy))] = STRIP_COLOUR
        return image

    def render(self, mode: str | None) -> str | np.ndarray | None:
        if mode == "ansi":
            return self.text()
        if mode == "rgb_array":
            return self.image()
        if mode == "human":
            print(self.text(), flush=True)
        return None


class Renderer:
    """An environment's rendering: the last step's frame, kept only when a mode is set (without one
    a step does no rendering work); in ``"human"`` mode each step prints itself, as Gymnasium's
    convention is, and :meth:`render` returns None."""

    def __init__(self, mode: str | None, layer_names: Sequence[str], grid: np.ndarray) -> None:
        self.mode, self._layer_names, self._grid = mode, layer_names, grid
        self.frame = Frame(layer_names, grid)

    def new_episode(self) -> None:
        if self.mode is not None:
            self.frame = Frame(self._layer_names, self._grid)
            self._show()

    def step(self, info: dict[str, Any]) -> None:
        if self.mode is not None:
            self.frame.update(info)
            self._show()

    def render(self) -> str | np.ndarray | None:
        return None if self.mode == "human" else self.frame.render(self.mode)

    def _show(self) -> None:
        if self.mode == "human":
            self.frame.render("human")
