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
- Added before any of their results (issue 13): what practitioners use instead of a rate search,
  each one 50-epoch run without EMA: `cosine_<lr>` over the same 5 rates (`cosine (best on val)`),
  Schedule-Free AdamW and Prodigy at their published defaults (no tuning); and RL-Tune built on
  them (RecurrentPPO, online, one continuous 50-epoch episode, no EMA, observation extras,
  loss-improvement reward, relative actions 1/8..8 around a base), each with its random control:
  around Schedule-Free AdamW's default (`rl_tune_sf_rel`, `random_sf_rel`) and around the cosine
  schedule at the rate chosen on validation (`rl_tune_cos_rel`, `random_cos_rel`). The same new
  methods also run on two more real datasets, sign_digits and clothing10 (64 px photos, read at
  32 px), at 15% and 100%.
- Added before any of their results (issue 25): two grey-scale script domains, omniglot_alphabets
  (64 px) and oracle_mnist (28 px), both read at 32 px as RGB, at 15% (5 seeds) and 100% (3 seeds),
  with the second grid's methods; and on every dataset, two one-run bases that estimate a step per
  layer, at their published defaults: Prodigy per layer (`prodigy_layerwise`) and L-DoG with
  polynomial averaging (`ldog`); and Mechanic tuning AdamW's scale (`mechanic`), added after them.
  They join the no-tuning pool the bar is chosen from (on validation).
  Then, at 15% on every dataset (declared before any of their results): Auto-RGN on Prodigy
  (`auto_rgn`: each layer's share of Prodigy's step from its relative gradient norm, Lee et al.
  2023; one run) and surgical fine-tuning on Prodigy (`surgical_<block>`: one block and the head
  train; `surgical (best on val)` picks the block on validation, a 4-run method like the cosine).

Every cell runs through finetune_gym.agents.run.run_training, the code path of train.py. Finished cells are
appended to benchmarks/results/gtsrb_lowdata.jsonl (kept in the repository) and skipped on the next
call, so the grid can be completed over several sessions:

    python benchmarks/gtsrb_lowdata.py run --workers 2     # resumable; Ctrl-C safe
    python benchmarks/gtsrb_lowdata.py report              # tables, CSV and plot from the results file
    python benchmarks/gtsrb_lowdata.py status
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python benchmarks/gtsrb_lowdata.py): the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402
from benchmarks.grid import (  # noqa: E402
    DATASETS,
    METHODS,
    RATES,
    RESULTS,
    SHARED,
    all_cells,
    best_lr,
    cell_id,
    load_done,
    run_cell,
    run_config,
)
from benchmarks.grid_report import REPORT, time_covers_run, write_report  # noqa: E402
from finetune_gym.agents import report  # noqa: E402


def cmd_run(args: argparse.Namespace) -> None:
    if not (SHARED / "gtsrb").is_dir():
        raise SystemExit(
            f"GTSRB not found under {SHARED}: this benchmark needs ../shared/data (see its README)"
        )
    done = load_done()
    started, code = time.time(), harness.code_version()

    def ready() -> Iterator[harness.Job]:
        """The missing cells in the grid's order; a cell whose rate is chosen on validation waits
        until its family's cells are done."""
        for method, rate, seed, dataset in all_cells():
            cid = cell_id(method, rate, seed, dataset)
            if cid in done or (args.only and method not in args.only):
                continue
            if args.datasets and dataset not in args.datasets:
                continue
            family = METHODS[method].depends_on
            if family is not None and best_lr(done, family, rate, dataset) is None:
                continue
            yield harness.Job(cid, run_cell, (method, rate, seed, dataset, dict(done)))

    def finished(job: harness.Job, result: dict[str, Any]) -> None:
        line = {**result, "code": code}
        RESULTS.append(line)
        done[job.key] = line
        r = line["results"]
        print(
            f"[{time.time() - started:7.0f} s] {job.key}: test {100 * r['final_test_accuracy']:.2f}%, "
            f"val {report.fmt_pct(r['final_val_accuracy'])}%, {r['wall_time_s']:.0f} s",
            flush=True,
        )
        write_report(done)

    with harness.pool_from_args(args) as pool:
        count = harness.run_jobs(pool, ready, finished, args.workers, args.max_cells)
    print(f"{count} cells run, {len(done)} of {len(all_cells())} done")


def cmd_report(_args: argparse.Namespace) -> None:
    done = load_done()
    if not done:
        raise SystemExit(f"no results yet in {RESULTS.path}")
    write_report(done)
    print(REPORT.read_text())


def cell_seconds(done: dict[str, dict[str, Any]], dataset: str, rate: float) -> tuple[float, str] | None:
    """A cell's expected wall time on ``dataset`` at ``rate`` for planning: the median of the done
    cells there, else the median at the dataset's nearest done rate scaled by the rate ratio (the
    epochs' work grows with the sampled set). None before any cell of the dataset is done."""
    times: dict[float, list[float]] = {}
    for line in done.values():
        if line.get("dataset", "gtsrb") == dataset and time_covers_run(line):
            times.setdefault(line["sampling_rate"], []).append(line["results"]["wall_time_s"])
    if not times:
        return None
    if rate in times:
        return statistics.median(times[rate]), f"median of {len(times[rate])} done there"
    nearest = min(times, key=lambda r: abs(r - rate))
    return statistics.median(times[nearest]) * rate / nearest, f"scaled from {nearest:.0%}"


def cmd_status(_args: argparse.Namespace) -> None:
    """Cells done per dataset and rate, and for the missing ones which they are and about how many
    core-hours they take (one thread per cell), so a session can plan what fits."""
    done = load_done()
    cells = all_cells()
    print(f"{len(done)} of {len(cells)} cells done")
    total = 0.0
    for dataset in DATASETS:
        for rate in RATES:
            mine = [c for c in cells if c[1] == rate and c[3] == dataset]
            if not mine:
                continue
            missing = [c for c in mine if cell_id(*c) not in done]
            line = f"  {dataset} {rate:.0%}: {len(mine) - len(missing)} of {len(mine)}"
            estimate = cell_seconds(done, dataset, rate) if missing else None
            if estimate is not None:
                total += estimate[0] * len(missing)
                line += (
                    f"; missing ~{estimate[0] * len(missing) / 3600:.1f} core-h "
                    f"({estimate[0] / 60:.0f} min a cell, {estimate[1]}): "
                )
                counts = Counter(method for method, *_ in missing)  # in the grid's order
                line += ", ".join(f"{m} x{n}" for m, n in counts.items())
            print(line)
    if total:
        print(f"missing in all: ~{total / 3600:.1f} core-hours (one thread per cell; load slows it)")


def _recorded_threads(line: dict[str, Any]) -> int | None:
    """The torch thread count a cell ran with (reductions differ with it), from its machine line."""
    found = re.search(r"torch threads (\d+)", line["results"].get("machine", ""))
    return int(found.group(1)) if found else None


def _outcome(results: dict[str, Any]) -> dict[str, Any]:
    """What ``verify`` compares of a run's results: its accuracies, each episode's validation
    accuracy, and how much it trained."""
    keys = ("final_val_accuracy", "final_test_accuracy", "steps", "images_seen")
    return {k: results.get(k) for k in keys} | {
        "episodes_val": [e["val_accuracy"] for e in results["episodes"]]
    }


def cmd_verify(args: argparse.Namespace) -> None:
    """Re-run committed cells from scratch with the code as it is now and compare them with their
    committed results, exactly: a refactoring that claims unchanged behaviour shows it here."""
    import tempfile

    import torch

    done = load_done()
    unknown = [cell for cell in args.cells if cell not in done]
    if unknown:
        raise SystemExit(f"not in {RESULTS.path.name}: {unknown} (cell ids as in its 'cell' field)")
    mismatches = 0
    for cell in args.cells:
        line = done[cell]
        threads = _recorded_threads(line) or 1
        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as folder:
            config = run_config(line["method"], line["sampling_rate"], line["seed"], done, line["dataset"])
            rerun = harness.run_or_load(Path(folder) / "run", lambda config=config: config)
        was, now = _outcome(line["results"]), _outcome(rerun)
        same = was == now
        mismatches += not same
        print(
            f"{'same' if same else 'DIFFERENT'}  {cell} (code {line.get('code', '?')[:8]}, {threads} thread(s))"
        )
        if not same:
            print(f"    committed {was}\n    now       {now}")
    raise SystemExit(1 if mismatches else 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the cells not yet in the results file")
    harness.add_pool_options(run, workers=1)
    run.add_argument("--max-cells", type=int, help="stop after this many cells")
    run.add_argument("--only", nargs="*", help="run only these methods")
    run.add_argument("--datasets", nargs="*", choices=list(DATASETS), help="run only on these datasets")
    run.set_defaults(func=cmd_run)
    sub.add_parser("report", help="write the tables and plot").set_defaults(func=cmd_report)
    sub.add_parser("status", help="how much of the grid is done").set_defaults(func=cmd_status)
    verify = sub.add_parser("verify", help="re-run committed cells and compare them with their results")
    verify.add_argument("cells", nargs="+", help="cell ids, e.g. omniglot_alphabets/mechanic/r0.15/s0")
    verify.set_defaults(func=cmd_verify)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
