"""The run directory: what a run writes, under which names, and who may touch it.

Every file name a run directory holds is defined here once. A run holds an advisory lock
(``fcntl``) on its directory for its whole life, so a second process cannot write, replace
or resume it meanwhile. ``--overwrite`` replaces only a directory that a run made (it holds
:data:`MARKER`), never another folder, and deletes the old run only once the new one has its
first checkpoint: until then the old run waits in :data:`REPLACED` inside the folder and comes
back if the new run fails, is stopped (Ctrl-C) or is killed (then at the next command that opens
the folder). A run that fails before its first checkpoint leaves nothing behind, so the corrected
command can be run as it is.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .config import RunConfig

CONFIG = "config.json"  # the run's configuration, written first; --resume reads it
CHECKPOINT = "checkpoint.pt"  # after every epoch, removed when the run finishes
RESULTS = "results.json"  # written last: its presence means the run finished
FINAL_MODEL = "final_model.pt"
AGENT_DIR = "agent"
LR_SCHEDULE = "lr_schedule.npz"
LR_HEATMAP = "lr_heatmap.png"
ACCURACY_PLOT = "accuracy.png"
MARKER = ".finetune_gym_run"  # says "a finetune-gym run made this folder": --overwrite may replace it
LOCK = ".lock"  # held (fcntl) by the process running the run; holds its PID
REPLACED = ".replaced"  # the run an --overwrite replaces, kept until the new run's first checkpoint


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (exists, is held, has nothing to resume, ...)."""


def recover_replaced(path: Path) -> None:
    """Settle a run that an ``--overwrite`` put aside (:data:`REPLACED`) and whose replacement was
    killed: drop it if the new run reached a checkpoint, else put it back. Only while no process
    holds the folder (its owner settles it itself)."""
    if not (path / REPLACED).is_dir():
        return
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return
    try:
        if (path / CHECKPOINT).is_file() or (path / RESULTS).is_file():
            shutil.rmtree(path / REPLACED)
        else:
            _restore(path)
    finally:
        os.close(fd)


def _restore(path: Path) -> None:
    """Put the run kept in :data:`REPLACED` back in place of what the new run wrote."""
    _clear(path)
    for entry in (path / REPLACED).iterdir():
        os.replace(entry, path / entry.name)
    (path / REPLACED).rmdir()


def _clear(path: Path) -> None:
    """Everything in ``path`` but the lock (held) and the run kept aside."""
    for entry in path.iterdir():
        if entry.name in (LOCK, REPLACED):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def read_config(run_dir: Path) -> RunConfig:
    """The configuration a run directory was started with (for ``--resume``), read-only."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"{str(run_dir)!r} is a file, not a run directory")
    recover_replaced(run_dir)
    if (run_dir / RESULTS).is_file():
        raise RunDirectoryError(f"{str(run_dir)!r} holds a finished run ({RESULTS}); nothing to resume")
    if not (run_dir / CHECKPOINT).is_file():
        raise RunDirectoryError(
            f"{str(run_dir)!r} has no {CHECKPOINT} to resume from; start it again with --overwrite"
        )
    path = run_dir / CONFIG
    try:
        return RunConfig.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise RunDirectoryError(
            f"{str(path)!r} is not a readable run configuration ({error}); start the run again with --overwrite"
        ) from error


class RunDirectory:
    """A claimed run directory: locked until :meth:`release`.

    ``claim`` creates it (new run), replaces it (``overwrite``) or reopens it (``resume``).
    """

    def __init__(self, path: Path, lock_fd: int, created: bool) -> None:
        self.path, self._lock_fd, self.created = path, lock_fd, created

    @classmethod
    def claim(cls, path: Path, config: RunConfig, *, resume: bool, overwrite: bool) -> RunDirectory:
        if resume and overwrite:
            raise RunDirectoryError("--resume and --overwrite exclude each other")
        if path.exists() and not path.is_dir():
            raise RunDirectoryError(f"run directory {str(path)!r} is a file: choose another --run-dir")
        recover_replaced(path)
        existing = path.is_dir() and any(path.iterdir())
        if existing and not resume:
            if not overwrite:
                raise RunDirectoryError(
                    f"run directory {str(path)!r} already exists and is not empty: pass --resume to "
                    "continue it, --overwrite to replace it, or choose another --run-dir"
                )
            if not (path / MARKER).is_file():
                raise RunDirectoryError(
                    f"{str(path)!r} is not a finetune-gym run directory (it has no {MARKER}): --overwrite "
                    "replaces only runs; choose another --run-dir or remove the folder yourself"
                )
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunDirectoryError(
                f"cannot use {str(path)!r} as a run directory: {error.strerror}"
            ) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirectoryError(
                f"run directory {str(path)!r} is in use by another process (PID {holder}); wait for it "
                "to finish or stop it, or choose another --run-dir"
            ) from error
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        directory = cls(path, fd, created)
        try:
            if resume:  # checked again under the lock: another process may have finished it meanwhile
                if (path / RESULTS).is_file() or not (path / CHECKPOINT).is_file():
                    raise RunDirectoryError(f"{str(path)!r} has no unfinished run to resume")
                directory.remove_partial_writes()
            else:
                if existing:  # overwrite: the old run goes aside until the new one has a checkpoint
                    directory.move_aside()
                (path / MARKER).write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
                (path / CONFIG).write_text(json.dumps(config.to_json(), indent=2))
        except BaseException:
            if (path / REPLACED).is_dir():
                _restore(path)
            directory.release()
            raise
        return directory

    def move_aside(self) -> None:
        """Keep the run this one replaces in :data:`REPLACED` (renames: no copy, same disk)."""
        aside = self.path / REPLACED
        aside.mkdir()
        for entry in self.path.iterdir():
            if entry.name not in (LOCK, REPLACED):
                os.replace(entry, aside / entry.name)

    def drop_replaced(self) -> None:
        """The new run has a checkpoint (or finished): the run it replaced is deleted now."""
        shutil.rmtree(self.path / REPLACED, ignore_errors=True)

    def clear(self) -> None:
        _clear(self.path)

    def remove_partial_writes(self) -> None:
        """Temporary files of atomic writes cut short by a kill (no other writer holds the lock)."""
        for partial in self.path.glob(f".{CHECKPOINT}.*"):
            partial.unlink(missing_ok=True)

    def abandon(self) -> None:
        """Undo a start that failed before its first checkpoint: nothing is left behind, and the
        run an ``--overwrite`` replaced is back."""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        elif (self.path / REPLACED).is_dir():
            _restore(self.path)
        else:
            self.clear()
            (self.path / LOCK).unlink(missing_ok=True)

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
