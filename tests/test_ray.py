"""The benchmarks on Ray (issue 27): jobs as Ray tasks on a cluster, here two simulated nodes on
this machine (``ray.cluster_utils.Cluster``): they land on both, and a worker killed in the
middle of a job loses no finished result while the job resumes from its checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
from ray import cloudpickle  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from benchmarks import harness  # noqa: E402

# This module is not on the Ray workers' path (the benchmarks are): its jobs travel whole.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def where(x: int) -> dict:
    import time

    time.sleep(0.5)  # long enough that the two jobs in flight overlap
    return {"value": x, "node": ray.get_runtime_context().get_node_id()}


def dies_once(folder: str, x: int) -> dict:
    """A job with a checkpoint: it does half its work, saves it, and its worker dies on the first
    attempt; the retried attempt resumes from the checkpoint instead of starting over."""
    checkpoint, attempts = Path(folder) / f"{x}.ckpt", Path(folder) / f"{x}.attempts"
    attempts.write_text(attempts.read_text() + "." if attempts.exists() else ".")
    if not checkpoint.exists():
        checkpoint.write_text(str(x * 10))  # the first half of the work
        if x == 2:
            os._exit(1)  # the worker process dies in the middle of the job
    return {"value": int(checkpoint.read_text()) + x, "attempts": len(attempts.read_text())}


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def run_all(address: str, jobs: list[harness.Job], store: harness.ResultsFile) -> int:
    def ready():
        done = store.by("cell")
        return [job for job in jobs if job.key not in done]

    def finished(job: harness.Job, result: dict) -> None:
        store.append({"cell": job.key, **result})

    with harness.ray_pool(address, workers=2, threads=1) as pool:
        return harness.run_jobs(pool, ready, finished, workers=2)


def test_jobs_land_on_both_nodes_of_a_cluster(cluster, tmp_path):
    store = harness.ResultsFile(tmp_path / "r.jsonl")
    jobs = [harness.Job(f"c{x}", where, (x,)) for x in range(6)]
    assert run_all(cluster.address, jobs, store) == 6
    lines = store.by("cell")
    assert sorted(line["value"] for line in lines.values()) == list(range(6))
    assert len({line["node"] for line in lines.values()}) == 2, lines


def test_a_worker_killed_mid_job_loses_nothing_and_the_job_resumes(cluster, tmp_path):
    store = harness.ResultsFile(tmp_path / "r.jsonl")
    jobs = [harness.Job(f"c{x}", dies_once, (str(tmp_path), x)) for x in range(4)]
    assert run_all(cluster.address, jobs, store) == 4
    lines = store.by("cell")
    assert {k: v["value"] for k, v in lines.items()} == {f"c{x}": 11 * x for x in range(4)}
    assert lines["c2"]["attempts"] == 2  # retried once, from its checkpoint (10x + x, not redone)
    assert all(lines[f"c{x}"]["attempts"] == 1 for x in (0, 1, 3))  # nothing finished ran again


def long_first_half(folder: str, x: int) -> dict:
    """Its first attempt saves a checkpoint, says where it runs, then works on for a while (its node
    is removed meanwhile); a retry finds the checkpoint and finishes at once."""
    import time

    checkpoint, node = Path(folder) / f"{x}.ckpt", ray.get_runtime_context().get_node_id()
    if not checkpoint.exists():
        checkpoint.write_text(str(x * 10))
        (Path(folder) / f"{x}.started").write_text(node)
        time.sleep(20)
    return {"value": int(checkpoint.read_text()) + x, "node": node}


def test_a_node_removed_mid_job_loses_nothing_and_the_job_resumes_elsewhere(tmp_path):
    import threading
    import time

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    side = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    store = harness.ResultsFile(tmp_path / "r.jsonl")
    jobs = [harness.Job(f"c{x}", long_first_half, (str(tmp_path), x)) for x in range(2)]
    try:
        runner = threading.Thread(target=run_all, args=(cluster.address, jobs, store))
        runner.start()
        started = [tmp_path / f"{x}.started" for x in range(2)]
        deadline = time.time() + 120
        while not all(f.exists() for f in started) and time.time() < deadline:
            time.sleep(0.2)
        on_side = [x for x in range(2) if started[x].read_text() == side.node_id]
        assert len(on_side) == 1, "the two jobs should start one on each node"
        cluster.remove_node(side)  # the node dies with its job in the middle of it
        runner.join(timeout=180)
        assert not runner.is_alive()
    finally:
        ray.shutdown()
        cluster.shutdown()
    lines = store.by("cell")
    assert {k: v["value"] for k, v in lines.items()} == {"c0": 0, "c1": 11}
    assert lines[f"c{on_side[0]}"]["node"] != side.node_id  # finished on the head, from its checkpoint
