"""A second trainer of the residual controller: PPO over the same policy class, the same training
instances and the same objective as the CMA-ES search (:mod:`.meta_train`), so that the two can be
compared at the same number of fine-tuning runs (issue 28).

The policy: each layer's log2 multiplier is drawn from a Gaussian whose mean is the controller's
rule, ``theta . phi_l`` (the same 8 weights for every layer, :mod:`.residual_controller`), with a
learned standard deviation; the critic is an MLP over the features. Deployed deterministically the
policy is its mean, which is the controller itself: the trained ``theta`` is saved as a controller
file that ``--algo residual_controller policy=...`` runs exactly as it runs a CMA-ES one. ``theta``
starts at 0, the base run, as the search's does.

An episode is one whole fine-tuning run of a training instance (drawn in a seeded order). Its
reward is 0 at every step and, at the end, the run's paired validation gain over the base run on
the same instance (what CMA-ES scores a candidate by, for one instance); base runs are computed once
per instance, cached in the run's folder and counted in the budget as the search counts its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from torch import nn

from finetune_gym.device import describe_machine
from finetune_gym.instances import Instance, InstanceSet

from .meta_train import UNREWARDED, keep_settings, run_instance
from .residual_controller import (
    CENTRED_LIMIT,
    FEATURES,
    OCTAVES,
    ResidualController,
    action_indices,
    features,
    save_controller,
)
from .run_budget import RunBudget, learn_to_budget, load_trainer, new_state, read_trainer
from .threads import torch_threads

CONFIG = "ppo_config.json"
EPISODES = "episodes.jsonl"  # one line per finished run: instance, paired gain, wall time
BASES = "bases.jsonl"  # the base runs' validation accuracies, one line per instance
CHECKPOINT = "checkpoint.pt"  # the trainer at its last update (agents/run_budget.py)
CONTROLLER = "controller.pt"
MAX_LAYERS = 32  # the deepest source in the instance sets (CIFAR ResNet-56) has 29


@dataclass(frozen=True)
class ControllerPPOConfig:
    """A PPO training run of the controller: which instances, which base, how many runs."""

    instance_set: str = "v1"
    split: str = "1"
    optimizer: str = "prodigy"
    runs: int = 540  # fine-tuning runs in all, base runs included (CMA-ES's 15 generations: <= 540)
    n_steps: int = 256  # steps per environment between updates (a run at 15% is ~120-200 steps)
    batch_size: int = 128
    n_epochs: int = 4
    learning_rate: float = 3e-3
    gamma: float = 1.0  # the only reward comes at the run's end
    gae_lambda: float = 0.95
    clip_range: float = 0.1  # the paper's
    log_std_init: float = -1.0  # a std of ~0.37 octaves around the rule at the start
    seed: int = 0
    data_root: str | None = None

    def __post_init__(self) -> None:
        for name in ("runs", "n_steps", "batch_size", "n_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"controller PPO {name} must be a positive integer, got {value!r}")
        for name in ("learning_rate", "clip_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"controller PPO {name} must be > 0, got {getattr(self, name)!r}")

    def training_instances(self) -> list[Instance]:
        return InstanceSet.load(self.instance_set).split(self.split, "train")


class BaseScores:
    """The base run's final validation accuracy per instance, computed on first need and kept in a
    JSON-lines file that every environment process appends to (a base run is the controller with
    ``theta = 0``, :func:`.meta_train.run_instance`)."""

    def __init__(self, path: Path, optimizer: str, data_root: str | None) -> None:
        self.path, self.optimizer, self.data_root = Path(path), optimizer, data_root

    def _read(self) -> dict[str, float]:
        if not self.path.is_file():
            return {}
        scores = {}
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a kill: that base runs again
                continue
            scores[record["instance"]] = record["val"]
        return scores

    def get(self, instance: Instance) -> tuple[float, bool]:
        """(the base's validation accuracy on ``instance``, whether it was run now). Under a lock of
        the instance's own: two environments that draw it at once run its base once (the second
        waits and reads it); different instances' bases run side by side."""
        locks = self.path.parent / f"{self.path.stem}.locks"
        locks.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1(instance.id.encode()).hexdigest()[:16]
        with open(locks / f"{name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            known = self._read().get(instance.id)
            if known is not None:
                return known, False
            result = run_instance(instance.to_json(), [0.0] * len(FEATURES), self.optimizer, self.data_root)
            with open(self.path, "a") as out:
                out.write(json.dumps({"instance": instance.id, **result}) + "\n")
            return result["val"], True


class ControllerTasksEnv(gym.Env):
    """One episode = one fine-tuning run of a training instance under per-layer log2 multipliers
    (the action, a Box; rounded and clipped as the controller rounds its own); the observation is
    the controller's features of each layer, zero below the network's last layer."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        instances: list[Instance],
        bases: BaseScores,
        optimizer: str = "prodigy",
        data_root: str | None = None,
        seed: int = 0,
        draws_done: int = 0,
        max_layers: int = MAX_LAYERS,
    ) -> None:
        if not instances:
            raise ValueError("ControllerTasksEnv needs at least one training instance")
        self.instances, self.bases, self.data_root = instances, bases, data_root
        self.controller = ResidualController(optimizer=optimizer)
        self.max_layers = max_layers
        self.observation_space = spaces.Box(
            -CENTRED_LIMIT, CENTRED_LIMIT, (max_layers, len(FEATURES)), dtype=np.float32
        )
        # Down to half a quarter-octave under 1/8 freezes a layer (action_indices), so the low end
        # reaches past it.
        self.action_space = spaces.Box(-(OCTAVES + 1.0), float(OCTAVES), (max_layers,), dtype=np.float32)
        self.draws, self._resumed_at = draws_done, draws_done
        self._start_order(seed)
        self.env = None
        self.instance: Instance | None = None

    def _start_order(self, seed: int) -> None:
        """The instance order of ``seed``, past the draws made before a resume: a resumed trainer
        goes on with the order it had. The same seed always gives this environment the same
        instance next."""
        self._rng = np.random.default_rng(seed)
        for _ in range(self._resumed_at):
            self._draw()

    def _draw(self) -> Instance:
        return self.instances[int(self._rng.integers(len(self.instances)))]

    def _observe(self, observation: np.ndarray) -> np.ndarray:
        assert self.env is not None
        phi = np.zeros((self.max_layers, len(FEATURES)), dtype=np.float32)
        phi[: self.env.n_layers] = features(observation, self.env.n_layers)
        return phi

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # SB3 seeds each environment at its first reset (the model's seed + rank), a resumed
            # trainer's too: without the skip it would repeat its first instances.
            self._start_order(seed)
        from finetune_gym.env import FineTuneEnv

        if self.env is not None:
            self.env.close()
        self.instance = self._draw()
        self.draws += 1
        env = FineTuneEnv(
            **self.instance.env_kwargs(self.data_root), **self.controller.env_overrides(), **UNREWARDED
        )
        if env.n_layers > self.max_layers:
            raise ValueError(
                f"instance {self.instance.id} has {env.n_layers} layers; ControllerTasksEnv was built "
                f"for at most {self.max_layers}: pass a larger max_layers"
            )
        self.env = env
        self.controller.bind(env.n_layers, env.lr_map.rates, env.layer_names)
        self._started = time.perf_counter()
        observation, info = env.reset(seed=self.instance.seed)
        return self._observe(observation), {"instance": self.instance.id}

    def step(self, action: np.ndarray):
        assert self.env is not None and self.instance is not None
        log2 = np.asarray(action, dtype=np.float64)[: self.env.n_layers]
        observation, _, terminated, truncated, info = self.env.step(action_indices(log2))
        reward = 0.0
        if terminated or truncated:
            val = self.env.evaluate("val")
            base, base_ran = self.bases.get(self.instance)
            reward = val - base
            info = {
                **info,
                "instance": self.instance.id,
                "val": val,
                "paired_gain": reward,
                "base_ran": base_ran,
                "wall_s": time.perf_counter() - self._started,
                "machine": describe_machine(self.env.device),  # bit-reproducible on this CPU only
            }
        return self._observe(observation), reward, terminated, truncated, info

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


class SharedRule(nn.Module):
    """The controller's rule as the policy's mean: ``theta . phi_l`` for each layer, one ``theta``
    for all (no bias: the feature "bias" is the constant 1). Starts at 0: the base run."""

    def __init__(self, n_features: int = len(FEATURES)) -> None:
        super().__init__()
        self.n_features = n_features
        self.theta = nn.Parameter(torch.zeros(n_features))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return latent.view(latent.shape[0], -1, self.n_features) @ self.theta


class SharedRulePolicy(ActorCriticPolicy):
    """SB3's actor-critic with the controller as its actor: the flattened features pass to the
    actor unchanged (``net_arch`` pi=[]) and its action head is :class:`SharedRule` instead of a
    dense layer over all layers' features (SB3's action head has no weight sharing across action
    dimensions, hence this subclass); the critic is SB3's MLP. The log standard deviation is SB3's
    one per action dimension (a padded layer's has no effect on anything)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("net_arch", {"pi": [], "vf": [64, 64]})
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self.action_net = SharedRule(self.observation_space.shape[-1])
        # The optimizer SB3 made holds the dense head it replaced: make it again over these.
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def theta(self) -> np.ndarray:
        return self.action_net.theta.detach().cpu().double().numpy()


class ControllerRuns(RunBudget):
    """A run is one episode plus the base run it needed (if it was the instance's first); each is
    logged with its paired gain, and theta goes to the logger at each rollout's end."""

    def __init__(
        self, checkpoint: Path, log: Path, budget: int, state: dict[str, Any], verbose: bool
    ) -> None:
        super().__init__(checkpoint, log, budget, state)
        self.verbose_runs = verbose  # a line per run (the command line prints them)

    def finished(self, info: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
        if "paired_gain" not in info:
            return None
        keys = ("instance", "val", "paired_gain", "base_ran", "wall_s", "machine")
        return {k: info[k] for k in keys}, 1 + int(info["base_ran"])

    def on_run(self, line: dict[str, Any]) -> None:
        self.logger.record("controller/paired_gain", line["paired_gain"])
        if self.verbose_runs:
            print(
                f"run {self.state['runs']}/{self.budget} (episode {line['episode']}): {line['instance']}: "
                f"val {100 * line['val']:.1f}%, paired gain {100 * line['paired_gain']:+.1f} points"
                + (" (its base run too)" if line["base_ran"] else ""),
                flush=True,
            )

    def before_save(self) -> None:
        # Each environment's draws so far: a resumed environment goes on with its instance order.
        self.state["draws"] = [int(d) for d in self.model.get_env().get_attr("draws")]

    def _on_rollout_end(self) -> None:
        theta = self.model.policy.theta()
        for i, name in enumerate(FEATURES):
            self.logger.record(f"controller/theta_{name}", float(theta[i]))


def _make_env(config: ControllerPPOConfig, run_dir: Path, rank: int, draws: int, threads: int | None):
    """An environment maker; ``threads``: torch's for the process it runs in (a worker process's
    own; None in the caller's process, whose setting :func:`train_controller_ppo` scopes)."""

    def make() -> ControllerTasksEnv:
        if threads is not None:
            torch.set_num_threads(threads)
        bases = BaseScores(run_dir / BASES, config.optimizer, config.data_root)
        return ControllerTasksEnv(
            config.training_instances(),
            bases,
            config.optimizer,
            config.data_root,
            seed=config.seed * 1000 + rank,
            draws_done=draws,
        )

    return make


def train_controller_ppo(
    config: ControllerPPOConfig,
    run_dir: str | Path,
    n_envs: int = 1,
    threads: int = 1,
    tensorboard_log: str | None = None,
    verbose: bool = False,
) -> np.ndarray:
    """PPO to ``config.runs`` fine-tuning runs (:mod:`.run_budget`: learned from to the end of the
    rollout that met the budget), continuing from whatever ``run_dir`` holds (the trainer as saved
    at its last update; runs finished after it are run again); the trained ``theta``, also saved as
    ``run_dir/controller.pt``. ``tensorboard_log``: SB3's TensorBoard folder (the runs' paired
    gains, theta, PPO's losses)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    keep_settings(run_dir / CONFIG, asdict(config), "runs", "a controller PPO run")
    payload = read_trainer(run_dir / CHECKPOINT) if (run_dir / CHECKPOINT).is_file() else None
    draws = payload["state"]["draws"] if payload else [0] * n_envs
    if len(draws) != n_envs:
        raise ValueError(
            f"{str(run_dir)!r} was trained with {len(draws)} environments: pass n_envs={len(draws)}"
        )
    in_process = n_envs == 1
    makers = [
        _make_env(config, run_dir, rank, draws[rank], None if in_process else threads)
        for rank in range(n_envs)
    ]
    with torch_threads(threads):  # the caller's thread count comes back afterwards
        return _train(config, run_dir, makers, payload, tensorboard_log, verbose)


def _train(
    config: ControllerPPOConfig,
    run_dir: Path,
    makers: list,
    payload: dict[str, Any] | None,
    tensorboard_log: str | None,
    verbose: bool,
) -> np.ndarray:
    venv: VecEnv = DummyVecEnv(makers) if len(makers) == 1 else SubprocVecEnv(makers, start_method="spawn")
    try:
        model = PPO(
            SharedRulePolicy,
            venv,
            n_steps=config.n_steps,
            batch_size=config.batch_size,
            n_epochs=config.n_epochs,
            learning_rate=config.learning_rate,
            gamma=config.gamma,
            gae_lambda=config.gae_lambda,
            clip_range=config.clip_range,
            policy_kwargs={"log_std_init": config.log_std_init},
            seed=config.seed,
            device="cpu",
            tensorboard_log=tensorboard_log,
            verbose=0,
        )
        state = load_trainer(payload, model, run_dir / EPISODES) if payload else new_state()
        callback = ControllerRuns(run_dir / CHECKPOINT, run_dir / EPISODES, config.runs, state, verbose)
        learn_to_budget(model, callback, resumed=payload is not None, tb_log_name=run_dir.name)
    finally:
        venv.close()
    theta = model.policy.theta()
    gains = [json.loads(line)["paired_gain"] for line in (run_dir / EPISODES).read_text().splitlines()]
    card = {
        "trainer": "ppo",
        "instance_set": config.instance_set,
        "split": config.split,
        "runs": state["runs"],
        "episodes": state["episodes"],
        "last_mean_gain": float(np.mean(gains[-32:])) if gains else None,
    }
    save_controller(run_dir / CONTROLLER, theta.tolist(), config.optimizer, card)
    return theta
