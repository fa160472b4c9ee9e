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

Rewards (:mod:`finetune_gym.rewards`): the paper's ``"batch"`` needs one extra
forward of ``b_t`` in eval mode; ``"next_batch"`` and ``"loss_improvement"`` read
the training forward of ``b_{t+1}`` that the step runs anyway.

Everything a step reads back from the device (observation, reward, next loss,
next batch's correct count) comes in one transfer.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from . import training
from .actions import LearningRateMap, lr_grid
from .arguments import check_positive_integers, check_types
from .assembly import assemble
from .device import HostCopy, resolve_channels_last, resolve_device, resolve_precision
from .env_state import EnvState
from .layer_signals import LayerStatistics
from .models.custom import RECORDED, describe_module, unrebuildable
from .observation import OBS_LIMIT, ActivationPooler, TrainingSignals, check_obs_extras, extras_size
from .optimizers import check_optimizer, evaluation_point, layer_optimizer
from .rendering import RENDER_FPS, RENDER_MODES, Renderer, check_render_mode
from .rewards import make_reward
from .schedules import check_schedule, schedule_factor
from .storage import cpu_copy
from .training import TrainingForward, frozen_buffers


class FineTuneEnv(EnvState, gym.Env[np.ndarray, np.ndarray]):
    """Layer-wise learning-rate control of fine-tuning, as in RL-Tune (Mahmud et al.).

    Observation: see :mod:`finetune_gym.observation` (``n_layers * obs_features``
    float32 values). Action: ``MultiDiscrete([n_lr_steps] * n_layers)``, mapped
    by :attr:`lr_map`. An episode is ``epochs_per_episode`` passes over the
    sampled training set; ``reset`` restores the target from the source weights.
    """

    metadata = {"render_modes": RENDER_MODES, "render_fps": RENDER_FPS}

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """Every constructor argument with its default (the paper's ResNet-50 / FGVC-Aircraft
        setting), read from the signature: the one place the defaults are written."""
        return {
            name: copy.deepcopy(parameter.default)
            for name, parameter in inspect.signature(cls.__init__).parameters.items()
            if name != "self"
        }

    def __init__(
        self,
        model: str | nn.Module = "resnet50",
        weights: str | Path | None = "imagenet",
        model_kwargs: dict[str, Any] | None = None,
        layers: list[str] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
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
        base_lr: float | None = None,
        schedule: str = "constant",
        warmup: float = 0.0,
        cooldown: float = 0.2,
        granularity: str = "block",
        obs_features: int = 8,
        obs_extras: list[str] | None = None,
        reward: str = "batch",
        augment: str = "auto",
        device: str | torch.device = "auto",
        precision: str = "auto",
        channels_last: bool | None = None,
        eval_batch_size: int = 256,
        optimizer: str = "adam",
        optimizer_kwargs: dict[str, Any] | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        arguments = locals()
        if isinstance(model, dict) and RECORDED in model:  # a run folder's record of a module object
            raise unrebuildable(model)
        check_types(FineTuneEnv.__init__, arguments)
        check_positive_integers(
            batch_size=batch_size,
            image_size=image_size,
            epochs_per_episode=epochs_per_episode,
            eval_batch_size=eval_batch_size,
        )
        self.render_mode = check_render_mode(render_mode, "FineTuneEnv")
        # Checked before any data is read:
        rates = lr_grid(n_lr_steps, lr_min, lr_max, lr_scale, lr_steps, base_lr)
        check_schedule(schedule, warmup, cooldown)
        self.obs_extras = check_obs_extras(obs_extras)
        self.optimizer_name, self.optimizer_kwargs = check_optimizer(optimizer), dict(optimizer_kwargs or {})
        self.schedule, self.warmup, self.cooldown = schedule, float(warmup), float(cooldown)
        self.config = {name: arguments[name] for name in self.default_config()}
        if isinstance(model, nn.Module):  # recorded by class and size, not by its repr
            self.config["model"] = describe_module(model)
        self.reward_spec = make_reward(reward)  # its name, range and extra forward
        self.batch_size, self.image_size = int(batch_size), int(image_size)
        self.epochs_per_episode, self.eval_batch_size = int(epochs_per_episode), int(eval_batch_size)
        self.device = resolve_device(device)
        self.amp_dtype = resolve_precision(precision, self.device)
        self.channels_last = resolve_channels_last(channels_last, self.device)

        parts = assemble(
            model=model,
            weights=weights,
            model_kwargs=model_kwargs,
            layers=layers,
            mean=mean,
            std=std,
            dataset=dataset,
            data_root=data_root,
            download=download,
            dataset_kwargs=dataset_kwargs,
            sampling_rate=sampling_rate,
            val_fraction=val_fraction,
            seed=seed,
            batch_size=self.batch_size,
            image_size=self.image_size,
            granularity=granularity,
            augment=augment,
            device=self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.channels_last,
            eval_batch_size=self.eval_batch_size,
        )
        self.dataset, self.train_indices, self.val_indices = (
            parts.dataset,
            parts.train_indices,
            parts.val_indices,
        )
        self.cache_size, self.model, self.layers = parts.cache_size, parts.model, parts.layers
        self.layer_names, self.n_layers = parts.layer_names, len(parts.layers)
        self.augmenter, self.stream, self.held_out = parts.augmenter, parts.stream, parts.held_out
        # Dropout and stochastic depth draw from torch's global generator: a seed per batch from
        # the stream makes them repeat with the seed and continue exactly after a restore.
        self._stochastic = training.has_stochastic_layers(self.model)
        self._noise_seed = 0
        # The source network is a hook-free copy: the EMA wrapper averages into it, reset copies from it.
        self.source_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.pooler = ActivationPooler(
            [layer.probe for layer in self.layers], obs_features, [layer.tokens for layer in self.layers]
        )

        self.lr_map = LearningRateMap(self.n_layers, rates=rates)
        self.action_space = self.lr_map.space
        self._renderer = Renderer(self.render_mode, self.layer_names, self.lr_map.rates)
        n_obs = self.n_layers * obs_features + extras_size(self.obs_extras, self.n_layers)
        self.observation_space = spaces.Box(-OBS_LIMIT, OBS_LIMIT, (n_obs,), np.float32)

        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: TrainingForward | None = None
        self._readback = HostCopy(self.device)  # every step's one device-to-host copy
        self._guard = training.BatchNormGuard(self.model)
        self._needs_reset = True
        self._epoch = self._step = self._epoch_correct = self._epoch_seen = 0
        self._statistics_seed = seed  # the batches Schedule-Free's BatchNorm statistics are computed on
        self.signals = TrainingSignals(self.obs_extras, self.n_layers)  # for the extras and rewards
        self.statistics = self._layer_statistics()  # the gradient extras (layer_signals.py)

    # ------------------------------------------------------------------ public API

    @property
    def steps_per_epoch(self) -> int:
        return self.stream.steps_per_epoch

    @property
    def episode_steps(self) -> int:
        return self.steps_per_epoch * self.epochs_per_episode

    @property
    def pending_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The augmented inputs and labels the next ``step`` trains on (their forward and backward
        have run); None before ``reset`` and after an episode's end."""
        return None if self._pending is None else (self._pending.inputs, self._pending.labels)

    def action_to_learning_rates(self, action: object) -> np.ndarray:
        """The learning rate each layer gets for ``action`` (ValueError outside the action space)."""
        return self.lr_map(action)

    def evaluate(self, split: str = "val") -> float:
        """Top-1 accuracy of the current target model on ``"val"`` or ``"test"``.

        Eval mode, centre crop and no other augmentation, batched, no gradients, at the optimizer's
        evaluation point (:meth:`evaluation_weights`).
        """
        with self.evaluation_weights():
            return self.held_out.accuracy(self.model, split)

    def fine_tuned_state_dict(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the target model's weights and buffers as they are now (at the optimizer's
        evaluation point: the model a run reports)."""
        with self.evaluation_weights():
            return cpu_copy(self.model.state_dict())

    @contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        """Inside the block the target model is at the optimizer's evaluation point (Schedule-Free's
        average, BatchNorm statistics recomputed there over a pass of training batches); after it,
        exactly as before. Other optimizers evaluate where they train."""
        batches = lambda: self.stream.inputs(self._statistics_seed, 50)  # noqa: E731
        # The statistics pass runs in train mode: dropout and stochastic depth draw from the same seed
        # every time, so an evaluation repeats exactly.
        noise = self._statistics_seed if self._stochastic else None
        with training.seeded(noise, self.device), evaluation_point(self.optimizer, self.model, batches):
            yield

    def source_state_dict(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the source weights that each episode starts from."""
        return cpu_copy(self.source_model.state_dict())

    def load_source_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the source weights (used by the next ``reset``)."""
        self.source_model.load_state_dict(state)

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:  # else the stream goes on from the constructor's seed or where it was
            self.stream.seed(seed)
        with torch.no_grad():
            for target, source in zip(
                self.model.state_dict().values(), self.source_model.state_dict().values(), strict=True
            ):
                target.copy_(source)
        self.model.train()
        self.model.zero_grad(set_to_none=True)  # an episode cut short leaves its last gradients
        self.optimizer = self._make_optimizer()
        self._epoch, self._step = 0, 0
        self.signals.reset()
        self.statistics.reset()
        self._epoch_correct, self._epoch_seen = 0, 0
        self.stream.new_epoch()
        self._pending = self._train_forward()
        observation, _ = self._observe(self._pending)
        self._needs_reset = False
        info = {
            "epoch": 0,
            "step": 0,
            "loss": self._pending.loss_value,
            "batch_accuracy": self._pending.correct / len(self._pending.labels),
        }
        self._renderer.new_episode()
        return observation, info

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError(
                "the episode has ended (or never started, or the environment was closed): "
                "call reset() before step()"
            )
        learning_rates = self.lr_map(action) * schedule_factor(
            self.schedule, self.warmup, self._step, self.episode_steps, self.cooldown
        )
        self.signals.rates = learning_rates
        pending = self._pending
        assert pending is not None and self.optimizer is not None
        # An update on a non-finite loss, or on gradients that overflowed from a finite one, is
        # skipped and its gradients dropped (GradScaler's rule; DoG would stop on an assertion).
        skipped = not math.isfinite(pending.loss_value) or not training.gradients_finite(self.optimizer)
        if not skipped:
            for group, lr in zip(self.optimizer.param_groups, learning_rates, strict=True):
                group["lr"] = float(lr)
            if self.statistics.active:
                self.statistics.record_update()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        reward_correct = self.reward_spec.batch_forward(self.model, pending, skipped, self.amp_dtype)

        info: dict[str, Any] = {
            "learning_rates": learning_rates,
            "loss": pending.loss_value,
            "batch_accuracy": pending.correct / len(pending.labels),
            "batch_size": len(pending.labels),
            "epoch": self._epoch,
            "step": self._step,
            "step_in_epoch": self.stream.position,
            "skipped_update": skipped,
        }
        self._epoch_correct += pending.correct
        self._epoch_seen += len(pending.labels)
        self._step += 1
        if self.stream.advance():  # the epoch is over; the stream has started the next one
            info["epoch_train_accuracy"] = self._epoch_correct / self._epoch_seen
            self._epoch += 1
            self._epoch_correct, self._epoch_seen = 0, 0
        terminated = self._epoch == self.epochs_per_episode

        # At the episode's end the model is final: observe the next batch without training on it
        # or letting it move BatchNorm statistics.
        with (
            torch.set_grad_enabled(not terminated),
            frozen_buffers(self.model) if terminated else nullcontext(),
        ):
            nxt = self._train_forward()
        observation, reward_count = self._observe(nxt, reward_correct)
        self._pending = None if terminated else nxt

        reward = self.reward_spec(skipped, pending, reward_count, nxt, self.signals.previous_mean)
        info["reward"] = reward
        self._renderer.step(info)
        if terminated:
            self._needs_reset = True
            info["episode_steps"] = self._step
            if self.held_out.has_val:
                info["val_accuracy"] = self.evaluate("val")
        return observation, reward, terminated, False, info

    def render(self) -> str | np.ndarray | None:
        """The last step (:mod:`finetune_gym.rendering`): text (``"ansi"``), an image
        (``"rgb_array"``); in ``"human"`` mode each step prints itself and this returns None."""
        return self._renderer.render()

    def close(self) -> None:
        """Free the pending batch and the decoded held-out images; a later reset() rebuilds them."""
        self._pending = None
        self._needs_reset = True
        self.held_out.clear()

    # ------------------------------------------------------------------ internals

    def _layer_statistics(self) -> LayerStatistics:
        """The gradient extras' bookkeeping, each layer's tensors beside their source weights."""
        names = {id(p): name for name, p in self.model.named_parameters()}
        source = dict(self.source_model.named_parameters())
        layers = [list(layer.parameters) for layer in self.layers]
        return LayerStatistics(
            self.obs_extras, layers, [[source[names[id(p)]] for p in layer] for layer in layers]
        )

    def _make_optimizer(self) -> torch.optim.Optimizer:
        layers = [(layer.name, layer.parameters) for layer in self.layers]
        return layer_optimizer(self.optimizer_name, layers, self.device, **self.optimizer_kwargs)

    def _train_forward(self) -> TrainingForward:
        if self._stochastic:
            self._noise_seed = self.stream.noise_seed()
        return self._forward(*self.stream.load())

    def _forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> TrainingForward:
        self._guard.snapshot()
        with (
            self.pooler.record(),
            training.seeded(self._noise_seed if self._stochastic else None, self.device),
        ):
            return training.train_forward(self.model, inputs, labels, self.amp_dtype)

    def _observe(
        self, forward: TrainingForward, reward_correct: torch.Tensor | None = None
    ) -> tuple[np.ndarray, float]:
        """Backpropagate ``forward`` and read the step's values back in one transfer
        (:func:`~finetune_gym.training.read_back`); returns (observation, reward's correct count)."""
        pooled = self.pooler.observation()
        if self.statistics.active:  # in the same transfer as the activations
            pooled = torch.cat([pooled, self.statistics.device_values(self.optimizer)])
        observation, reward_count = training.read_back(forward, pooled, reward_correct, self._readback)
        if not math.isfinite(forward.loss_value):  # the update will be skipped
            self._guard.restore()
        self.signals.record_loss(forward.loss_value)
        if self.obs_extras:
            extras = [self.signals.features(self._step / self.episode_steps, forward.loss_value)]
            if self.statistics.active:  # their values came back after the activations
                n_pooled = self.n_layers * self.pooler.features
                observation, values = observation[:n_pooled], observation[n_pooled:]
                extras.append(self.statistics.features(values, self.optimizer))
            observation = np.concatenate([observation, *extras])
        return observation, reward_count
