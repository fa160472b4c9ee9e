"""PBT's report (benchmarks/results/pbt.md): per setting, test accuracy against the number of runs
it took, PBT beside the validation-chosen one-run base, the tuned cosine and the headroom search's
profile, each paired with the base on the same seeds (same subset, split and head)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks import grid
from benchmarks import headroom_study as study

REPORT_FILE = grid.RESULTS_DIR / "pbt.md"
COSINE_RUNS = len(grid.UNIFORM_RATES)  # the cosine's rate is chosen on validation over these


def _stats(values: Sequence[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def _test(results: dict[str, Any] | None) -> float | None:
    return None if results is None else 100 * results["final_test_accuracy"]


def _grid_test(done, method: str, rate: float, seed: int, dataset: str) -> float | None:
    line = done.get(grid.cell_id(method, rate, seed, dataset))
    return None if line is None else _test(line["results"])


def method_rows(
    setting: str, pbt_lines: dict[int, dict[str, Any]], done, lines
) -> list[tuple[str, str, dict]]:
    """(method, runs, {seed: test %}) for the base, the tuned cosine, the headroom profile and PBT,
    on the seeds PBT has finished."""
    dataset, rate = study.SETTINGS[setting]
    seeds = sorted(pbt_lines)
    method = study.base_method(setting, done)
    rows = []
    base = {s: _grid_test(done, method, rate, s, dataset) for s in seeds}
    rows.append((f"base: {method} (no tuning, chosen on val)", "1", base))
    lr = grid.best_lr(done, "cosine", rate, dataset)
    if lr is not None:
        cosine = {s: _grid_test(done, f"cosine_{lr:g}", rate, s, dataset) for s in seeds}
        rows.append((f"tuned cosine (lr {lr:g}, chosen on val)", str(COSINE_RUNS), cosine))
    _, trials, finished = study.study_of(setting, method, lines, done)
    if len(finished) >= study.N_TRIALS:
        best = study.ranked(finished)[0]
        searched = {s: _test(trials[best]["runs"].get(s)) for s in seeds}
        runs = f"{len(study.SEARCH_SEEDS) * len(finished)} + 1 ({len(finished)} trials x {len(study.SEARCH_SEEDS)} seeds, then the run)"
        rows.append((f"headroom profile (trial {best}, {len(finished)} trials on val)", runs, searched))
    runs = {line["runs"] for line in pbt_lines.values()}
    rows.append(
        (
            "PBT (best member on val)",
            "/".join(map(str, sorted(runs))),
            {s: _test(pbt_lines[s]["results"]) for s in seeds},
        )
    )
    return rows


def setting_report(
    setting: str, pbt_lines: dict[int, dict[str, Any]], planned: Sequence[int], done, lines
) -> list[str]:
    out = [f"## {setting.replace('/r', ' ')}", ""]
    if not pbt_lines:
        return [*out, f"Not run yet (seeds {list(planned)}).", ""]
    seeds = sorted(pbt_lines)
    missing = [s for s in planned if s not in pbt_lines]
    out.append(
        f"Seeds {seeds}"
        + (f"; missing {missing}." if missing else ".")
        + " Test accuracy %, mean ± std over the seeds; paired: each seed's difference to the base "
        "on the same subset, split and head."
    )
    out += [
        "",
        "| method | runs | test % | paired vs base (per seed) | mean paired |",
        "|---|---|---|---|---|",
    ]
    rows = method_rows(setting, pbt_lines, done, lines)
    base = rows[0][2]
    for name, runs, tests in rows:
        paired_seeds = [s for s in seeds if tests.get(s) is not None and base.get(s) is not None]
        values = [tests[s] for s in seeds if tests.get(s) is not None]
        if not values:
            out.append(f"| {name} | {runs} | missing | | |")
            continue
        diffs = [tests[s] - base[s] for s in paired_seeds]
        per_seed = ", ".join(f"{d:+.1f}" for d in diffs) if tests is not base else ""
        mean = f"{statistics.mean(diffs):+.1f}" if tests is not base and diffs else ""
        out.append(f"| {name} | {runs} | {_stats(values)} | {per_seed} | {mean} |")
    walls = ", ".join(f"{line['wall_s'] / 60:.0f}" for _, line in sorted(pbt_lines.items()))
    known = [line for line in pbt_lines.values() if line.get("cores")]
    cost = sum(line["wall_s"] * line["cores"] for line in known) / 3600
    on = f"; {cost:.2f} core-hours (wall-clock x cores)" if known else ""
    if known and len(known) < len(pbt_lines):
        on += f" for the {len(known)} that recorded their cores"
    out += [
        "",
        f"PBT's cost: {len(pbt_lines)} population(s) of {rows[-1][1]} members, wall-clock {walls} min{on}.",
        "Its members' final multipliers (best member): "
        + "; ".join(
            f"seed {s}: "
            + ", ".join(f"{k} {v:.2g}" for k, v in pbt_lines[s]["results"]["multipliers"].items())
            for s in seeds
        ),
        "",
    ]
    return out


def write_report(pbt_lines: list[dict[str, Any]], settings: Sequence[str], seeds: Sequence[int]) -> None:
    """The report of ``pbt_lines`` (pbt.py's results) over the planned ``settings`` and ``seeds``."""
    done, lines = grid.load_done(), study.load_lines()
    by_setting: dict[str, dict[int, dict[str, Any]]] = {s: {} for s in settings}
    for line in pbt_lines:
        by_setting.setdefault(line["setting"], {})[line["seed"]] = line
    out = [
        "# Population Based Training against one-run methods (issue 27)",
        "",
        'Protocol: benchmarks/README.md, "PBT protocol" (8 members, every 5 of 50 epochs, scored on '
        "validation; the best member's test accuracy is the result). Reproduce: "
        "`python benchmarks/pbt.py run` then `python benchmarks/pbt.py report`.",
        "",
    ]
    for setting in by_setting:
        out += setting_report(setting, by_setting[setting], seeds, done, lines)
    REPORT_FILE.write_text("\n".join(out).rstrip() + "\n")
