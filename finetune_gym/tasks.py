"""A distribution of fine-tuning tasks: every reset starts a new fine-tuning run.

A learning-rate policy pays off only if what it learns on many runs carries over to the next, as
pretrained weights do. :class:`FineTuneTasksEnv` draws, at every reset, a task (a target dataset
with its source network and weights), a sampling rate and a data seed, builds that fine-tuning
environment and shows it through :class:`~finetune_gym.layerwise.LayerwiseView`, so that one policy
with one observation and action layout serves every task. An episode is one whole fine-tuning run
(``epochs_per_episode`` epochs, no EMA restarts: a deployed policy gets one run).

Every task shares the arguments that give actions and observations their meaning
(:data:`SHARED_DEFAULTS`: relative rates around the base optimizer's, the extras the view reads,
the action-sensitive reward); a task sets what differs (dataset, model, weights, data root, ...).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from . import presets
from .datasets.sampling import check_sampling_rate
from .env import FineTuneEnv
from .instances import Instance, InstanceSet
from .layerwise import DEFAULT_MAX_LAYERS, LayerwiseView
from .rendering import RENDER_FPS, RENDER_MODES, check_render_mode

# What every task shares: the action grid is multiples 1/8..8 of Schedule-Free AdamW's own rate
# (the best one-run method without tuning on the benchmark's 15% sign_digits; a policy that knows
# nothing reproduces it), the extras LayerwiseView reads, and a reward that depends on the action.
SHARED_DEFAULTS: dict[str, Any] = {
    **presets.relative("schedulefree_adamw"),
    "obs_extras": ["progress", "loss"],
    "reward": "loss_improvement",
    "obs_features": 4,  # activation bins per layer: one policy needs one token size on every task
}
# The offline default: the built-in digits and their ResNet-8 at four sampling rates.
DEFAULT_TASKS: list[dict[str, Any]] = [presets.digits()]
DEFAULT_SAMPLING_RATES = (0.15, 0.3, 0.5, 1.0)
DEFAULT_EPOCHS: int = FineTuneEnv.default_config()["epochs_per_episode"]  # a run as long as one episode
# Arguments a task may not set: they belong to the distribution (drawn, or shared by every task).
DRAWN = ("sampling_rate", "seed", "epochs_per_episode")
LABEL = "name"  # a task's optional label in logs (default: its dataset); not an environment argument


def instance_task(instance: Instance, data_root: str | None = None) -> dict[str, Any]:
    """An instance as a task: its environment arguments but those the distribution draws (its rate,
    seed and length go with the draw) and but the device (the environment's default, or
    ``env_kwargs``'s), labelled with the instance's id."""
    kwargs = instance.env_kwargs(data_root)
    return {**{k: v for k, v in kwargs.items() if k not in (*DRAWN, "device")}, LABEL: instance.id}


class FineTuneTasksEnv(gym.Env):
    """Each reset draws a task, a sampling rate and a data seed and starts that fine-tuning run."""

    metadata = {"render_modes": RENDER_MODES, "render_fps": RENDER_FPS}

    def __init__(
        self,
        tasks: Sequence[dict[str, Any]] | None = None,
        sampling_rates: Sequence[float] = DEFAULT_SAMPLING_RATES,
        data_seeds: int = 1000,
        epochs_per_episode: int = DEFAULT_EPOCHS,
        max_layers: int = DEFAULT_MAX_LAYERS,
        env_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        render_mode: str | None = None,
        instance_set: str | None = None,
        split: str = "1",
        part: str = "train",
        data_root: str | None = None,
    ) -> None:
        """``instance_set`` (a shipped set's name or a file, :mod:`finetune_gym.instances`): each
        reset draws one of the instances of ``part`` (train or test) of ``split`` instead, each a
        fixed dataset, source, sampling rate, data seed and length (data under ``data_root``,
        default :func:`~finetune_gym.presets.data_root`); ``tasks``, ``sampling_rates``,
        ``data_seeds`` and ``epochs_per_episode`` then stay unset."""
        super().__init__()
        self.render_mode = check_render_mode(render_mode, "FineTuneTasksEnv")
        self.instances: list[Instance] | None = None
        if instance_set is not None:
            given = [
                name
                for name, value, default in (
                    ("tasks", tasks, None),
                    ("sampling_rates", tuple(sampling_rates), DEFAULT_SAMPLING_RATES),
                    ("data_seeds", data_seeds, 1000),
                    ("epochs_per_episode", epochs_per_episode, DEFAULT_EPOCHS),
                )
                if value != default
            ]
            if given:
                raise ValueError(
                    f"instance_set={instance_set!r} fixes each run's task, rate, seed and length; do not also "
                    f"give {', '.join(given)}"
                )
            self.instances = InstanceSet.load(instance_set).split(split, part)
            if not self.instances:
                raise ValueError(f"instance set {instance_set!r} split {split!r} has no {part} instances")
            tasks = [instance_task(i, data_root) for i in self.instances]
        self.tasks = [dict(task) for task in (DEFAULT_TASKS if tasks is None else tasks)]
        if not self.tasks:
            raise ValueError("tasks is empty: give at least one task (a dict of FineTuneEnv arguments)")
        for task in self.tasks:
            if not isinstance(task, dict):
                raise TypeError(f"each task is a dict of FineTuneEnv arguments, got {task!r}")
            clash = sorted(set(task) & set(DRAWN))
            if clash:
                raise ValueError(
                    f"task {task} sets {clash}: the distribution draws or shares those; remove them"
                )
            unknown = sorted(set(task) - set(FineTuneEnv.default_config()) - {LABEL})
            if unknown:
                raise ValueError(f"task {task} has arguments FineTuneEnv does not take: {unknown}")
        self.sampling_rates = [check_sampling_rate(rate) for rate in sampling_rates]
        if not self.sampling_rates:
            raise ValueError("sampling_rates is empty")
        if not isinstance(data_seeds, int) or data_seeds < 1:
            raise ValueError(
                f"data_seeds must be a positive integer (seeds 0..data_seeds-1), got {data_seeds!r}"
            )
        self.data_seeds, self.epochs_per_episode, self.max_layers = data_seeds, epochs_per_episode, max_layers
        self.shared = {**SHARED_DEFAULTS, **(env_kwargs or {})}
        self.seed_offset = int(seed)
        self._rng = np.random.default_rng(seed)
        self.current: dict[str, Any] = {}
        first = (0, self.sampling_rates[0], 0) if self.instances is None else self._instance_draw(0)
        self.view = self._build(*first)  # fixes the spaces; checks the first task
        self.observation_space, self.action_space = self.view.observation_space, self.view.action_space

    def _instance_draw(self, index: int) -> tuple[int, float, int]:
        assert self.instances is not None
        return index, self.instances[index].sampling_rate, self.instances[index].seed

    def _build(self, task: int, rate: float, data_seed: int) -> LayerwiseView:
        spec = {k: v for k, v in self.tasks[task].items() if k != LABEL}
        epochs = self.epochs_per_episode if self.instances is None else self.instances[task].epochs
        kwargs = {
            **copy.deepcopy(self.shared),
            **copy.deepcopy(spec),
            "sampling_rate": rate,
            "seed": data_seed,
            "epochs_per_episode": epochs,
            "render_mode": self.render_mode,  # the current run's environment renders it
        }
        view = LayerwiseView(FineTuneEnv(**kwargs), self.max_layers)
        name = self.tasks[task].get(LABEL, self.tasks[task].get("dataset"))
        self.current = {
            "task": task,
            "sampling_rate": rate,
            "data_seed": data_seed,
            **self.tasks[task],
            LABEL: name,
        }
        return view

    def draw(self) -> tuple[int, float, int]:
        """The next task index, sampling rate and data seed (from the environment's own RNG)."""
        if self.instances is not None:
            return self._instance_draw(int(self._rng.integers(len(self.instances))))
        return (
            int(self._rng.integers(len(self.tasks))),
            float(self._rng.choice(self.sampling_rates)),
            int(self._rng.integers(self.data_seeds)),
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # Combined with the constructor's seed: SB3 seeds every reset it starts with its own seed
            # (plus the env's index), which alone would repeat the same tasks after a resume.
            self._rng = np.random.default_rng([int(seed), self.seed_offset])
        task, rate, data_seed = self.draw()
        if (task, rate, data_seed) != tuple(self.current[k] for k in ("task", "sampling_rate", "data_seed")):
            self.view.close()
            self.view = self._build(task, rate, data_seed)
        observation, info = self.view.reset(seed=data_seed, options=options)
        return observation, {**info, "task": dict(self.current)}

    def step(self, action: object):
        observation, reward, terminated, truncated, info = self.view.step(action)
        return observation, reward, terminated, truncated, {**info, "task": dict(self.current)}

    def render(self) -> str | np.ndarray | None:
        """The current fine-tuning run's last step (:mod:`finetune_gym.rendering`)."""
        return self.view.render()

    def close(self) -> None:
        self.view.close()
        super().close()
