"""What a checkpoint holds of a :class:`~finetune_gym.env.FineTuneEnv`, and how it is put back.

An episode continues bit for bit after a restore (a run killed mid-epoch resumes to the same
weights), so the list of what is saved lives in one place, versioned: the target and source
weights, the optimizer's state, the data order and augmentation RNGs, the counters, the signals
and statistics behind the observation extras, and the pending batch's augmented inputs (its
forward is recomputed on restore instead of storing its graph). A base class of the environment
rather than functions over it: the restore re-runs that forward through the environment's own
hooks and BatchNorm guard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import training
from .storage import cpu_copy
from .training import frozen_buffers

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

    from .layer_signals import LayerStatistics
    from .observation import TrainingSignals
    from .stream import TrainingStream
    from .training import BatchNormGuard, TrainingForward


class EnvState:
    """``get_state``/``set_state`` for checkpoints, and pickling that keeps the pending gradients."""

    # Provided by the environment.
    model: nn.Module
    source_state_dict: Callable[[], dict[str, torch.Tensor]]
    load_source_state_dict: Callable[[dict[str, torch.Tensor]], None]
    optimizer: torch.optim.Optimizer | None
    stream: TrainingStream
    signals: TrainingSignals
    statistics: LayerStatistics
    layer_names: list[str]
    train_indices: Any
    device: torch.device
    _pending: TrainingForward | None
    _guard: BatchNormGuard
    _needs_reset: bool
    _noise_seed: int
    _make_optimizer: Callable[[], torch.optim.Optimizer]
    _forward: Callable[[torch.Tensor, torch.Tensor], TrainingForward]

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue this episode exactly, on CPU tensors (for checkpoints).

        Target and source weights, Adam's state, data order and augmentation RNG
        states, counters, the epoch's batches and the pending batch (its augmented
        inputs: the forward is recomputed on restore instead of storing its graph).
        """
        pending = self._pending
        return {
            "version": 2,
            "layer_names": list(self.layer_names),
            "n_train": len(self.train_indices),
            "model": cpu_copy(self.model.state_dict()),
            "source": self.source_state_dict(),
            "optimizer": None if self.optimizer is None else cpu_copy(self.optimizer.state_dict()),
            "stream": self.stream.get_state(),
            "counters": {k: getattr(self, k) for k in ("_epoch", "_step", "_epoch_correct", "_epoch_seen")},
            "signals": self.signals.get_state(),
            "statistics": self.statistics.get_state() if self.statistics.active else None,
            "pending": None if pending is None else pending.get_state(),
            "buffers_before": cpu_copy(self._guard.saved),
            "needs_reset": self._needs_reset,
            "noise_seed": self._noise_seed,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`get_state` of an environment built with the same arguments."""
        if state.get("version") != 2:
            raise ValueError(f"unsupported environment state version {state.get('version')!r}")
        if state["layer_names"] != self.layer_names or state["n_train"] != len(self.train_indices):
            raise ValueError("the saved state comes from an environment with other layers or training data")
        self.model.load_state_dict(state["model"])
        self.load_source_state_dict(state["source"])
        self.optimizer = self._make_optimizer()
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.stream.set_state(state["stream"])
        for key, value in state["counters"].items():
            setattr(self, key, value)
        self.signals.set_state(state["signals"])
        if self.statistics.active:
            if state.get("statistics") is None:
                raise ValueError(
                    "the saved state has no update statistics, which this environment's obs_extras need: "
                    "it was saved without them (resume with the run's own obs_extras)"
                )
            self.statistics.set_state(state["statistics"])
        self._needs_reset = state["needs_reset"]
        self._noise_seed = state.get("noise_seed", 0)
        self._pending = None
        self.model.zero_grad(set_to_none=True)
        if state["pending"] is not None:
            saved = state["pending"]
            # The saved weights already include this forward's BatchNorm update: freeze buffers.
            with frozen_buffers(self.model):
                self._pending = self._forward(
                    saved["inputs"].to(self.device), saved["labels"].to(self.device)
                )
            training.backward(self._pending)
            self._pending.loss_value, self._pending.correct = saved["loss_value"], saved["correct"]
        for saved, value in zip(self._guard.saved, state["buffers_before"], strict=True):
            saved.copy_(value)

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a parameter drops its gradient: keep the pending batch's, so a pickled or
        # deep-copied environment continues exactly (vector envs, checkpointing tools).
        return {**self.__dict__, "_grads": [p.grad for p in self.model.parameters()]}

    def __setstate__(self, state: dict[str, Any]) -> None:
        grads = state.pop("_grads")
        self.__dict__.update(state)
        for parameter, grad in zip(self.model.parameters(), grads, strict=True):
            parameter.grad = grad
