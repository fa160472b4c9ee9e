"""The run directory: what a run writes, under which names, and when a folder may be used.

Every file name a run directory holds is defined here once; ``train.py``,
``evaluate.py``, the benchmarks and the tests refer to these names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .config import RunConfig

CONFIG = "config.json"  # the run's configuration, written first; --resume reads it
CHECKPOINT = "checkpoint.pt"  # after every epoch, removed when the run finishes
RESULTS = "results.json"  # written last: its presence means the run finished
FINAL_MODEL = "final_model.pt"
AGENT_DIR = "agent"
LR_SCHEDULE = "lr_schedule.npz"
LR_HEATMAP = "lr_heatmap.png"
ACCURACY_PLOT = "accuracy.png"


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (exists, or has nothing to resume)."""


def prepare_run_dir(run_dir: Path, config: RunConfig, resume: bool, overwrite: bool) -> RunConfig:
    """Create, clear or reopen ``run_dir``; on resume the saved configuration wins."""
    if resume and overwrite:
        raise RunDirectoryError("--resume and --overwrite exclude each other")
    if resume:
        if (run_dir / RESULTS).is_file():
            raise RunDirectoryError(f"{str(run_dir)!r} holds a finished run ({RESULTS}); nothing to resume")
        if not (run_dir / CHECKPOINT).is_file():
            raise RunDirectoryError(
                f"{str(run_dir)!r} has no {CHECKPOINT} to resume from; start it again with --overwrite"
            )
        return RunConfig.from_json(json.loads((run_dir / CONFIG).read_text()))
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirectoryError(
                f"run directory {str(run_dir)!r} already exists and is not empty: pass --resume to continue "
                "it, --overwrite to replace it, or choose another --run-dir"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(json.dumps(config.to_json(), indent=2))
    return config
