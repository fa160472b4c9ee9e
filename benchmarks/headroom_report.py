"""The headroom study's report (benchmarks/results/headroom.md), from its results file and the
grid's: per setting, the best trials on validation, fANOVA's importances, and the confirmation's
paired test differences against the base with the verdict."""

from __future__ import annotations

import statistics

from benchmarks import grid
from benchmarks.headroom_study import (
    CONFIRM_SEEDS,
    N_TRIALS,
    SETTINGS,
    VERDICT_POINTS,
    base_method,
    confirmation_pairs,
    describe,
    importances,
    load_lines,
    ranked,
    score,
    study_of,
    unfrozen_importances,
)

REPORT_FILE = grid.RESULTS_DIR / "headroom.md"


def setting_report(setting: str, done, lines) -> list[str]:
    method = base_method(setting, done)
    out = [f"## {setting.replace('/r', ' ')}", ""]
    if method is None:
        return [*out, "Not started: the grid's no-tuning pool is not complete here yet.", ""]
    study, trials, finished = study_of(setting, method, lines, done)
    out.append(
        f"Base (best no-tuning method on validation): **{method}**. Trials finished: "
        f"{len(finished)} of {N_TRIALS} (trial 0 is the base){'' if len(finished) >= N_TRIALS else '; the search goes on'}."
    )
    if not finished:
        return [*out, ""]
    order = ranked(finished)
    out += [
        "",
        "| trial | val (seeds 0, 1) | profile (stage multipliers of the base; time) |",
        "|---|---|---|",
    ]
    for number in order[:8]:
        out.append(
            f"| {number} | {100 * score(finished[number]):.2f} | {describe(finished[number]['params'])} |"
        )
    if 0 in finished:
        out.append(f"| 0 (base) | {100 * score(finished[0]):.2f} | {describe(finished[0]['params'])} |")
    weights = importances(study)
    unfrozen = unfrozen_importances(finished)
    if unfrozen:
        out += [
            "",
            f"fANOVA importances over the {unfrozen[1]} trials that froze no stage (multipliers and time "
            "profile only): " + ", ".join(f"{k} {v:.2f}" for k, v in unfrozen[0].items()),
        ]
    if weights:
        out += [
            "",
            "fANOVA importances (share of the validation score's variance over the trials): "
            + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()),
        ]
    best = order[0]
    pairs = confirmation_pairs(setting, method, trials[best], done, lines)
    out.append("")
    if len(finished) < N_TRIALS:
        out.append(f"Confirmation waits for the {N_TRIALS} trials (the best so far is trial {best}).")
    elif len(pairs) < len(CONFIRM_SEEDS):
        out.append(f"Confirmation of trial {best}: {len(pairs)} of {len(CONFIRM_SEEDS)} seeds paired so far.")
    if pairs and len(finished) >= N_TRIALS:
        diffs = [100 * (a - b) for _, a, b in pairs]
        mine = [100 * a for _, a, _ in pairs]
        theirs = [100 * b for _, _, b in pairs]
        spread = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        out += [
            f"Test accuracy on seeds {[s for s, *_ in pairs]}: profile (trial {best}) "
            f"{statistics.mean(mine):.1f} ± {statistics.stdev(mine) if len(mine) > 1 else 0:.1f}, "
            f"base {statistics.mean(theirs):.1f} ± {statistics.stdev(theirs) if len(theirs) > 1 else 0:.1f}; "
            f"paired differences {', '.join(f'{d:+.1f}' for d in diffs)}.",
            f"**Headroom: {statistics.mean(diffs):+.1f} points (std of the paired differences {spread:.1f}).**",
        ]
        if len(pairs) == len(CONFIRM_SEEDS):
            low = statistics.mean(diffs) - spread
            verdict = statistics.mean(diffs) >= VERDICT_POINTS and low > 0
            out.append(
                f"Verdict: {'a' if verdict else 'no'} static per-stage profile beats the base by "
                f">= {VERDICT_POINTS:g} points with the paired spread's lower end above 0 "
                f"(mean - std = {low:+.1f})."
            )
    return [*out, ""]


def write_report() -> None:
    done, lines = grid.load_done(), load_lines()
    text = [
        "# Headroom of static per-stage learning-rate profiles (issue 25)",
        "",
        'Protocol: benchmarks/README.md ("Headroom protocol") and benchmarks/headroom.py\'s docstring. '
        "Accuracies in %, validation for every choice, test only in the confirmation.",
        "",
    ]
    for setting in SETTINGS:
        text += setting_report(setting, done, lines)
    REPORT_FILE.write_text("\n".join(text))
