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
import importlib.util
import json
import multiprocessing
import os
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


def with_threads(threads: int, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """A job in a Ray worker: Ray reuses its worker processes, so the thread count is set per job."""
    _init_worker(threads)
    return fn(*args)


class RayPool(futures.Executor):
    """Jobs as Ray tasks, each asking the cluster for ``threads`` CPUs (and ``gpus`` GPUs): Ray
    places them on whichever node has room. A task whose worker dies is retried (``max_retries``)
    and resumes from its run's checkpoint, as a job does after any stop."""

    def __init__(self, threads: int, gpus: float = 0.0, max_retries: int = 2) -> None:
        import ray

        self.threads = threads
        self._task = ray.remote(with_threads).options(
            num_cpus=threads, num_gpus=gpus, max_retries=max_retries, retry_exceptions=False
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        if kwargs:
            raise TypeError("a Ray job takes positional arguments only")
        return self._task.remote(self.threads, fn, *args).future()


@contextlib.contextmanager
def ray_pool(
    address: str | None, workers: int, threads: int, gpus: float = 0.0
) -> Iterator[futures.Executor]:
    """Ray tasks on a running cluster (``address``: ``"auto"`` or ``HOST:PORT``), or on a Ray started
    here for the call with ``workers * threads`` CPUs. Every node must hold this repository at the
    same path (its workers import the benchmarks from it) and the data where the cells read it."""
    import ray

    from finetune_gym.agents.ray_vec_env import connect

    started = connect(
        address,
        workers * threads,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        logging_level="WARNING",
    )
    try:
        yield RayPool(threads, gpus)
    finally:
        if started:
            ray.shutdown()


def pool(
    executor: str, workers: int, threads: int, address: str | None = None
) -> contextlib.AbstractContextManager[futures.Executor]:
    """The benchmarks' ``--executor``: ``"ray"`` (local, or the cluster at ``--address``),
    ``"processes"`` (spawned processes on this machine, without Ray), or ``"auto"``: Ray where it
    is installed, as fast as the process pool on this machine's cells or faster
    (results/executors_cpu.md), and the same command then reaches a cluster."""
    installed = importlib.util.find_spec("ray") is not None
    if executor == "auto":
        executor = "ray" if installed or address else "processes"
    if executor == "processes":
        if address:
            raise SystemExit("--address needs --executor ray: a cluster is reached through Ray")
        return local_pool(workers, threads)
    if not installed:
        raise SystemExit("--executor ray needs Ray: pip install -e '.[ray]' (or pass --executor processes)")
    return ray_pool(address, workers, threads)


def add_pool_options(parser: Any, workers: int = 1, threads: int | None = None) -> None:
    """The options every benchmark's ``run`` takes to say where its jobs run."""
    parser.add_argument("--workers", type=int, default=workers, help="jobs run at once")
    parser.add_argument(
        "--threads",
        type=int,
        default=threads,
        help="torch threads per job (default: this machine's cores shared by the workers); pass 1 "
        "when another job shares the machine, as 2 threads on a busy core run many times slower",
    )
    parser.add_argument(
        "--executor",
        choices=["auto", "ray", "processes"],
        default="auto",
        help="where jobs run: Ray tasks (pip install -e '.[ray]'; a cluster with --address) or "
        "spawned processes on this machine; auto (default): Ray where it is installed",
    )
    parser.add_argument(
        "--address",
        help="a running Ray cluster: 'auto' on one of its nodes, or HOST:PORT (implies --executor ray)",
    )


def pool_from_args(args: Any) -> contextlib.AbstractContextManager[futures.Executor]:
    """The pool ``add_pool_options`` describes (``--address`` implies Ray)."""
    executor = "ray" if args.address else args.executor
    return pool(executor, args.workers, args.threads or default_threads(args.workers), args.address)


WANDB_MODES = ("disabled", "offline", "online")


def add_tune_logging_options(parser: Any) -> None:
    """The options a Ray Tune benchmark (a search, a PBT population) takes to log its trials.

    Tune writes each trial's TensorBoard events beside its results (``tensorboard --logdir`` on
    the experiment folder) whatever these say; W&B is opt-in, as for ``train.py``."""
    parser.add_argument(
        "--wandb-mode",
        choices=WANDB_MODES,
        default="disabled",
        help="log every trial to Weights & Biases (offline: into the trial's folder, for `wandb sync`)",
    )
    parser.add_argument("--wandb-project", default="finetune-gym", help="W&B project (default %(default)s)")


def tune_callbacks(mode: str, project: str, group: str) -> list[Any]:
    """Tune's own W&B logger (``WandbLoggerCallback``: one W&B run per trial, grouped by experiment)
    where ``mode`` asks for it; nothing for ``disabled``. The mode goes to the environment as well:
    Tune's logger looks for an API key unless ``WANDB_MODE`` says offline."""
    if mode not in WANDB_MODES:
        raise ValueError(f"W&B mode {mode!r}: choose one of {', '.join(WANDB_MODES)}")
    if mode == "disabled":
        return []
    from ray.air.integrations.wandb import WandbLoggerCallback

    os.environ["WANDB_MODE"] = mode
    return [WandbLoggerCallback(project=project, group=group, mode=mode, log_config=True)]


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
