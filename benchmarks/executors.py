"""Benchmark "executors" (issue 27): is running the grid's cells as Ray tasks as fast as the
process pool, and what does Ray cost to start and to keep?

Protocol: the same real grid cells (``--cells``, default four one-run cells of oracle_mnist at
15%, each cut to ``--epochs`` epochs) run through each executor, ``--workers`` at once with
``--threads`` each, into a scratch store and scratch run folders (nothing is read from or written
to the committed results). Rounds interleave the executors, the order rotated each round; each
executor's figure is its median round. Per round: the wall time from asking for the pool to the
last result (start-up included) and from the first job submitted (start-up left out), cells per
hour from each; Ray's start-up (``ray.init`` of a local Ray) and the resident memory of the
processes Ray adds (the driver's descendants once Ray is up, before any job). The results of the
same cell must agree across executors (the same code path): the benchmark checks it.

    python benchmarks/executors.py --out benchmarks/results/executors_cpu.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python benchmarks/executors.py): the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import grid, harness, timing  # noqa: E402

CELLS = [
    "oracle_mnist/prodigy/r0.15/s0",
    "oracle_mnist/schedulefree_adamw/r0.15/s0",
    "oracle_mnist/ldog/r0.15/s0",
    "oracle_mnist/prodigy_layerwise/r0.15/s0",
]


def parse_cell(cell: str) -> tuple[str, float, int, str]:
    """``dataset/method/r<rate>/s<seed>`` (or ``method/r<rate>/s<seed>`` on GTSRB) as the grid's
    (method, rate, seed, dataset)."""
    parts = cell.split("/")
    dataset = "gtsrb" if len(parts) == 3 else parts.pop(0)
    method, rate, seed = parts
    if method not in grid.METHODS or not rate.startswith("r") or not seed.startswith("s"):
        raise SystemExit(f"not a grid cell: {cell!r} (e.g. {CELLS[0]})")
    return method, float(rate[1:]), int(seed[1:]), dataset


def run_scratch_cell(cell: str, run_dir: str, epochs: int, done: dict[str, Any]) -> dict[str, Any]:
    """One grid cell, cut to ``epochs`` epochs, in a scratch run folder (a job of either executor)."""
    from dataclasses import replace

    method, rate, seed, dataset = parse_cell(cell)
    config = replace(grid.run_config(method, rate, seed, done, dataset), epochs_per_episode=epochs)
    results = harness.run_or_load(Path(run_dir), lambda: config)
    return {"cell": cell, "test": results["final_test_accuracy"], "val": results["final_val_accuracy"]}


def descendants_rss_mib() -> float:
    """Resident memory of this process's descendants (a local Ray's raylet, GCS, workers)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            status = (entry / "status").read_text()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        found = [line for line in status.splitlines() if line.startswith("VmRSS:")]
        rss[int(entry.name)] = int(found[0].split()[1]) / 1024 if found else 0.0
    total, stack = 0.0, list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0.0)
        stack += children.get(pid, [])
    return total


def one_round(executor: str, cells: list[str], args: argparse.Namespace) -> dict[str, Any]:
    done = grid.load_done()
    with tempfile.TemporaryDirectory(prefix="finetune_gym_executors_") as scratch:
        store = harness.ResultsFile(Path(scratch) / "results.jsonl")
        jobs = [
            harness.Job(cell, run_scratch_cell, (cell, f"{scratch}/{i}", args.epochs, done))
            for i, cell in enumerate(cells)
        ]

        def ready():
            finished = store.by("cell")
            return [job for job in jobs if job.key not in finished]

        asked = time.perf_counter()
        with harness.pool(executor, args.workers, args.threads) as pool:
            up = time.perf_counter()
            memory = descendants_rss_mib() if executor == "ray" else None
            harness.run_jobs(pool, ready, lambda job, result: store.append(result), args.workers)
            end = time.perf_counter()
        results = store.by("cell")
    return {
        "whole_s": end - asked,
        "jobs_s": end - up,
        "startup_s": up - asked,
        "memory_mib": memory,
        "results": {cell: (r["test"], r["val"]) for cell, r in results.items()},
    }


def render(rounds: dict[str, list[dict[str, Any]]], args: argparse.Namespace, load: tuple) -> str:
    median = lambda executor, key: statistics.median(r[key] for r in rounds[executor])  # noqa: E731
    per_hour = lambda seconds: 3600 * len(args.cells) / seconds  # noqa: E731
    ref = "processes"
    lines = [
        f"### Grid cells through each executor: {len(args.cells)} cells x {args.epochs} epochs, "
        f"{args.workers} workers x {args.threads} thread(s), median of {args.rounds} rounds "
        f"({timing.machine('cpu')})",
        "",
        "| executor | wall, start-up included (s) | cells/hour | ratio | jobs alone (s) | cells/hour | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for executor in rounds:
        whole, jobs = median(executor, "whole_s"), median(executor, "jobs_s")
        lines.append(
            f"| {executor} | {whole:.1f} | {per_hour(whole):.0f} | {per_hour(whole) / per_hour(median(ref, 'whole_s')):.3f} | "
            f"{jobs:.1f} | {per_hour(jobs):.0f} | {per_hour(jobs) / per_hour(median(ref, 'jobs_s')):.3f} |"
        )
    if "ray" in rounds:
        lines += [
            "",
            f"Ray's start-up (a local `ray.init` with {args.workers * args.threads} CPUs, until the pool is "
            f"ready): median {median('ray', 'startup_s'):.1f} s; the process pool's: "
            f"{median('processes', 'startup_s'):.2f} s (its workers start with the first jobs). Resident "
            f"memory of the processes a local Ray adds, before any job: median {median('ray', 'memory_mib'):.0f} MiB.",
        ]
    lines += [
        "",
        f"Cells: {', '.join(args.cells)}. 1-minute load average before: {load[0]:.2f}, after: "
        f"{load[1]:.2f} ({os.cpu_count()} cores); the rounds interleave the executors, so load hits both alike.",
        "The same cell gave the same accuracies through both executors in every round (checked).",
        f"Command: `python benchmarks/executors.py {' '.join(args.argv)}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", nargs="+", default=CELLS, help="grid cell ids")
    parser.add_argument("--epochs", type=int, default=10, help="each cell cut to this many epochs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="append the markdown table here")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    for cell in args.cells:
        parse_cell(cell)
    load_before = os.getloadavg()[0]
    rounds: dict[str, list[dict[str, Any]]] = {"processes": [], "ray": []}
    for r in range(args.rounds):
        for executor in timing.rotated(list(rounds), r):
            outcome = one_round(executor, args.cells, args)
            rounds[executor].append(outcome)
            print(f"round {r}: {executor} {outcome['whole_s']:.1f} s", flush=True)
    reference = rounds["processes"][0]["results"]
    for executor, outcomes in rounds.items():
        for outcome in outcomes:
            if outcome["results"] != reference:
                raise SystemExit(f"{executor} gave other results: {outcome['results']} vs {reference}")
    text = render(rounds, args, (load_before, os.getloadavg()[0]))
    print(text, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
