"""Weights & Biases logging of a run: config, per-step, per-epoch and per-episode metrics,
the agent's training statistics, the learning-rate heatmap, and the results as an artifact.

Imported only when a run logs to W&B (``wandb`` is slow to import).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import wandb
from stable_baselines3.common.logger import KVWriter
from wandb.integration.sb3 import WandbCallback

from finetune_gym import FineTuneEnv

from .config import RunConfig
from .outputs import jsonable


class AgentConfigCallback(WandbCallback):
    """W&B's SB3 callback, recording the agent's hyperparameters under ``config.sb3`` only.

    ``WandbCallback`` copies every attribute of the algorithm into the run's config, objects as
    their ``str()`` (``_last_obs``, ``rollout_buffer``, ``_logger``, ...): internals that fill the
    config and change from run to run. Here: the public numbers and names, and the schedules'
    starting values (SB3 turns ``learning_rate`` and ``clip_range`` into functions of progress).
    """

    def _init_callback(self) -> None:
        values: dict[str, Any] = {"algo": type(self.model).__name__}
        for key, value in vars(self.model).items():
            if key.startswith("_"):
                continue
            if type(value) in (int, float, str, bool):
                values[key] = value
            elif key in ("learning_rate", "clip_range", "clip_range_vf") and callable(value):
                values[key] = float(value(1.0))  # the schedule at the start (constant here)
        wandb.config.setdefaults({"sb3": values})


class WandbKVWriter(KVWriter):
    """Sends SB3's logger records (policy loss, value loss, entropy, approx KL, ...) to W&B.

    SB3 reaches W&B either through TensorBoard syncing (another dependency and a
    second copy of every record) or through an output format like this one.
    """

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        numeric = {
            f"agent/{k}": v
            for k, v in key_values.items()
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
        }
        if numeric and wandb.run is not None:
            wandb.log(numeric, step=int(step))

    def close(self) -> None:
        pass


WANDB_ID = "wandb_id.txt"


def persistent_run_id(run_dir: Path) -> str:
    """The W&B run id kept in ``run_dir`` (made there the first time): a run continued later, by a
    resume or in another session, logs on to the same W&B run instead of starting another."""
    id_file = Path(run_dir) / WANDB_ID
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id)
    return run_id


class WandbRun:
    """One W&B run for one training run; resumed under the same id when the training run resumes."""

    def __init__(
        self,
        mode: str,
        run_dir: Path,
        config: dict[str, Any],
        *,
        project: str,
        entity: str | None,
        group: str,
        tags: list[str],
        name: str,
        layer_names: list[str],
    ) -> None:
        run_id = persistent_run_id(run_dir)
        self.layer_names = layer_names
        try:
            self.run = wandb.init(
                mode=mode,
                # The run's folder unless told otherwise, absolute: wandb resolves a relative one against
                # the working directory of its first run in the process, not the current one.
                dir=os.environ.get("WANDB_DIR") or str(Path(run_dir).resolve()),
                project=project,
                entity=entity,
                group=group,
                tags=tags,
                name=name,
                id=run_id,
                resume="allow",
                config=config,
                settings=wandb.Settings(silent=True, console="off"),
            )
        except wandb.errors.Error as error:
            raise ValueError(
                f"W&B could not start a {mode} run: {error} Run `wandb login` or set WANDB_API_KEY, "
                "or log with --wandb offline (sync later with `wandb sync`)"
            ) from error

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        step = int(payload["step"])
        if event == "step":
            rates = np.asarray(payload["learning_rates"], dtype=np.float64)
            data = {
                "step/reward": payload["reward"],
                "step/loss": payload["loss"],
                "step/skipped_updates": payload["skipped_updates"],
                "step/episode": payload["episode"],
                "step/epoch": payload["epoch"],
                "lr/mean": float(rates.mean()),
                "lr/min": float(rates.min()),
                "lr/max": float(rates.max()),
            }
            data.update(
                {f"lr/{name}": float(rate) for name, rate in zip(self.layer_names, rates, strict=True)}
            )
            wandb.log(data, step=step)
        elif event == "epoch":
            wandb.log(
                {"epoch/train_accuracy": payload["train_accuracy"], "epoch/index": payload["global_epoch"]},
                step=step,
            )
        elif event == "episode":
            data = {"episode/mean_reward": payload["mean_reward"], "episode/index": payload["episode"]}
            if payload.get("val_accuracy") is not None:
                data["episode/val_accuracy"] = payload["val_accuracy"]
            wandb.log(data, step=step)

    def finish(
        self, results: dict[str, Any], run_dir: Path, images: dict[str, Path], files: list[Path]
    ) -> None:
        step = int(results["steps"])
        wandb.log({key: wandb.Image(str(path)) for key, path in images.items()}, step=step)
        keys = ("final_val_accuracy", "final_test_accuracy", "wall_time_s", "images_seen", "skipped_updates")
        metadata = {k: results[k] for k in ("env_id", "algo", "final_test_accuracy")}
        self.close({key: results[key] for key in keys}, files, "finetune-run", metadata)

    def close(
        self, summary: dict[str, Any], files: list[Path], artifact_type: str, metadata: dict[str, Any]
    ) -> None:
        """Summary values, the files as one artifact, then the run ends (offline: how to upload it)."""
        for key, value in summary.items():
            self.run.summary[key] = value
        artifact = wandb.Artifact(f"run-{self.run.id}", type=artifact_type, metadata=metadata)
        for path in files:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)
        offline = self.run.settings.mode == "offline"
        folder = Path(self.run.dir).parent
        self.run.finish()
        if offline:
            print(f"W&B offline run saved in {folder}; upload it with: wandb sync {folder}")

    def abort(self) -> None:
        if wandb.run is not None:
            wandb.finish(exit_code=1)


def start_wandb(config: RunConfig, run_dir: Path, base: FineTuneEnv) -> WandbRun:
    """The W&B run of a training run, grouped ``<env>/<dataset>/r<rate>/<method>[-<digest>]`` unless
    the configuration names a group, so that seeds of one setting compare side by side and two
    settings of a sweep (the digest of the rest of the configuration) never share a group."""
    dataset = base.config.get("dataset")
    rate = base.config.get("sampling_rate")
    digest = config.setting_digest()
    group = config.wandb_group or (
        f"{config.env_id}/{dataset}/r{rate}/{config.method}" + (f"-{digest}" if digest else "")
    )
    return WandbRun(
        config.wandb_mode,
        run_dir,
        {**config.to_json(), "env_config": jsonable(base.config)},
        project=config.wandb_project,
        entity=config.wandb_entity,
        group=group,
        tags=list(config.wandb_tags) + [config.env_id, str(dataset), config.algo],
        name=f"{config.method}-{dataset}-r{rate}-s{config.seed}",
        layer_names=list(base.layer_names),
    )
