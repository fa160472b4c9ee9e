"""The harness every benchmark runs through: declare cells -> run or resume -> store -> report.

A benchmark declares what to run as jobs (a key, a picklable function and its arguments) and how
to report; the harness runs the missing ones in worker processes, a half-done run resumes from its
checkpoint, and each finished result is appended to a JSON-lines file kept in the repository. The
results file is the store: a key in it is never run again, so any benchmark can be stopped
(Ctrl-C, SIGKILL) and continued in a later session.

Why not a library: the runs are SB3 trainings with their own checkpoints (``run_training``'s
bit-identical resume), so what is left is a scheduler of a few dozen lines over
``concurrent.futures``; a job whose inputs are other jobs' results (a rate chosen on validation, a
search's next trial) becomes ready when they finish, which ``ready()`` is asked again for.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import json
import multiprocessing
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
RUNS_DIR = ROOT / "benchmarks" / "runs"


class ResultsFile:
    """A benchmark's results: one JSON object a line, appended as each job finishes (a stop
    loses at most the runs in flight, which resume from their checkpoints)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def by(self, key: str = "cell") -> dict[str, dict[str, Any]]:
        """The lines by their ``key`` field (a later line of the same key wins)."""
        return {line[key]: line for line in self.lines()}

    def append(self, line: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(line) + "\n")


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(*args)`` in a worker process, returning a JSON-able dict. ``key``
    names it (a job whose key is running is not started twice)."""

    key: str
    fn: Callable[..., dict[str, Any]]
    args: tuple[Any, ...] = ()


def run_jobs(
    pool: futures.Executor,
    ready: Callable[[], Iterable[Job]],
    finished: Callable[[Job, dict[str, Any]], None],
    workers: int,
    max_jobs: int | None = None,
) -> int:
    """Keep ``workers`` jobs running until ``ready()`` has none left; returns how many ran.

    ``ready()`` is asked again whenever a slot frees, after ``finished`` has recorded the last
    result, so it sees every result so far and leaves out what is done (its store) and what
    cannot start yet. A job's exception stops the run (the jobs in flight finish first: the pool
    waits for them), with every result before it recorded."""
    running: dict[futures.Future, Job] = {}
    count = 0
    while True:
        for job in ready():
            if len(running) >= workers or (max_jobs is not None and count + len(running) >= max_jobs):
                break
            if any(job.key == other.key for other in running.values()):
                continue
            running[pool.submit(job.fn, *job.args)] = job
        if not running:
            return count
        complete, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
        for future in complete:
            job = running.pop(future)
            finished(job, future.result())
            count += 1


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def local_pool(workers: int, threads: int) -> Iterator[futures.Executor]:
    """Worker processes on this machine, each with ``threads`` torch threads. Spawned, not forked:
    a forked child of a process that has run torch can deadlock in its thread pools."""
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(threads,)
    ) as pool:
        yield pool


def default_threads(workers: int) -> int:
    """The machine's cores shared by the workers."""
    return max(1, (multiprocessing.cpu_count() or 1) // workers)


def run_or_load(run_dir: Path, make_config: Callable[[], Any]) -> dict[str, Any]:
    """A run's results (without the per-epoch log): read when the run finished, else run it
    through train.py's code path, resuming from its checkpoint when it has one."""
    from finetune_gym.agents.run import run_training
    from finetune_gym.agents.rundir import CHECKPOINT, RESULTS

    if (run_dir / RESULTS).is_file():
        results = json.loads((run_dir / RESULTS).read_text())
    else:
        resume = (run_dir / CHECKPOINT).is_file()
        results = run_training(
            make_config(), run_dir, resume=resume, overwrite=not resume, progress=False, verbose=False
        )
    results.pop("epochs", None)
    return results


def code_version() -> str:
    """The commit the runs come from (``+dirty`` with uncommitted changes): results are comparable
    across sessions only as far as the code between their commits is equivalent."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")
