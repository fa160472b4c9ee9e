"""Pretraining one learning-rate policy over many fine-tuning runs (``train.py pretrain``).

PPO with :class:`~.layerwise_policy.LayerwisePolicy` on ``FineTune-Tasks-v0``: each of ``n_envs``
processes (SB3's ``SubprocVecEnv``; one device each, so N GPUs run N tasks) fine-tunes a freshly
drawn task per episode; the policy updates after every ``n_steps`` steps of each process and stops
after ``runs`` finished fine-tuning runs (:mod:`.run_budget`, the engine PPO over the residual
controller shares). The run directory holds ``config.json``, ``runs.jsonl``
(one line per finished run), ``checkpoint.pt`` after every update (the policy, its optimizer and
the counters, loadable with ``weights_only=True``) and, at the end, ``policy.pt`` with its card
(:mod:`.pretrained`) and ``results.json``. ``--resume`` continues from the last update: the
fine-tuning runs in flight at the kill, and those finished after the last update, are dropped
(their steps were not learned from; the run log is cut back to match), and the processes draw
new tasks.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from finetune_gym import FineTuneEnv, presets
from finetune_gym.datasets.sampling import check_sampling_rate
from finetune_gym.device import describe_machine
from finetune_gym.layerwise import DEFAULT_MAX_LAYERS
from finetune_gym.tasks import (
    DEFAULT_SAMPLING_RATES,
    DEFAULT_TASKS,
    SHARED_DEFAULTS,
    FineTuneTasksEnv,
    instance_task,
)

from .hyperparams import PPO_SETTINGS
from .layerwise_policy import LayerwisePolicy
from .pretrained import save_policy
from .run_budget import RunBudget, learn_to_budget, load_trainer, new_state, read_trainer
from .rundir import CHECKPOINT, CONFIG, RESULTS, RunDirectory, RunDirectoryError
from .threads import torch_threads

POLICY = "policy.pt"
RUN_LOG = "runs.jsonl"
# PPO's settings for pretraining: train.py's (its rollout is its own: tasks differ in epoch length).
PPO_DEFAULTS: dict[str, Any] = dict(PPO_SETTINGS)


def _cifar_task(root: Path, dataset: str) -> dict[str, Any]:
    """A target of the GTSRB benchmark's protocol: the CIFAR-10 ResNet-20 source at 32 px."""
    data = presets.gtsrb(root) if dataset == "gtsrb" else presets.imagefolder(root / dataset)
    return {"name": dataset, **data, **presets.cifar_source(presets.cifar_checkpoint(root)), "batch_size": 32}


def task_set(name: str, data_root: Path) -> list[dict[str, Any]]:
    """The named task sets: ``digits`` (offline), and the leave-one-domain-out sets of the transfer
    test, ``no-gtsrb`` (sign_digits, clothing10, digits) and ``no-sign_digits`` (GTSRB, clothing10,
    digits), read from ``data_root`` (default :func:`finetune_gym.presets.data_root`)."""
    sets = {
        "digits": [],
        "no-gtsrb": ["sign_digits", "clothing10"],
        "no-sign_digits": ["gtsrb", "clothing10"],
    }
    if name not in sets:
        raise ValueError(
            f"unknown task set {name!r}: choose one of {', '.join(sets)}, or give a JSON file of tasks"
        )
    return [_cifar_task(data_root, dataset) for dataset in sets[name]] + [
        dict(task) for task in DEFAULT_TASKS
    ]


VEC_ENVS = ("subproc", "ray")
# Fields that say where the processes run, not what is learned: a resume may change them.
PLACEMENT = ("vec_env", "ray_address")


@dataclass
class PretrainConfig:
    """What a pretraining run is; checked before anything is built."""

    tasks: str | list[dict[str, Any]] = "digits"  # a task set's name or the tasks themselves
    data_root: str = field(default_factory=lambda: str(presets.data_root()))
    sampling_rates: list[float] = field(default_factory=lambda: list(DEFAULT_SAMPLING_RATES))
    epochs_per_episode: int = FineTuneEnv.default_config()["epochs_per_episode"]
    runs: int = 16
    n_envs: int = 1
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    max_layers: int = DEFAULT_MAX_LAYERS
    hidden: int = 64
    n_steps: int = 128
    seed: int = 0
    threads: int | None = None  # per process; None: the machine's cores shared among the processes
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    # Where the processes run (results do not depend on it): "subproc", SB3's SubprocVecEnv on this
    # machine; "ray", Ray actors (the [ray] extra), a cluster's when ray_address is given.
    vec_env: str = "subproc"
    ray_address: str | None = None
    # An instance set (finetune_gym/instances.py) instead of tasks: every run is one of its split's
    # training instances (each a fixed dataset, source, rate, seed and length), the runs the
    # residual controller's CMA-ES meta-training draws from (issue 28).
    instance_set: str | None = None
    split: str = "1"

    def __post_init__(self) -> None:
        if self.vec_env not in VEC_ENVS:
            raise ValueError(f"vec_env must be one of {VEC_ENVS}, got {self.vec_env!r}")
        if self.ray_address is not None and self.vec_env != "ray":
            raise ValueError("ray_address needs vec_env='ray' (the processes run as Ray actors)")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {self.threads!r}")
        for name in ("epochs_per_episode", "runs", "n_envs", "max_layers", "hidden", "n_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_steps < 2:
            raise ValueError("n_steps must be at least 2 (advantages are normalised over the rollout)")
        self.sampling_rates = [check_sampling_rate(rate) for rate in self.sampling_rates]
        if not self.devices:
            raise ValueError("devices is empty: give at least one (cpu, cuda, cuda:1, ...)")
        if self.instance_set is not None:
            from finetune_gym.instances import InstanceSet

            InstanceSet.load(self.instance_set).split(self.split, "train")  # a clear error early
            defaults = PretrainConfig()
            given = [
                name
                for name in ("tasks", "sampling_rates", "epochs_per_episode")
                if getattr(self, name) != getattr(defaults, name)
            ]
            if given:
                raise ValueError(
                    f"instance_set={self.instance_set!r} fixes every run's task, rate and length; do not also "
                    f"give {', '.join(given)}"
                )
        unknown = sorted(set(self.agent_kwargs) - {*PPO_DEFAULTS, "batch_size", "max_grad_norm", "vf_coef"})
        if unknown:
            raise ValueError(f"agent_kwargs {unknown} are not PPO settings this pretraining takes")

    def resolved_tasks(self) -> list[dict[str, Any]]:
        """The tasks, or with an instance set its training instances' environment arguments."""
        if self.instance_set is not None:
            from finetune_gym.instances import InstanceSet

            instances = InstanceSet.load(self.instance_set).split(self.split, "train")
            return [instance_task(i, self.data_root) for i in instances]  # as FineTuneTasksEnv runs them
        if isinstance(self.tasks, str):
            return task_set(self.tasks, Path(self.data_root))
        return [dict(task) for task in self.tasks]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PretrainConfig:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def process_threads(config: PretrainConfig) -> int:
    """Each process's share of the cores: PyTorch's default (all of them) in every process makes
    OpenMP threads spin against each other."""
    return config.threads or max(1, (os.cpu_count() or 1) // config.n_envs)


def _make_env(config: PretrainConfig, tasks: list[dict[str, Any]], rank: int, offset: int):
    device = config.devices[rank % len(config.devices)]
    if config.vec_env == "ray" and device.startswith("cuda"):
        device = "cuda"  # the one GPU Ray gave the actor, whichever it is on its node

    def make():
        if config.n_envs > 1:  # a process of its own (SubprocVecEnv); one env runs in the caller's
            torch.set_num_threads(process_threads(config))
        seed = config.seed * 100_003 + rank * 10_007 + offset
        if config.instance_set is not None:
            env = FineTuneTasksEnv(
                instance_set=config.instance_set,
                split=config.split,
                part="train",
                data_root=config.data_root,
                max_layers=config.max_layers,
                env_kwargs={"device": device, **config.env_kwargs},
                seed=seed,
            )
            return Monitor(env)
        env = FineTuneTasksEnv(
            tasks=[{"device": device, **task} if "device" not in task else task for task in tasks],
            sampling_rates=config.sampling_rates,
            epochs_per_episode=config.epochs_per_episode,
            max_layers=config.max_layers,
            env_kwargs=config.env_kwargs,
            # Distinct draws per process, and new ones after a resume (``offset``: steps done).
            seed=seed,
        )
        return Monitor(env)

    return make


def build_vec_env(config: PretrainConfig, offset: int = 0) -> VecEnv:
    tasks = config.resolved_tasks()
    makers = [_make_env(config, tasks, rank, offset) for rank in range(config.n_envs)]
    if config.vec_env == "ray":
        from .ray_vec_env import RayVecEnv, connect

        started = connect(config.ray_address, config.n_envs * process_threads(config))
        gpus = [
            config.devices[rank % len(config.devices)].startswith("cuda") for rank in range(config.n_envs)
        ]
        return RayVecEnv(makers, threads=process_threads(config), gpus=gpus, shutdown_on_close=started)
    if config.n_envs == 1:
        return DummyVecEnv(makers)
    return SubprocVecEnv(makers, start_method="spawn")  # fork would copy torch's thread pools


def build_model(config: PretrainConfig, venv: VecEnv) -> PPO:
    params = {**PPO_DEFAULTS, **config.agent_kwargs}
    batch_size = int(params.pop("batch_size", config.n_steps * config.n_envs))
    return PPO(
        LayerwisePolicy,
        venv,
        n_steps=config.n_steps,
        batch_size=batch_size,
        policy_kwargs={"hidden": config.hidden},
        seed=config.seed,
        device="cpu",
        verbose=0,
        **params,
    )


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class PretrainProgress(RunBudget):
    """Pretraining's runs (:mod:`.run_budget`): each finished episode is one fine-tuning run, logged
    with its task, return and validation accuracy (to W&B too, and printed); images are counted at
    every step and the wall time at every save."""

    def __init__(
        self,
        run_dir: Path,
        config: PretrainConfig,
        state: dict[str, Any],
        verbose: bool,
        wandb_run: Any = None,
        on_checkpoint: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(run_dir / CHECKPOINT, run_dir / RUN_LOG, config.runs, state)
        self.config, self.print_runs = config, verbose
        self.wandb_run, self.on_checkpoint = wandb_run, on_checkpoint

    def on_info(self, info: dict[str, Any]) -> None:
        self.state["images"] += int(info.get("batch_size", 0))

    def finished(self, info: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
        if "episode" not in info:
            return None
        line = {
            "task": info.get("task", {}),
            "return": float(info["episode"]["r"]),
            "steps": int(info["episode"]["l"]),
            "val_accuracy": info.get("val_accuracy"),
            "timesteps": int(self.num_timesteps),
        }
        return line, 1

    def before_save(self) -> None:
        self.state["wall_s"] = self.state["_wall_before"] + time.time() - self.state["_started"]

    def save(self) -> None:
        super().save()
        if self.on_checkpoint is not None:
            self.on_checkpoint()

    def on_run(self, line: dict[str, Any]) -> None:
        task = line["task"]
        if self.wandb_run is not None:
            import wandb

            data = {"run/return": line["return"], "run/steps": line["steps"], "run/index": line["episode"]}
            data["run/sampling_rate"] = task.get("sampling_rate")
            if line["val_accuracy"] is not None:
                data[f"run/val_accuracy/{task.get('name')}"] = line["val_accuracy"]
            wandb.log(data, step=int(self.num_timesteps))
        if self.print_runs:
            val = "" if line["val_accuracy"] is None else f", val {100 * line['val_accuracy']:.1f}%"
            print(
                f"run {line['episode']}/{self.config.runs}: {task.get('name')} r{task.get('sampling_rate')} "
                f"s{task.get('data_seed')}: return {line['return']:.3f} over {line['steps']} steps{val}",
                flush=True,
            )


def card(config: PretrainConfig, state: dict[str, Any], model: PPO, command: str) -> dict[str, Any]:
    return {
        "what": "finetune-gym learning-rate policy (LayerwisePolicy, PPO over FineTune-Tasks-v0)",
        "tasks": config.tasks,  # a task set's name, or the tasks as given
        "instance_set": config.instance_set,  # or the instance set whose training part it ran
        "split": config.split,
        "task_details": config.resolved_tasks(),
        "sampling_rates": config.sampling_rates,
        "epochs_per_episode": config.epochs_per_episode,
        "env_kwargs": {**SHARED_DEFAULTS, **config.env_kwargs},
        "budget": {
            "runs": state["runs"],
            "timesteps": int(model.num_timesteps),
            "images": state["images"],
            "wall_s": round(state["wall_s"], 1),
            "n_envs": config.n_envs,
            "devices": config.devices,
        },
        "max_layers": config.max_layers,
        "obs_features": _obs_features(config),
        "n_actions": int(model.action_space.nvec[0]),
        "hidden": config.hidden,
        "seed": config.seed,
        "commit": _commit(),
        "command": command,
        # Results repeat bit for bit only on the same CPU model (finetune_gym.device.describe_machine).
        "machine": "; ".join(dict.fromkeys(describe_machine(torch.device(d)) for d in config.devices))
        + f", torch {torch.__version__}",
    }


def _obs_features(config: PretrainConfig) -> int:
    shared = {**SHARED_DEFAULTS, **config.env_kwargs}.get("obs_features", 8)
    features = {int(task.get("obs_features", shared)) for task in config.resolved_tasks()}
    if len(features) != 1:
        raise ValueError(
            f"every task must pool the same number of activation bins (obs_features), got {features}"
        )
    return features.pop()


def pretrain(
    config: PretrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    verbose: bool = True,
    command: str | None = None,
    wandb_mode: str = "disabled",
    wandb_project: str = "finetune-gym",
) -> dict[str, Any]:
    """Pretrain (or continue) and write ``run_dir``; returns the policy's card. With ``wandb_mode``
    offline or online, each finished run, PPO's statistics and the policy file go to W&B.

    With one process the environment runs in the caller's, which gets its thread count back
    afterwards: a later run in the same Python session (and the thread count its checkpoints
    record, which exact resume relies on) must not inherit the pretraining's setting."""
    with torch_threads(process_threads(config) if config.n_envs == 1 else None):
        return _pretrain(
            config, Path(run_dir), resume, overwrite, verbose, command, wandb_mode, wandb_project
        )


def _pretrain(
    config: PretrainConfig,
    run_dir: Path,
    resume: bool,
    overwrite: bool,
    verbose: bool,
    command: str | None,
    wandb_mode: str,
    wandb_project: str,
) -> dict[str, Any]:
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    if resume:
        if (run_dir / RESULTS).is_file():
            raise RunDirectoryError(f"{str(run_dir)!r} holds a finished pretraining; nothing to resume")
        saved = PretrainConfig.from_json(json.loads((run_dir / CONFIG).read_text()))
        what = lambda c: {k: v for k, v in c.to_json().items() if k not in PLACEMENT}  # noqa: E731
        if what(saved) != what(config):
            raise RunDirectoryError(
                f"--resume continues {str(run_dir)!r} as it was started: give its arguments"
            )
    _obs_features(config)
    payload = None
    if resume:
        payload = read_trainer(
            run_dir / CHECKPOINT, "start the pretraining again with --overwrite", RunDirectoryError
        )
    # New draws after a resume: the steps done so far (never 0 once a checkpoint exists) shift every
    # process's task RNG.
    venv = build_vec_env(config, offset=int(payload["num_timesteps"]) if payload else 0)
    try:
        model = build_model(config, venv)
        with RunDirectory.claim(run_dir, config, resume=resume, overwrite=overwrite) as directory:
            try:
                # Under the lock: a resume also cuts the run log back to the checkpoint's runs.
                if payload:
                    state = load_trainer(payload, model, run_dir / RUN_LOG)
                else:
                    state = {**new_state(), "images": 0, "wall_s": 0.0}
                state.update(_started=time.time(), _wall_before=state["wall_s"])
                wandb_run = None
                if wandb_mode != "disabled":
                    from stable_baselines3.common.logger import Logger

                    from .wandb_logging import WandbKVWriter, WandbRun

                    name = config.tasks if isinstance(config.tasks, str) else "custom"
                    wandb_run = WandbRun(
                        wandb_mode,
                        run_dir,
                        config.to_json(),
                        project=wandb_project,
                        entity=None,
                        group=f"pretrain/{name}",
                        tags=["pretrain", name],
                        name=f"pretrain-{name}-s{config.seed}",
                        layer_names=[],
                    )
                    model.set_logger(Logger(folder=None, output_formats=[WandbKVWriter()]))
                callback = PretrainProgress(
                    run_dir, config, state, verbose, wandb_run, on_checkpoint=directory.drop_replaced
                )
                learn_to_budget(model, callback, resumed=resume)
                state["wall_s"] = state.pop("_wall_before") + time.time() - state.pop("_started")
                result = card(config, state, model, command)
                save_policy(model.policy, result, run_dir / POLICY)
                (run_dir / RESULTS).write_text(json.dumps(result, indent=2) + "\n")
                directory.drop_replaced()
                if wandb_run is not None:
                    wandb_run.close(
                        result["budget"], [run_dir / POLICY, run_dir / RUN_LOG], "finetune-policy", {}
                    )
                if verbose:
                    print(
                        f"pretrained on {state['runs']} runs ({model.num_timesteps} steps, "
                        f"{state['wall_s']:.0f} s): {run_dir / POLICY}"
                    )
                return result
            except BaseException:
                if not resume and not (run_dir / CHECKPOINT).is_file():
                    directory.abandon()  # nothing to resume: leave nothing, restore what it replaced
                raise
    finally:
        venv.close()
