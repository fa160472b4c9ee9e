"""What a finished run leaves in its directory, and how its final model is rebuilt.

``results.json`` (config, final accuracies, per-episode and per-epoch records, wall time,
images seen, machine, timing), ``final_model.pt`` (state dict plus what rebuilds it,
loadable with ``weights_only=True``), ``agent/``, ``lr_schedule.npz`` and two plots.
``results.json`` is written last: its presence means the run finished.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_gym import FineTuneEnv
from finetune_gym.device import describe_machine
from finetune_gym.storage import UnreadableFile, load_tensors

from . import plots
from .config import RunConfig
from .recording import RunRecorder
from .registry import Agent, save_agent
from .rundir import ACCURACY_PLOT, AGENT_DIR, FINAL_MODEL, LR_HEATMAP, LR_SCHEDULE, RESULTS
from .trust import check_code


def jsonable(obj: Any) -> Any:
    """``obj`` as JSON values: paths as strings, anything else JSON lacks as its repr."""
    return json.loads(
        json.dumps(obj, default=lambda o: str(o) if isinstance(o, (Path, os.PathLike)) else repr(o))
    )


def write_outputs(
    run_dir: Path,
    config: RunConfig,
    agent: Agent,
    recorder: RunRecorder,
    wall_time_s: float,
    timing: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write the run directory's outputs; returns the results and the plots' paths."""
    base: FineTuneEnv = recorder.unwrapped
    final = recorder.final
    if final is None:
        raise RuntimeError("the run ended without capturing the final model: the last episode did not finish")
    env_config = jsonable(base.config)
    torch.save(
        {
            "state_dict": final["state_dict"],
            "model": env_config["model"],
            "num_classes": len(base.dataset.classes),
            "env_id": config.env_id,
            "env_kwargs": env_config,
            "layer_names": list(base.layer_names),
            "val_accuracy": final["val_accuracy"],
            "test_accuracy": final["test_accuracy"],
        },
        run_dir / FINAL_MODEL,
    )
    schedule = recorder.lr_schedule()
    np.savez_compressed(run_dir / LR_SCHEDULE, **schedule)
    save_agent(agent, run_dir / AGENT_DIR, config.algo)
    title = f"{config.algo} on {config.env_id}"
    images = {
        "lr_heatmap": plots.lr_heatmap(
            schedule, run_dir / LR_HEATMAP, f"{title}: learning rate by layer and step"
        ),
        "accuracy": plots.accuracy_curves(
            recorder.epochs, recorder.episodes, run_dir / ACCURACY_PLOT, config.epochs_per_episode, title
        ),
    }
    results = {
        "env_id": config.env_id,
        "algo": config.algo,
        "config": config.to_json(),
        "env_config": env_config,
        "final_val_accuracy": final["val_accuracy"],
        "final_test_accuracy": final["test_accuracy"],
        "episodes": [
            {"episode": e["episode"], "val_accuracy": e.get("val_accuracy"), "mean_reward": e["mean_reward"]}
            for e in recorder.episodes
        ],
        "epochs": recorder.epochs,
        "wall_time_s": wall_time_s,
        "steps": recorder.global_step,
        "images_seen": int(sum(recorder.step_log["images"])),
        "skipped_updates": recorder.skipped_updates,  # non-finite loss: weights and BatchNorm untouched
        "machine": describe_machine(base.device),
        "timing": timing,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (run_dir / RESULTS).write_text(json.dumps(results, indent=2))
    return results, images


def load_final_model(
    path: str | os.PathLike, device: str = "cpu", *, trust_code: bool = False
) -> tuple[FineTuneEnv, dict[str, Any]]:
    """Rebuild the environment of a run with its fine-tuned model loaded, to re-evaluate it.

    Returns the :class:`~finetune_gym.FineTuneEnv` (same data, split and
    preprocessing as the run) and the saved metadata. Source weights are not
    fetched: the saved state dict replaces every tensor. A model the file names by import path is
    imported only with ``trust_code`` (:mod:`.trust`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist: a run directory holds {FINAL_MODEL} when it finished"
        )
    try:
        meta = load_tensors(path)
    except UnreadableFile as error:
        raise ValueError(f"final model {error}") from error
    if not (
        isinstance(meta, dict)
        and isinstance(meta.get("env_kwargs"), dict)
        and isinstance(meta.get("state_dict"), dict)
    ):
        raise ValueError(
            f"{str(path)!r} is not a finetune-gym final model: it must be a dict with the state_dict and "
            "the env_kwargs that rebuild it (as train.py writes it)"
        )
    check_code(meta["env_kwargs"], repr(str(path)), trust_code=trust_code)
    kwargs = dict(meta["env_kwargs"])
    if not isinstance(kwargs.get("model"), str) or kwargs["model"].startswith(("<", "(")):
        raise ValueError(
            f"{str(path)!r} was trained with a custom nn.Module; rebuild that module and load "
            "meta['state_dict'] into it yourself"
        )
    kwargs.update(weights=None, device=device)
    env = FineTuneEnv(**kwargs)
    try:
        env.model.load_state_dict(meta["state_dict"])
    except RuntimeError as error:
        raise ValueError(
            f"{str(path)!r} does not match the model its configuration describes: {error}"
        ) from error
    return env, meta
