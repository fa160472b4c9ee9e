"""The benchmarks' harness: jobs run in parallel up to the workers, a job waits for the results it
depends on, a stop loses nothing finished, and the next call runs only what is missing."""

from __future__ import annotations

import concurrent.futures as futures
import sys
import threading
import time

import pytest

from benchmarks import harness


def square(x: int) -> dict:
    time.sleep(0.05)
    return {"value": x * x}


def square_and_threads(x: int) -> dict:
    import torch

    return {"value": x * x, "threads": torch.get_num_threads()}


def fail(x: int) -> dict:
    raise RuntimeError(f"job {x} failed")


class Grid:
    """Four cells a, b, c, d; d reads the results of a and b (as a rate chosen on validation reads
    its family's cells). Results are stored in a results file, as every benchmark stores them."""

    def __init__(self, path, fn=square) -> None:
        self.store = harness.ResultsFile(path)
        self.fn = fn
        self.started: list[str] = []

    def ready(self):
        done = self.store.by("cell")
        for key, x in (("a", 1), ("b", 2), ("c", 3)):
            if key not in done:
                yield harness.Job(key, self.fn, (x,))
        if "d" not in done and {"a", "b"} <= set(done):
            yield harness.Job("d", self.fn, (done["a"]["value"] + done["b"]["value"],))

    def finished(self, job: harness.Job, result: dict) -> None:
        self.started.append(job.key)
        self.store.append({"cell": job.key, **result})


def test_results_file_appends_lines_and_keys_them(tmp_path):
    store = harness.ResultsFile(tmp_path / "sub" / "r.jsonl")
    assert store.lines() == [] and store.by() == {}
    store.append({"cell": "x", "v": 1})
    store.append({"cell": "x", "v": 2})
    store.append({"cell": "y", "v": 3})
    assert [line["v"] for line in store.lines()] == [1, 2, 3]
    assert store.by()["x"]["v"] == 2  # a later line of the same key wins


def test_dependent_jobs_wait_and_a_stopped_run_resumes_with_only_the_missing_ones(tmp_path):
    grid = Grid(tmp_path / "r.jsonl")
    with futures.ThreadPoolExecutor(2) as pool:
        assert harness.run_jobs(pool, grid.ready, grid.finished, workers=2, max_jobs=2) == 2
    assert sorted(grid.store.by()) == ["a", "b"]  # stopped after two; both stored
    again = Grid(tmp_path / "r.jsonl")
    with futures.ThreadPoolExecutor(2) as pool:
        assert harness.run_jobs(pool, again.ready, again.finished, workers=2) == 2
    assert sorted(again.started) == ["c", "d"]  # nothing finished ran twice
    assert again.store.by()["d"]["value"] == (1 + 4) ** 2  # d read a's and b's results


def test_never_more_jobs_in_flight_than_workers(tmp_path):
    lock, running, peak = threading.Lock(), [0], [0]

    def counted(x: int) -> dict:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return {"value": x}

    grid = Grid(tmp_path / "r.jsonl", counted)
    with futures.ThreadPoolExecutor(4) as pool:
        assert harness.run_jobs(pool, grid.ready, grid.finished, workers=2) == 4
    assert peak[0] == 2


def test_a_failing_job_stops_the_run_and_keeps_what_finished(tmp_path):
    grid = Grid(tmp_path / "r.jsonl")
    original = grid.ready

    def ready():
        for job in original():
            yield harness.Job(job.key, fail, job.args) if job.key == "c" else job

    with futures.ThreadPoolExecutor(1) as pool, pytest.raises(RuntimeError, match="job 3 failed"):
        harness.run_jobs(pool, ready, grid.finished, workers=1)
    assert sorted(grid.store.by()) == ["a", "b"]


@pytest.mark.parametrize("executor", ["processes", "ray"])
def test_jobs_run_in_worker_processes_with_their_thread_count(tmp_path, executor):
    if executor == "ray":
        pytest.importorskip("ray", reason="the [ray] extra is not installed")
        from ray import cloudpickle

        # This test module is not on the Ray workers' path (the benchmarks are): send its jobs whole.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    grid = Grid(tmp_path / "r.jsonl", square_and_threads)
    with harness.pool(executor, workers=2, threads=1) as pool:
        assert harness.run_jobs(pool, grid.ready, grid.finished, workers=2) == 4
    assert {k: v["value"] for k, v in grid.store.by().items()} == {"a": 1, "b": 4, "c": 9, "d": 25}
    assert {v["threads"] for v in grid.store.lines()} == {1}


def test_the_default_executor_is_ray_where_it_is_installed(monkeypatch):
    import argparse
    import importlib.util

    parser = argparse.ArgumentParser()
    harness.add_pool_options(parser, workers=2, threads=1)
    args = parser.parse_args([])
    assert args.executor == "auto"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "ray" else real(name))
    assert harness.pool_from_args(args).func.__name__ == "ray_pool"
    assert harness.pool_from_args(parser.parse_args(["--address", "auto"])).func.__name__ == "ray_pool"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "ray" else real(name))
    assert harness.pool_from_args(args).func.__name__ == "local_pool"
