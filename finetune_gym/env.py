"""``FineTuneEnv``: fine-tuning a pretrained CNN, one batch per step, learning rates as actions.

Step semantics (one step = one batch). The forward pass of the target model on
batch ``b_t`` produced both the observation ``s_t`` and the loss ``L_t``, and
``L_t`` was backpropagated right away: the gradients do not depend on the
action, so on CUDA the backward runs on the device while the agent chooses
``a_t`` (the agent's time hides behind it). ``step(a_t)`` sets each layer's
learning rate from ``a_t``, takes one Adam step, computes the reward, then runs
the training forward and backward on ``b_{t+1}``, which yield ``s_{t+1}`` and
the gradients of ``L_{t+1}``. Every batch is forwarded and backpropagated once,
as in plain fine-tuning.

Rewards: ``"batch"`` (the paper's) is the accuracy of the updated model on
``b_t`` (one extra forward, in eval mode, under ``inference_mode``);
``"next_batch"`` is the accuracy of the updated model on ``b_{t+1}``, read from
the training forward the step runs anyway: no extra cost, and a batch the model
has not been trained on yet this epoch.

Everything a step reads back from the device (observation, reward, next loss,
next batch's correct count) comes in one transfer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from .actions import LR_SCALES, LearningRateMap
from .augment import BatchAugment, resolve_augment
from .datasets import load_dataset, sample_per_class, split_validation
from .device import autocast, place_cache, resolve_channels_last, resolve_device, resolve_precision
from .models import build_backbone
from .observation import OBS_LIMIT, ActivationPooler

REWARDS = ("batch", "next_batch")


@dataclass
class _Forward:
    """A training-mode forward of one batch: what the next ``step`` trains on."""

    inputs: torch.Tensor
    labels: torch.Tensor
    loss: torch.Tensor | None  # with its graph until :meth:`FineTuneEnv._backward`; None without one
    loss_tensor: torch.Tensor  # detached, on the device until :meth:`FineTuneEnv._collect`
    correct_tensor: torch.Tensor  # on the device until :meth:`FineTuneEnv._collect`
    loss_value: float = math.nan
    correct: int = 0


def _cpu_copy(obj: Any) -> Any:
    """Deep copy with every tensor cloned to the CPU (a state dict must not alias live tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


class FineTuneEnv(gym.Env[np.ndarray, np.ndarray]):
    """Layer-wise learning-rate control of fine-tuning, as in RL-Tune (Mahmud et al.).

    Observation: see :mod:`finetune_gym.observation` (``n_layers * obs_features``
    float32 values). Action: ``MultiDiscrete([n_lr_steps] * n_layers)``, mapped
    by :attr:`lr_map`. An episode is ``epochs_per_episode`` passes over the
    sampled training set; ``reset`` restores the target from the source weights.
    """

    metadata = {"render_modes": []}

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """Constructor defaults: the paper's ResNet-50 / FGVC-Aircraft setting."""
        return {
            "model": "resnet50",
            "weights": "imagenet",
            "dataset": "aircraft",
            "data_root": "data",
            "download": False,
            "dataset_kwargs": None,
            "sampling_rate": 1.0,
            "val_fraction": 0.1,
            "seed": 0,
            "batch_size": 32,
            "image_size": 224,
            "epochs_per_episode": 10,
            "n_lr_steps": 20,
            "lr_max": 0.01,
            "lr_min": 0.0,
            "lr_scale": "linear",
            "lr_steps": None,
            "granularity": "block",
            "obs_features": 8,
            "reward": "batch",
            "augment": "auto",
            "device": "auto",
            "precision": "auto",
            "channels_last": None,
            "eval_batch_size": 256,
            "adam_kwargs": None,
        }

    def __init__(
        self,
        model: str | nn.Module = "resnet50",
        weights: str | Path | None = "imagenet",
        dataset: str = "aircraft",
        data_root: str | Path | None = "data",
        download: bool = False,
        dataset_kwargs: dict[str, Any] | None = None,
        sampling_rate: float = 1.0,
        val_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 32,
        image_size: int = 224,
        epochs_per_episode: int = 10,
        n_lr_steps: int = 20,
        lr_max: float = 0.01,
        lr_min: float = 0.0,
        lr_scale: str = "linear",
        lr_steps: list[float] | None = None,
        granularity: str = "block",
        obs_features: int = 8,
        reward: str = "batch",
        augment: str = "auto",
        device: str | torch.device = "auto",
        precision: str = "auto",
        channels_last: bool | None = None,
        eval_batch_size: int = 256,
        adam_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("batch_size", batch_size),
            ("image_size", image_size),
            ("epochs_per_episode", epochs_per_episode),
            ("eval_batch_size", eval_batch_size),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}: choose one of {', '.join(REWARDS)}")
        if lr_scale not in LR_SCALES:
            raise ValueError(f"unknown lr_scale {lr_scale!r}: choose one of {', '.join(LR_SCALES)}")
        self.config = {k: v for k, v in locals().items() if k in self.default_config()}
        self.reward_mode = reward
        self.batch_size, self.image_size = int(batch_size), int(image_size)
        self.epochs_per_episode, self.eval_batch_size = int(epochs_per_episode), int(eval_batch_size)
        self.adam_kwargs = dict(adam_kwargs or {})
        self.device = resolve_device(device)
        self.amp_dtype = resolve_precision(precision, self.device)
        self.channels_last = resolve_channels_last(channels_last, self.device)

        # Data: list, sample, split, decode what is used.
        self.dataset = load_dataset(dataset, data_root, download, **(dataset_kwargs or {}))
        rng = np.random.default_rng(seed)
        train = self.dataset.train
        sampled = sample_per_class(train.labels, train.groups, sampling_rate, rng)
        self.train_indices, self.val_indices = split_validation(
            sampled, train.labels, train.groups, val_fraction, rng
        )
        if len(self.train_indices) < 2:
            raise ValueError("the sampled training set has fewer than 2 images: raise sampling_rate")
        self.augment_mode = resolve_augment(augment, self.image_size)
        self.cache_size = (
            self.image_size if self.augment_mode != "resized_crop" else round(self.image_size * 8 / 7)
        )

        # Model: source weights, new head, layer cut.
        backbone = build_backbone(
            model, len(self.dataset.classes), weights=weights, granularity=granularity, seed=seed
        )
        if backbone.in_channels != self.dataset.channels:
            raise ValueError(
                f"model {model if isinstance(model, str) else type(model).__name__!r} takes "
                f"{backbone.in_channels}-channel images but dataset {dataset!r} has {self.dataset.channels}"
            )
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.model = backbone.model.to(self.device, memory_format=memory_format)
        self.layers = backbone.layers
        self.layer_names = backbone.layer_names
        self.n_layers = len(self.layers)
        # The source network is a hook-free copy: the EMA wrapper averages into it, reset copies from it.
        self.source_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.pooler = ActivationPooler([layer.probe for layer in self.layers], obs_features)
        self.augmenter = BatchAugment(
            self.augment_mode,
            self.image_size,
            backbone.mean,
            backbone.std,
            self.dataset.allow_flip,
            self.device,
            self.channels_last,
        )

        self._train_x = place_cache(train.decoder.decode(self.train_indices, self.cache_size), self.device)
        self._train_y = torch.as_tensor(train.labels[self.train_indices], device=self.device)
        self._eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if len(self.val_indices):
            self._eval_sets["val"] = (
                place_cache(train.decoder.decode(self.val_indices, self.cache_size), self.device),
                torch.as_tensor(train.labels[self.val_indices], device=self.device),
            )

        self.lr_map = LearningRateMap(self.n_layers, n_lr_steps, lr_min, lr_max, lr_scale, rates=lr_steps)
        self.action_space = self.lr_map.space
        self.observation_space = spaces.Box(
            -OBS_LIMIT, OBS_LIMIT, (self.n_layers * obs_features,), np.float32
        )

        self._order_generator = torch.Generator()
        self._augment_generator = torch.Generator(device=self.device)
        self._generators_seeded = False
        self._seed = int(seed)
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: _Forward | None = None
        self._host_buffer: torch.Tensor | None = None  # pinned, reused by every step's copy (CUDA)
        self._copied: torch.cuda.Event | None = None
        self._needs_reset = True
        self._batches: list[torch.Tensor] = []

    # ------------------------------------------------------------------ public API

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.train_indices)
        return math.ceil(n / self.batch_size) - (1 if n % self.batch_size == 1 else 0)

    @property
    def episode_steps(self) -> int:
        return self.steps_per_epoch * self.epochs_per_episode

    def action_to_learning_rates(self, action: object) -> np.ndarray:
        """The learning rate each layer gets for ``action`` (ValueError outside the action space)."""
        return self.lr_map(action)

    def evaluate(self, split: str = "val") -> float:
        """Top-1 accuracy of the current target model on ``"val"`` or ``"test"``.

        Eval mode, centre crop and no other augmentation, batched, no gradients.
        """
        images, labels = self._eval_set(split)
        was_training = self.model.training
        self.model.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            for start in range(0, len(labels), self.eval_batch_size):
                x = images[start : start + self.eval_batch_size].to(self.device, non_blocking=True)
                logits = self.model(self.augmenter.eval(x))
                correct += (logits.argmax(1) == labels[start : start + self.eval_batch_size]).sum()
        self.model.train(was_training)
        return correct.item() / len(labels)

    def fine_tuned_state_dict(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the target model's weights and buffers as they are now."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def source_state_dict(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the source weights that each episode starts from."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.source_model.state_dict().items()}

    def load_source_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the source weights (used by the next ``reset``)."""
        self.source_model.load_state_dict(state)

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue this episode exactly, on CPU tensors (for checkpoints).

        Target and source weights, Adam's state, data order and augmentation RNG
        states, counters, the epoch's batches and the pending batch (its augmented
        inputs: the forward is recomputed on restore instead of storing its graph).
        """
        pending = self._pending
        return {
            "version": 1,
            "layer_names": list(self.layer_names),
            "n_train": len(self.train_indices),
            "model": self.fine_tuned_state_dict(),
            "source": self.source_state_dict(),
            "optimizer": None if self.optimizer is None else _cpu_copy(self.optimizer.state_dict()),
            "order_generator": self._order_generator.get_state(),
            "augment_generator": self._augment_generator.get_state().cpu(),
            "generators_seeded": self._generators_seeded,
            "counters": {
                k: getattr(self, k, 0)
                for k in ("_epoch", "_step_in_epoch", "_step", "_epoch_correct", "_epoch_seen")
            },
            "batches": [b.cpu() for b in getattr(self, "_batches", [])],
            "pending": None
            if pending is None
            else {
                "inputs": pending.inputs.cpu(),
                "labels": pending.labels.cpu(),
                "loss_value": pending.loss_value,
                "correct": pending.correct,
            },
            "needs_reset": self._needs_reset,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`get_state` of an environment built with the same arguments."""
        if state.get("version") != 1:
            raise ValueError(f"unsupported environment state version {state.get('version')!r}")
        if state["layer_names"] != self.layer_names or state["n_train"] != len(self.train_indices):
            raise ValueError("the saved state comes from an environment with other layers or training data")
        self.model.load_state_dict(state["model"])
        self.load_source_state_dict(state["source"])
        self.optimizer = self._make_optimizer()
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self._order_generator.set_state(state["order_generator"])
        self._augment_generator.set_state(state["augment_generator"])
        self._generators_seeded = state["generators_seeded"]
        for key, value in state["counters"].items():
            setattr(self, key, value)
        self._batches = [b.to(self._train_x.device) for b in state["batches"]]
        self._needs_reset = state["needs_reset"]
        self._pending = None
        self.model.zero_grad(set_to_none=True)
        if state["pending"] is not None:
            saved = state["pending"]
            # The saved weights already include this forward's BatchNorm update: freeze buffers.
            with self._frozen_buffers():
                self._pending = self._forward(
                    saved["inputs"].to(self.device), saved["labels"].to(self.device)
                )
            self._backward(self._pending)
            self._pending.loss_value, self._pending.correct = saved["loss_value"], saved["correct"]

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._generators_seeded:
            base = self._seed if seed is None else int(seed)
            self._order_generator.manual_seed(base)
            self._augment_generator.manual_seed(base + 1)
            self._generators_seeded = True
        with torch.no_grad():
            for target, source in zip(
                self.model.state_dict().values(), self.source_model.state_dict().values(), strict=True
            ):
                target.copy_(source)
        self.model.train()
        self.model.zero_grad(set_to_none=True)  # an episode cut short leaves its last gradients
        self.optimizer = self._make_optimizer()
        self._epoch, self._step_in_epoch, self._step = 0, 0, 0
        self._epoch_correct, self._epoch_seen = 0, 0
        self._batches = self._epoch_batches()
        self._pending = self._train_forward(self._batches[0])
        observation, _ = self._observe(self._pending)
        self._needs_reset = False
        info = {
            "epoch": 0,
            "step": 0,
            "loss": self._pending.loss_value,
            "batch_accuracy": self._pending.correct / len(self._pending.labels),
        }
        return observation, info

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("the episode has ended (or never started): call reset() before step()")
        learning_rates = self.lr_map(action)
        pending = self._pending
        assert pending is not None and self.optimizer is not None
        skipped = not math.isfinite(pending.loss_value)
        if not skipped:  # the gradients of a non-finite loss are dropped unused
            for group, lr in zip(self.optimizer.param_groups, learning_rates, strict=True):
                group["lr"] = float(lr)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        reward_correct = None
        if self.reward_mode == "batch" and not skipped:
            reward_correct = self._eval_correct(pending.inputs, pending.labels)

        info: dict[str, Any] = {
            "learning_rates": learning_rates,
            "loss": pending.loss_value,
            "batch_accuracy": pending.correct / len(pending.labels),
            "batch_size": len(pending.labels),
            "epoch": self._epoch,
            "step": self._step,
            "step_in_epoch": self._step_in_epoch,
            "skipped_update": skipped,
        }
        self._epoch_correct += pending.correct
        self._epoch_seen += len(pending.labels)
        self._step += 1
        self._step_in_epoch += 1
        if self._step_in_epoch == len(self._batches):
            info["epoch_train_accuracy"] = self._epoch_correct / self._epoch_seen
            self._epoch += 1
            self._step_in_epoch, self._epoch_correct, self._epoch_seen = 0, 0, 0
            self._batches = self._epoch_batches()
        terminated = self._epoch == self.epochs_per_episode

        if terminated:
            # The episode's model is final: observe the next batch without training on it or
            # letting it move BatchNorm statistics.
            with torch.no_grad(), self._frozen_buffers():
                nxt = self._train_forward(self._batches[0])
        else:
            nxt = self._train_forward(self._batches[self._step_in_epoch])
        observation, reward_count = self._observe(nxt, reward_correct)
        self._pending = None if terminated else nxt

        if skipped:
            reward = 0.0
        elif self.reward_mode == "batch":
            reward = reward_count / len(pending.labels)
        else:
            reward = nxt.correct / len(nxt.labels)
        info["reward"] = reward
        if terminated:
            self._needs_reset = True
            info["episode_steps"] = self._step
            if "val" in self._eval_sets:
                info["val_accuracy"] = self.evaluate("val")
        return observation, reward, terminated, False, info

    def close(self) -> None:
        self._pending = None
        self._eval_sets.clear()

    # ------------------------------------------------------------------ internals

    def _make_optimizer(self) -> torch.optim.Optimizer:
        groups = [{"params": layer.parameters, "lr": 0.0, "name": layer.name} for layer in self.layers]
        kwargs = dict(self.adam_kwargs)
        if self.device.type == "cuda":
            kwargs.setdefault("fused", True)
        return torch.optim.Adam(groups, **kwargs)

    def _epoch_batches(self) -> list[torch.Tensor]:
        """Index batches for one pass, reshuffled; a lone leftover image waits for the next epoch
        (a batch of one breaks BatchNorm on 1x1 feature maps)."""
        n = len(self.train_indices)
        order = torch.randperm(n, generator=self._order_generator)
        if n % self.batch_size == 1:
            order = order[:-1]
        return list(order.to(self._train_x.device).split(self.batch_size))  # one copy per epoch

    def _train_forward(self, batch: torch.Tensor) -> _Forward:
        images = self._train_x[batch].to(self.device, non_blocking=True)
        labels = self._train_y[batch.to(self._train_y.device)]
        return self._forward(self.augmenter.train(images, self._augment_generator), labels)

    def _forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> _Forward:
        self.pooler.recording = True
        try:
            with autocast(self.device, self.amp_dtype):
                logits = self.model(inputs)
        finally:
            self.pooler.recording = False
        loss = F.cross_entropy(logits.float(), labels)
        return _Forward(
            inputs,
            labels,
            loss if loss.requires_grad else None,
            loss.detach(),
            (logits.argmax(1) == labels).sum(),
        )

    @staticmethod
    def _backward(forward: _Forward) -> None:
        """Gradients of ``forward``'s loss for the next update (queued on the device on CUDA).
        Called after :meth:`_stage`, so that the host's read of the observation does not wait
        for it."""
        if forward.loss is not None:
            forward.loss.backward()
            forward.loss = None

    def _eval_correct(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            correct = (self.model(inputs).argmax(1) == labels).sum()
        self.model.train()
        return correct

    def _observe(
        self, forward: _Forward, reward_correct: torch.Tensor | None = None
    ) -> tuple[np.ndarray, float]:
        """Read the step's values back and backpropagate ``forward``, in the order that lets the
        device run the backward while the host goes on: copy started, backward queued, then the
        wait for the copy. Returns (observation, reward's correct count)."""
        staged = self._stage(forward, reward_correct)
        self._backward(forward)
        return self._collect(forward, staged)

    def _stage(self, forward: _Forward, reward_correct: torch.Tensor | None = None) -> torch.Tensor:
        """Start the step's one device-to-host copy: the observation, the reward's correct count,
        and the loss and correct count of ``forward``. On CUDA the copy goes to a pinned buffer
        without blocking; :meth:`_collect` waits for it."""
        zero = torch.zeros((), device=self.device)
        scalars = torch.stack(
            [
                zero if reward_correct is None else reward_correct.float(),
                forward.loss_tensor.float(),
                forward.correct_tensor.float(),
            ]
        )
        packed = torch.cat([self.pooler.observation(), scalars])
        if self.device.type != "cuda":
            return packed
        if self._host_buffer is None or self._host_buffer.shape != packed.shape:
            self._host_buffer = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            self._copied = torch.cuda.Event()
        self._host_buffer.copy_(packed, non_blocking=True)
        self._copied.record()
        return self._host_buffer

    def _collect(self, forward: _Forward, staged: torch.Tensor) -> tuple[np.ndarray, float]:
        """Wait for :meth:`_stage`'s copy; store the loss and correct count on ``forward``.
        Returns (observation, reward's correct count)."""
        if self.device.type == "cuda":
            self._copied.synchronize()
        packed = staged.numpy()
        n = self.observation_space.shape[0]
        forward.loss_value = float(packed[n + 1])
        forward.correct = int(packed[n + 2])
        return packed[:n].astype(np.float32), float(packed[n])

    @contextmanager
    def _frozen_buffers(self) -> Iterator[None]:
        """Undo what a forward does to BatchNorm running statistics.

        The restore writes through ``.data``: a forward with gradients saved the
        buffers in its graph, and an in-place write that autograd sees would make
        that graph's backward fail. The backward of a training-mode BatchNorm uses
        the batch statistics it saved, not the running ones, so the gradients are
        unaffected.
        """
        saved = [b.detach().clone() for b in self.model.buffers()]
        try:
            yield
        finally:
            for buffer, value in zip(self.model.buffers(), saved, strict=True):
                buffer.data.copy_(value)

    def _eval_set(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if split == "test" and "test" not in self._eval_sets:
            test = self.dataset.test
            indices = np.arange(len(test))
            self._eval_sets["test"] = (
                place_cache(test.decoder.decode(indices, self.cache_size), self.device),
                torch.as_tensor(test.labels, device=self.device),
            )
        if split not in self._eval_sets:
            raise ValueError("this environment has no validation split: construct it with val_fraction > 0")
        return self._eval_sets[split]
