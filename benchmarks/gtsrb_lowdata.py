"""Benchmark "GTSRB low-data": does RL-Tune beat well-tuned fine-tuning on real data?

Protocol (fixed before any result was seen; see benchmarks/README.md):
- Source: the CIFAR-10 ResNet-20 checkpoint; target: GTSRB (43 classes, 32 px), from ../shared/data.
- Training pool: one frame per physical track of the official training set (1,307 images);
  sampling rates 15/30/50/100% of it; validation: 20% of the sampled set, held out by track;
  test: the full official test set (12,630 images), used for no choice.
- Budget, identical for all: 50 passes over the sampled data, batch 32, padded random crop, no flip.
  RL agents and the random control: 5 episodes x 10 epochs with the EMA scheme (0.2).
  Plain fine-tuning (uniform), layerwise_decay, linear_probe: one 50-epoch episode, no EMA.
- "uniform (best on val)" picks, per sampling rate, the uniform rate with the best mean validation
  accuracy over seeds; that rate is also run inside the EMA scheme (uniform_best_ema).
- Seeds 0, 1, 2. The paper's knobs at 15% with RL-Tune's paper reward.

Every cell runs through agents.run.run_training, the code path of train.py. Finished cells are
appended to benchmarks/results/gtsrb_lowdata.jsonl (kept in the repository) and skipped on the next
call, so the grid can be completed over several sessions:

    python benchmarks/gtsrb_lowdata.py run --workers 2     # resumable; Ctrl-C safe
    python benchmarks/gtsrb_lowdata.py report              # tables, CSV and plot from the results file
    python benchmarks/gtsrb_lowdata.py status
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import multiprocessing
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents import report  # noqa: E402
from finetune_gym.wrappers import DEFAULT_EMA  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RESULTS_DIR = ROOT / "benchmarks" / "results"
RESULTS_FILE = RESULTS_DIR / "gtsrb_lowdata.jsonl"
RUNS_DIR = ROOT / "benchmarks" / "runs" / "gtsrb_lowdata"
NAME = "gtsrb_lowdata"

RATES = (0.15, 0.3, 0.5, 1.0)
SEEDS = (0, 1, 2)
UNIFORM_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
KNOB_RATE = 0.15

BASE_ENV = {
    "data_root": str(SHARED),
    "weights": str(SHARED / "resnet_cifar10" / "resnet20-12fca82f.th"),
    "batch_size": 32,
    "device": "cpu",
}


@dataclass(frozen=True)
class Method:
    algo: str
    episodes: int = 5
    epochs_per_episode: int = 10
    ema: float | None = DEFAULT_EMA  # the protocol's 0.2, the paper's
    env: dict[str, Any] = field(default_factory=dict)
    agent: dict[str, Any] = field(default_factory=dict)
    rates: tuple[float, ...] = RATES
    depends_on_uniform: bool = False  # its learning rate is chosen on validation among the uniform runs


def _plain(algo: str, **agent: Any) -> Method:
    return Method(algo, episodes=1, epochs_per_episode=50, ema=None, agent=agent)


METHODS: dict[str, Method] = {
    "rl_tune": Method("rl_tune"),
    "rl_tune_next_batch": Method("rl_tune", env={"reward": "next_batch"}),
    "rl_tune_next_batch_log": Method("rl_tune", env={"reward": "next_batch", "lr_scale": "log"}),
    "ppo": Method("ppo"),
    "a2c": Method("a2c"),
    "random": Method("random"),
    "random_log": Method("random", env={"lr_scale": "log"}),
    **{f"uniform_{lr:g}": _plain("uniform", lr=lr) for lr in UNIFORM_RATES},
    "uniform_best_ema": Method("uniform", depends_on_uniform=True),
    "layerwise_decay": _plain("layerwise_decay"),
    "linear_probe": _plain("linear_probe"),
    # The paper's knobs, at 15% only, RL-Tune with the paper's reward.
    "knob_episodes_1": Method("rl_tune", episodes=1, rates=(KNOB_RATE,)),
    "knob_epochs_per_episode_1": Method("rl_tune", epochs_per_episode=1, rates=(KNOB_RATE,)),
    "knob_epochs_per_episode_5": Method("rl_tune", epochs_per_episode=5, rates=(KNOB_RATE,)),
    "knob_lr_steps_10": Method("rl_tune", env={"n_lr_steps": 10}, rates=(KNOB_RATE,)),
    "knob_lr_steps_25": Method("rl_tune", env={"n_lr_steps": 25}, rates=(KNOB_RATE,)),
    "knob_ema_0.8": Method("rl_tune", ema=0.8, rates=(KNOB_RATE,)),
}
UNIFORM_METHODS = [f"uniform_{lr:g}" for lr in UNIFORM_RATES]
MAIN_ORDER = [
    "rl_tune",
    "rl_tune_next_batch",
    "rl_tune_next_batch_log",
    "ppo",
    "a2c",
    "random",
    "random_log",
    "uniform (best on val)",
    "uniform_best_ema",
    *UNIFORM_METHODS,
    "layerwise_decay",
    "linear_probe",
]
KNOB_ORDER = ["rl_tune", *[m for m in METHODS if m.startswith("knob_")]]


def cell_id(method: str, rate: float, seed: int) -> str:
    return f"{method}/r{rate:g}/s{seed}"


def all_cells() -> list[tuple[str, float, int]]:
    """Cheap rates first; within a rate, all seeds of independent methods, then the dependent one."""
    cells = []
    for rate in sorted(RATES):
        for deps in (False, True):
            for seed in SEEDS:
                cells += [
                    (m, rate, seed)
                    for m, spec in METHODS.items()
                    if rate in spec.rates and spec.depends_on_uniform == deps
                ]
    return cells


def load_done() -> dict[str, dict[str, Any]]:
    if not RESULTS_FILE.is_file():
        return {}
    lines = [json.loads(line) for line in RESULTS_FILE.read_text().splitlines() if line.strip()]
    return {line["cell"]: line for line in lines}


def best_uniform_lr(done: dict[str, dict[str, Any]], rate: float) -> float | None:
    """The uniform learning rate with the best mean validation accuracy at ``rate`` (all seeds done)."""
    scores = {}
    for lr in UNIFORM_RATES:
        lines = [done.get(cell_id(f"uniform_{lr:g}", rate, s)) for s in SEEDS]
        if any(line is None for line in lines):
            return None
        scores[lr] = sum(line["results"]["final_val_accuracy"] for line in lines) / len(lines)
    return max(scores, key=scores.get)


def run_config(method: str, rate: float, seed: int, done: dict[str, dict[str, Any]]):
    from agents.config import RunConfig

    spec = METHODS[method]
    agent = dict(spec.agent)
    if spec.depends_on_uniform:
        agent["lr"] = best_uniform_lr(done, rate)
    return RunConfig(
        env_id="FineTune-CIFARResNet-v0",
        algo=spec.algo,
        seed=seed,
        episodes=spec.episodes,
        epochs_per_episode=spec.epochs_per_episode,
        ema=spec.ema,
        env_kwargs={**BASE_ENV, "sampling_rate": rate, **spec.env},
        agent_kwargs=agent,
        label=method,
    )


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_cell(method: str, rate: float, seed: int, done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Run (or resume) one cell in this process; returns its results line."""
    from agents.run import run_training
    from agents.rundir import CHECKPOINT, RESULTS

    run_dir = RUNS_DIR / cell_id(method, rate, seed)
    if (run_dir / RESULTS).is_file():
        results = json.loads((run_dir / RESULTS).read_text())
    else:
        resume = (run_dir / CHECKPOINT).is_file()
        config = run_config(method, rate, seed, done)
        results = run_training(
            config, run_dir, resume=resume, overwrite=not resume, progress=False, verbose=False
        )
    results.pop("epochs", None)
    return {
        "cell": cell_id(method, rate, seed),
        "method": method,
        "sampling_rate": rate,
        "seed": seed,
        "results": results,
    }


def code_version() -> str:
    """The commit the cells run from (``+dirty`` with uncommitted changes): cells are comparable
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


def cmd_run(args: argparse.Namespace) -> None:
    if not (SHARED / "gtsrb").is_dir():
        raise SystemExit(
            f"GTSRB not found under {SHARED}: this benchmark needs ../shared/data (see its README)"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    done = load_done()
    threads = max(1, (multiprocessing.cpu_count() or 1) // args.workers)
    context = multiprocessing.get_context("spawn")
    started, finished = time.time(), 0
    code = code_version()
    with futures.ProcessPoolExecutor(
        args.workers, mp_context=context, initializer=_init_worker, initargs=(threads,)
    ) as pool:
        running: dict[futures.Future, str] = {}
        while True:
            for method, rate, seed in all_cells():
                cid = cell_id(method, rate, seed)
                if cid in done or cid in running.values() or len(running) >= args.workers:
                    continue
                if args.only and method not in args.only:
                    continue
                if METHODS[method].depends_on_uniform and best_uniform_lr(done, rate) is None:
                    continue
                if args.max_cells is not None and finished + len(running) >= args.max_cells:
                    break
                running[pool.submit(run_cell, method, rate, seed, dict(done))] = cid
            if not running:
                break
            complete, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in complete:
                cid = running.pop(future)
                line = {**future.result(), "code": code}
                with open(RESULTS_FILE, "a") as handle:
                    handle.write(json.dumps(line) + "\n")
                done[cid] = line
                finished += 1
                r = line["results"]
                print(
                    f"[{time.time() - started:7.0f} s] {cid}: test {100 * r['final_test_accuracy']:.2f}%, "
                    f"val {report.fmt_pct(r['final_val_accuracy'])}%, {r['wall_time_s']:.0f} s",
                    flush=True,
                )
                write_report(done)
    print(f"{finished} cells run, {len(done)} of {len(all_cells())} done")


def write_report(done: dict[str, dict[str, Any]]) -> None:
    """benchmarks/results/gtsrb_lowdata.{md,csv,png} from the results file."""
    rows = [report.row_from_results(line["results"], line["cell"]) for line in done.values()]
    groups = report.aggregate(rows)
    main = [g for g in groups if not g.method.startswith("knob_") and g.method in METHODS]
    best = report.select_by_validation(main, UNIFORM_METHODS, "uniform (best on val)")
    knobs = [
        g
        for g in groups
        if g.sampling_rate == KNOB_RATE and (g.method.startswith("knob_") or g.method == "rl_tune")
    ]
    report.write_csv(
        main + best + [g for g in knobs if g.method.startswith("knob_")], RESULTS_DIR / f"{NAME}.csv"
    )
    plot_methods = [
        "rl_tune",
        "rl_tune_next_batch",
        "rl_tune_next_batch_log",
        "random",
        "uniform (best on val)",
        "uniform_best_ema",
        "layerwise_decay",
        "linear_probe",
    ]
    report.plot_rates(main + best, RESULTS_DIR / f"{NAME}.png", plot_methods)
    machines = sorted({line["results"].get("machine", "") for line in done.values()})
    text = [
        "# GTSRB low-data benchmark: results",
        "",
        "Generated by `python benchmarks/gtsrb_lowdata.py report` from `gtsrb_lowdata.jsonl`; the protocol is in",
        "`benchmarks/gtsrb_lowdata.py` and `benchmarks/README.md`. CIFAR-10 ResNet-20 -> GTSRB (43 classes,",
        "32 px), one frame per track, test = the full official test set (12,630 images).",
        "",
        f"Cells done: {len(done)} of {len(all_cells())}. Machine(s): {', '.join(machines)}.",
        "",
        "## Main grid",
        "",
        report.markdown_table(main + best, MAIN_ORDER),
        "`uniform (best on val)`: per sampling rate, the uniform rate with the best mean validation accuracy",
        "(the test column only reports it). `= uniform_X` names the rate chosen.",
        "",
        "## The paper's knobs at 15% (RL-Tune, paper reward)",
        "",
        report.markdown_table(knobs, KNOB_ORDER),
        "",
        "## Wall time per cell (s, mean over seeds)",
        "",
        _wall_table(
            report.aggregate([_loop_time_row(line) for line in done.values() if _time_covers_run(line)])
        ),
        "",
        "Each cell's training-loop time (`timing.loop_s`: fine-tuning steps, the agent, checkpoints,",
        "validation and the final test evaluation) where the cell recorded it, else its whole-run wall",
        "time (`wall_time_s`; it adds building the environment and writing outputs, 0.4-11 s on the cells",
        "that record both). `wall_time_s` is not used where `loop_s` exists: some cells' `wall_time_s`",
        "covers only the time since their last checkpoint. Cells ran two at a time on 2 cores, sometimes",
        "beside other work on the machine: compare them loosely. Cells whose time is partial are left",
        "out (the results file gives each one's reason in `wall_time_invalid`); their accuracies stand.",
        "",
        "## The agent's share of the training loop (%, mean over cells (n))",
        "",
        _agent_share_table(done),
        "",
        "Agent acting (policy inference, SB3's bookkeeping and the vectorised-env wrappers) plus agent",
        "updates, as a share of the training loop without the final test evaluation, in the cells that",
        "recorded timing. Fixed-action methods (random, uniform, ...) show the floor that SB3's loop and",
        "wrappers cost without a policy to run. The fine-tuning steps themselves cost the same for every",
        "method except RL-Tune's paper reward, which adds an eval-mode forward per step (measured side",
        "by side in `step_overhead_cpu.md`).",
        "",
        f"![test accuracy against sampling rate]({NAME}.png)",
        "",
    ]
    (RESULTS_DIR / f"{NAME}.md").write_text("\n".join(text))


def _time_covers_run(line: dict[str, Any]) -> bool:
    """False for cells whose time is known to be partial (the results line says why)."""
    return "wall_time_invalid" not in line


def _loop_time_row(line: dict[str, Any]) -> report.Row:
    """A cell's row with its training-loop time as the time (see the note under the wall-time table)."""
    results = line["results"]
    row = report.row_from_results(results, line["cell"])
    if "timing" in results:
        row = replace(row, wall_time_s=float(results["timing"]["loop_s"]))
    return row


def _agent_share_table(done: dict[str, dict[str, Any]]) -> str:
    """Per method and rate, the agent's share (acting + updates) of the training loop without the
    final test evaluation, mean over the cells that recorded it. A ratio of two times measured in
    the same process, so it depends far less on the machine's load than the wall times."""
    shares: dict[tuple[str, float], list[float]] = {}
    for line in done.values():
        timing = line["results"].get("timing")
        if timing and not line["method"].startswith("knob_"):
            key = (line["method"], line["sampling_rate"])
            shares.setdefault(key, []).append(report.agent_share(timing))
    return _method_rate_table({key: f"{100 * sum(c) / len(c):.1f}% ({len(c)})" for key, c in shares.items()})


def _wall_table(groups: list[report.Group]) -> str:
    return _method_rate_table({(g.method, g.sampling_rate): f"{g.wall_time_mean:.0f}" for g in groups})


def _method_rate_table(cells: dict[tuple[str, float], str]) -> str:
    """A markdown table of already formatted cells: one row per method (in MAIN_ORDER), one
    column per sampling rate present."""
    rates = sorted({rate for _, rate in cells})
    lines = ["| method | " + " | ".join(f"{r:.0%}" for r in rates) + " |", "|---|" + "---|" * len(rates)]
    for method in [m for m in MAIN_ORDER if any(k[0] == m for k in cells)]:
        lines.append(f"| {method} | " + " | ".join(cells.get((method, r), "") for r in rates) + " |")
    return "\n".join(lines)


def cmd_report(_args: argparse.Namespace) -> None:
    done = load_done()
    if not done:
        raise SystemExit(f"no results yet in {RESULTS_FILE}")
    write_report(done)
    print((RESULTS_DIR / f"{NAME}.md").read_text())


def cmd_status(_args: argparse.Namespace) -> None:
    done = load_done()
    cells = all_cells()
    print(f"{len(done)} of {len(cells)} cells done")
    for rate in RATES:
        n = sum(1 for m, r, s in cells if r == rate)
        print(
            f"  rate {rate:.0%}: {sum(1 for m, r, s in cells if r == rate and cell_id(m, r, s) in done)} of {n}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the cells not yet in the results file")
    run.add_argument("--workers", type=int, default=1, help="cells run in parallel (CPU threads are shared)")
    run.add_argument("--max-cells", type=int, help="stop after this many cells")
    run.add_argument("--only", nargs="*", help="run only these methods")
    run.set_defaults(func=cmd_run)
    sub.add_parser("report", help="write the tables and plot").set_defaults(func=cmd_report)
    sub.add_parser("status", help="how much of the grid is done").set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
