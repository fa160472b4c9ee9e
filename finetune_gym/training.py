"""One network fine-tuned a batch at a time: the pieces the environment's step and a plain
fine-tuning loop share, so that the two do the same work per batch.

The training forward keeps its loss and correct count on the device (read back later, in
one transfer); its backward can run at once, since gradients do not depend on the learning
rates the agent will choose; the optimizer has one Adam param group per layer, so an action
sets each layer's rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import HostCopy, autocast


@dataclass
class TrainingForward:
    """A training-mode forward of one batch: what the next update trains on."""

    inputs: torch.Tensor
    labels: torch.Tensor
    loss: torch.Tensor | None  # with its graph until :func:`backward`; None without one
    loss_tensor: torch.Tensor  # detached, on the device until read back
    correct_tensor: torch.Tensor  # on the device until read back
    loss_value: float = math.nan
    correct: int = 0

    def get_state(self) -> dict[str, Any]:
        """The batch and what was read back of it: enough to recompute the forward (its graph is
        not saved)."""
        return {
            "inputs": self.inputs.cpu(),
            "labels": self.labels.cpu(),
            "loss_value": self.loss_value,
            "correct": self.correct,
        }


def train_forward(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, amp_dtype: torch.dtype | None
) -> TrainingForward:
    """Forward ``inputs`` with the model in its current mode; cross-entropy in fp32."""
    with autocast(inputs.device, amp_dtype):
        logits = model(inputs)
    loss = F.cross_entropy(logits.float(), labels)
    return TrainingForward(
        inputs,
        labels,
        loss if loss.requires_grad else None,
        loss.detach(),
        (logits.argmax(1) == labels).sum(),
    )


def backward(forward: TrainingForward) -> None:
    """Gradients of ``forward``'s loss (queued on the device on CUDA); its graph is released."""
    if forward.loss is not None:
        forward.loss.backward()
        forward.loss = None


def read_back(
    forward: TrainingForward,
    observation: torch.Tensor,
    reward_correct: torch.Tensor | None,
    copy: HostCopy,
) -> tuple[np.ndarray, float]:
    """Backpropagate ``forward`` and read what a step needs in one device-to-host transfer.

    The order lets the device run the backward while the host goes on: the copy of the
    observation, the reward's correct count and ``forward``'s loss and correct count is started,
    the backward queued, then the copy waited for. Stores the loss and correct count on
    ``forward``; returns the observation (float32) and the reward's correct count.
    """
    zero = torch.zeros((), device=observation.device)
    scalars = torch.stack(
        [
            zero if reward_correct is None else reward_correct.float(),
            forward.loss_tensor.float(),
            forward.correct_tensor.float(),
        ]
    )
    staged = copy.start(torch.cat([observation, scalars]))
    backward(forward)
    packed = copy.wait(staged).numpy()
    n = len(observation)
    forward.loss_value, forward.correct = float(packed[n + 1]), int(packed[n + 2])
    return packed[:n].astype(np.float32), float(packed[n])


def gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the gradients ``optimizer`` would apply are all finite (their total norm too).

    A finite loss can backpropagate to inf/NaN gradients (an overflow at a large learning rate);
    one step on them ruins the weights and the optimizer's state. One fused norm over all
    gradients (``get_total_norm``, as gradient clipping computes it) and one read back.
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def batch_correct(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, amp_dtype: torch.dtype | None
) -> torch.Tensor:
    """How many of ``inputs`` the model classifies right in eval mode (a device scalar)."""
    model.eval()
    with torch.inference_mode(), autocast(inputs.device, amp_dtype):
        correct = (model(inputs).argmax(1) == labels).sum()
    model.train()
    return correct


@contextmanager
def frozen_buffers(model: nn.Module) -> Iterator[None]:
    """Undo what the forwards inside the block do to BatchNorm running statistics.

    The restore writes through ``.data``: a forward with gradients saved the buffers in its
    graph, and an in-place write that autograd sees would make that graph's backward fail.
    The backward of a training-mode BatchNorm uses the batch statistics it saved, not the
    running ones, so the gradients are unaffected.
    """
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        yield
    finally:
        for buffer, value in zip(model.buffers(), saved, strict=True):
            buffer.data.copy_(value)


class BatchNormGuard:
    """BatchNorm statistics from before the last training forward, restored when that forward's loss
    is not finite: the update is skipped, and the skip leaves no trace in the network."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.saved = [b.detach().clone() for b in model.buffers()]

    def snapshot(self) -> None:
        if self.saved:  # one fused copy (a loop of small copies would be one kernel each)
            torch._foreach_copy_(self.saved, [b.data for b in self.model.buffers()])

    def restore(self) -> None:
        if self.saved:
            torch._foreach_copy_([b.data for b in self.model.buffers()], self.saved)


def has_stochastic_layers(model: nn.Module) -> bool:
    """Whether the network draws random numbers when training: dropout or stochastic depth with a
    rate above 0 (randomness of a user's own forward code cannot be seen from here)."""
    from torchvision.ops import StochasticDepth

    return any(
        (isinstance(m, nn.modules.dropout._DropoutNd) or isinstance(m, StochasticDepth)) and m.p > 0
        for m in model.modules()
    )


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Inside the block torch's global generators (the CPU's, and ``device``'s if CUDA) start from
    ``seed``; after it they are as before, so the caller's randomness is untouched. ``None``: no-op
    (the network has no randomness of its own, and a CUDA generator's save costs a sync)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
