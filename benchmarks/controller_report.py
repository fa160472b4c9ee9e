"""The report of the controller's held-out evaluation (benchmarks/controller_eval.py): per split
the paired table of each trained controller against the best one-run method chosen on validation,
the rliable statistics against the issue's targets, the performance profile, the headroom
captured, and the meta-training's generations (training fitness only).

    python benchmarks/controller.py report        # results/controller_eval.md
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks import controller_eval as evaluation
from benchmarks import controller_plots as plots
from benchmarks import grid, harness, stats
from benchmarks import headroom_study as study
from benchmarks.controller_eval import CONTROLLER
from benchmarks.controller_status import ppo_progress

REPORT_FILE = grid.RESULTS_DIR / "controller_eval.md"
TARGET_POINTS = 2.0
LOW_RATES = (0.15, 0.3)  # where the target is a gain; above, not being worse
HEADROOM_POINTS, CAPTURE = 1.0, 0.75  # where the headroom exceeds 1 point, capture 75% of it


def _shown(path: Path) -> Path:
    """``path`` as the report shows it: from the repository's root where it lies inside it."""
    return path.relative_to(harness.ROOT) if path.is_relative_to(harness.ROOT) else path


def _pm(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def _with_interval(gains: list[float]) -> str:
    """The task's mean paired gain with its percentile bootstrap interval over seeds (the pooled
    lines below are what the targets judge; one task's 5 seeds give a wide, rough interval)."""
    if len(gains) < 2:
        return f"{gains[0]:+.1f}" if gains else ""
    point, low, high = stats.stratified_bootstrap({"task": gains}, stats.mean)
    return f"{point:+.1f} [{low:+.1f}, {high:+.1f}]"


def split_report(split: str, done, finished) -> list[str]:
    """The split's section: the CMA-ES controller's held-out table, and the PPO one's once trained."""
    tasks = evaluation.paired_gains(split, done, finished)
    out = [f"## Split {split}: held-out {', '.join(sorted({d for d, _ in tasks}))}", ""]
    for controller in evaluation.judged_controllers(split):
        out += controller_report(split, controller, done, finished)
        for reference in evaluation.REFERENCES:
            out += controller_report(split, controller, done, finished, against=reference)
        if controller != CONTROLLER:  # head to head with the protocol's controller (same instances)
            out += controller_report(split, controller, done, finished, against=CONTROLLER)
    out += noise_report(split, done, finished)
    plot = plots.plot_profile(
        split, done, finished, REPORT_FILE.parent / f"controller_profile_split{split}.png"
    )
    if plot is not None:
        out += [f"![performance profile, split {split}]({plot.name})", ""]
    return out


def controller_report(split: str, controller: str, done, finished, against: str | None = None) -> list[str]:
    """The controller's paired table and pooled lines against the bar (the best one-run method
    chosen on validation; the targets), or against a reference (``against``: no target, no headroom)."""
    tasks = evaluation.paired_gains(split, done, finished, controller, against)
    path = evaluation.controller_file(split, method=controller)
    name = evaluation.LABELS[controller]
    if against is None:
        head = (
            f"{name}: `{_shown(path)}`"
            + ("" if path.is_file() else " (not trained yet)")
            + ". Test accuracy %, mean ± std over seeds; paired gain = controller - the best one-run "
            "method chosen on validation, seed by seed."
        )
    elif against in evaluation.REFERENCES:
        head = (
            f"{name} against a reference, not the bar the targets judge: `{against}`, "
            f"{evaluation.REFERENCES[against]}. Paired gain = controller - {against}, seed by seed."
        )
    else:  # another controller: the same policy class, another trainer or base
        head = (
            f"{name} against the {evaluation.LABELS[against].lower()} (`{against}`, "
            f"`{_shown(evaluation.controller_file(split, method=against))}`), not the bar the targets judge. "
            f"Paired gain = {controller} - {against}, seed by seed."
        )
    out = paired_section(head, tasks, "controller", judged=against is None, against=against)
    if against is not None:
        return [*out, ""]
    captured = headroom_lines(split, done, finished, controller)
    if captured:
        out += ["", "Headroom captured (benchmarks/results/headroom.md):", *captured]
    return [*out, ""]


def noise_report(split: str, done, finished) -> list[str]:
    """The step-size noise test on ``split`` (benchmarks/README.md; nothing while none of its runs
    exists): Prodigy with per-step per-layer noise against Prodigy, its base (the test), and
    against the best one-run method chosen on validation (the issue's bar, for reference)."""
    noise, base = evaluation.NOISE_TEST, evaluation.NOISE_BASE
    if not any(key.startswith(f"split{split}/{noise}/") for key in finished):  # controller_eval.cell_key
        return []
    head = (
        f"Step-size noise test (benchmarks/README.md, declared before its runs): `{noise}`, Prodigy with a "
        f"fresh log2 N(0, {grid.METHODS[noise].agent['jitter']:g}^2) multiplier per layer at every step (the "
        "noise of PPO's sampled episodes), "
        f"against `{base}`, seed by seed."
    )
    out = paired_section(
        head, evaluation.paired_gains(split, done, finished, noise, base), noise, judged=False, against=base
    )
    bar = f"`{noise}` against the best one-run method chosen on validation (the issue's bar, for reference)."
    out += [
        "",
        *paired_section(bar, evaluation.paired_gains(split, done, finished, noise), noise, False, None),
    ]
    return [*out, ""]


def noise_verdict(splits: list[str], done, finished) -> list[str]:
    """The noise test's declared answer: the mean paired gain over Prodigy pooled over every
    held-out task of the splits run so far, with its 95% stratified bootstrap interval (the
    hypothesis holds where the interval lies above 0)."""
    noise, base = evaluation.NOISE_TEST, evaluation.NOISE_BASE
    gains: dict[tuple[str, str, float], list[float]] = {}
    missing = 0
    for split in splits:
        for (dataset, rate), task in evaluation.paired_gains(split, done, finished, noise, base).items():
            missing += len(task["missing"])
            if task["pairs"]:
                gains[(split, dataset, rate)] = [a - b for a, b in task["pairs"].values()]
    if not gains:
        return []
    point, low, high = stats.stratified_bootstrap(gains, stats.mean)
    answer = "holds" if low > 0 else ("is refuted" if high < 0 else "is not supported")
    tested = sorted({split for split, _, _ in gains})
    return [
        "## Step-size noise test, pooled",
        "",
        f"`{noise}` - `{base}` over {sum(len(g) for g in gains.values())} paired held-out runs of split(s) "
        f"{', '.join(tested)} ({len(gains)} tasks): mean {point:+.2f} points [95% CI {low:+.2f}, {high:+.2f}]: "
        f"the hypothesis {answer}" + (f" ({missing} pairs missing: not final)." if missing else "."),
        "",
    ]


def paired_section(
    head: str,
    tasks: dict[tuple[str, float], dict[str, Any]],
    column: str,
    judged: bool,
    against: str | None,
) -> list[str]:
    """``head``, the per-task table of paired runs (``column``: what the rows' method is called) and
    the pooled lines per range of rates, with the issue's targets' verdicts where ``judged``;
    ``against``: the method paired with (None: the best one-run method chosen on validation)."""
    out = [
        head,
        "",
        f"| task | {'best one-run (val)' if against is None else 'reference'} | its test | {column} | "
        "paired gains | mean gain [95% CI] | missing seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for (dataset, rate), task in sorted(tasks.items()):
        pairs = task["pairs"]
        gains = [a - b for a, b in pairs.values()]
        best = task["best"] or "pool incomplete"
        if task["left_out"] and task["best"]:
            best += f" (of the pool without {', '.join(task['left_out'])})"
        out.append(
            f"| {dataset} {100 * rate:g}% | {best} | {_pm([b for _, b in pairs.values()]) if pairs else ''} | "
            f"{_pm([a for a, _ in pairs.values()]) if pairs else ''} | {', '.join(f'{g:+.1f}' for g in gains)} | "
            f"{_with_interval(gains)} | {task['missing'] or ''} |"
        )
    out.append("")
    for summary in target_summaries(tasks):
        ci, iqm_ci = summary["ci95"], summary["iqm_ci95"]
        verdict = f"; {summary['target']}: {'met' if summary['met'] else 'missed'}" if judged else ""
        out.append(
            f"- {summary['rates']}: mean paired gain {summary['mean_gain']:+.2f} points [95% CI {ci[0]:+.2f}, "
            f"{ci[1]:+.2f}], IQM {summary['iqm']:+.2f} [{iqm_ci[0]:+.2f}, {iqm_ci[1]:+.2f}], P({column} > "
            f"{'best one-run' if against is None else against}) {summary['p_improvement']:.2f}{verdict}"
            + ("" if summary["complete"] else " (seeds missing: not final)")
        )
    return out


def target_summaries(tasks: dict[tuple[str, float], dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets on ``tasks`` (:func:`controller_eval.paired_gains`), per range of rates
    with pairs: the mean paired gain and IQM with their 95% stratified bootstrap intervals, the
    probability of improvement, the target and whether it is met (plain values: a card holds them)."""
    out = []
    for low_data in (True, False):
        in_range = [task for task in tasks if (task[1] in LOW_RATES) == low_data]
        label = " and ".join(f"{100 * rate:g}%" for rate in sorted({rate for _, rate in in_range}))
        chosen = {
            task: [a - b for a, b in tasks[task]["pairs"].values()]
            for task in in_range
            if tasks[task]["pairs"]
        }
        if not chosen:
            continue
        point, low, high = stats.stratified_bootstrap(chosen, stats.mean)
        iqm, iqm_low, iqm_high = stats.stratified_bootstrap(chosen, stats.iqm)
        mine = {task: [a for a, _ in tasks[task]["pairs"].values()] for task in chosen}
        theirs = {task: [b for _, b in tasks[task]["pairs"].values()] for task in chosen}
        if low_data:
            target, met = (
                f"target +{TARGET_POINTS:g} with the interval above 0",
                point >= TARGET_POINTS and low > 0,
            )
        else:
            target, met = "target: not below (the interval reaching 0 or above)", high >= 0
        out.append(
            {
                "rates": label,
                "mean_gain": float(point),
                "ci95": [float(low), float(high)],
                "iqm": float(iqm),
                "iqm_ci95": [float(iqm_low), float(iqm_high)],
                "p_improvement": float(stats.probability_of_improvement(mine, theirs)),
                "target": target,
                "met": bool(met),
                "complete": all(not tasks[task]["missing"] for task in in_range),  # a task with no pair too
            }
        )
    return out


def headroom_lines(split: str, done, finished, controller: str = CONTROLLER) -> list[str]:
    """Where the headroom study found more than 1 point over its base, how much of it the
    controller captures: its mean test gain over that base on the study's confirmation seeds."""
    out, lines = [], study.load_lines()
    instances = {(i.dataset, i.sampling_rate, i.seed): i for i in evaluation.test_instances(split)}
    for setting, (dataset, rate) in study.SETTINGS.items():
        answer = study.confirmation(setting, done, lines)
        if answer is None:
            continue
        method, trial, pairs = answer
        room = statistics.mean(100 * (a - b) for _, a, b in pairs)
        if room <= HEADROOM_POINTS or not any((dataset, rate, s) in instances for s, _, _ in pairs):
            continue
        gains = []
        for seed, _, base in pairs:
            instance = instances.get((dataset, rate, seed))
            mine = (
                None
                if instance is None
                else evaluation.test_accuracy(split, controller, instance, done, finished)
            )
            if mine is not None:
                gains.append(mine - 100 * base)
        if not gains:
            out.append(
                f"- {dataset} {100 * rate:g}%: headroom {room:+.1f} over {method}; the controller not run yet"
            )
            continue
        share = statistics.mean(gains) / room
        verdict = "met" if share >= CAPTURE and len(gains) == len(pairs) else "missed"
        out.append(
            f"- {dataset} {100 * rate:g}%: headroom {room:+.1f} points over {method} (profile trial {trial}); the "
            f"controller {statistics.mean(gains):+.1f} on the same {len(gains)} seeds: {100 * share:.0f}% captured "
            f"(target >= {100 * CAPTURE:.0f}%: {verdict})"
        )
    return out


def search_report(split: str) -> list[str]:
    """The meta-training's generations for ``split`` (training fitness only: nothing held out)."""
    from finetune_gym.agents.meta_train import EVALUATIONS, GENERATIONS, generation_gains

    run = evaluation.controller_file(split).parent
    rows = harness.ResultsFile(run / GENERATIONS).lines()
    if not rows:
        return [
            f"Meta-training of split {split}: not started (`python benchmarks/controller.py run --split {split}`).",
            "",
        ]
    out = [
        f"Meta-training of split {split} (`{_shown(run)}`): "
        f"{len(rows)} generations, {rows[-1]['runs']} runs, {rows[-1]['run_s'] / 3600:.1f} h of runs "
        "(one thread each). Fitness: mean paired validation gain over Prodigy on the generation's 4 training "
        "instances, in points. Candidates' spread: the standard deviation of the 8 candidates' fitnesses; noise: "
        "that in one fitness, from the candidate x instance residual (`stats.signal_and_noise`). Where the noise is "
        "as large as the spread, CMA-ES's ranking of the candidates is mostly noise (a candidate whose runs collapse "
        "inflates both: hence the medians below the table). True spread: the candidates' spread less the "
        "noise's part, sqrt(spread^2 - noise^2); p: the two-way ANOVA's F-test that the candidates differ "
        "at all (`stats.candidate_effect`).",
        "",
        "| generation | mean gain | best gain | candidates' spread | noise in a fitness | true spread | p | sigma "
        "| runs so far |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    gains = generation_gains(harness.ResultsFile(run / EVALUATIONS).lines())
    measured = [stats.candidate_effect(100 * gains[r["generation"]]) for r in rows]
    for r, (spread, noise, true_spread, p) in zip(rows, measured, strict=True):
        out.append(
            f"| {r['generation']} | {100 * r['mean_gain']:+.2f} | {100 * r['best_gain']:+.2f} | {spread:.2f} | "
            f"{noise:.2f} | {true_spread:.2f} | {p:.2g} | {r['sigma']:.3f} | {r['runs']} |"
        )
    late = measured[len(rows) // 2 :]
    out += [
        "",
        f"Generations {rows[len(rows) // 2]['generation']}-{rows[-1]['generation']}: candidates' spread "
        f"{statistics.median(m.spread for m in late):.2f} points, noise in a fitness "
        f"{statistics.median(m.noise for m in late):.2f}, true spread "
        f"{statistics.median(m.true_spread for m in late):.2f} (medians); the candidates differed (p < 0.05) "
        f"in {sum(m.p < 0.05 for m in late)} of {len(late)} "
        "generations.",
    ]
    plot = plots.plot_search(rows, REPORT_FILE.parent / f"controller_search_split{split}.png")
    return [*out, "", f"![meta-training, split {split}]({plot.name})", ""]


PPO_BLOCK = 32  # PPO's runs are reported in blocks of this many episodes


def ppo_report(split: str) -> list[str]:
    """PPO's training of the same controller for ``split`` (training gains only: nothing held out),
    set beside the CMA-ES search's budget: its runs, hours, the paired gains of its episodes in
    blocks, and the weights it has reached against the search's."""
    from finetune_gym.agents.controller_ppo import CONFIG
    from finetune_gym.agents.controller_ppo import CONTROLLER as CONTROLLER_FILE
    from finetune_gym.agents.meta_train import GENERATIONS
    from finetune_gym.agents.residual_controller import FEATURES, load_controller

    run = evaluation.controller_file(split, method=f"{CONTROLLER}_ppo").parent
    if not (run / CONFIG).is_file():
        return []
    # The runs the trainer has learned from (its checkpoint's count; episodes logged after it run
    # again on a resume), its episodes' own plus the base runs they needed.
    progress = ppo_progress(run)
    trainer, state, episodes, bases = (progress[k] for k in ("trainer", "state", "episodes", "bases"))
    budget, hours = progress["config"]["runs"], progress["hours"]
    generations = harness.ResultsFile(evaluation.controller_file(split).parent / GENERATIONS).lines()
    cma = (
        f"; the CMA-ES search used {generations[-1]['runs']} runs ({generations[-1]['run_s'] / 3600:.1f} h)"
        if generations
        else ""
    )
    out = [
        f'PPO\'s training of split {split} (`{_shown(run)}`, benchmarks/README.md "Second trainer"): '
        f"{state['runs']} of {budget} runs (base runs included; {len(bases)} base runs cached), {hours:.1f} h of runs{cma}. "
        "Each episode is one training instance's run under the policy's sampled multipliers, its paired "
        "validation gain over Prodigy the reward (a noisier signal than a CMA-ES fitness: one instance, a "
        "sampled policy).",
        "",
        "| episodes | mean paired gain | gains > 0 |",
        "|---|---|---|",
    ]
    for start in range(0, len(episodes), PPO_BLOCK):
        block = [100 * e["paired_gain"] for e in episodes[start : start + PPO_BLOCK]]
        out.append(
            f"| {start + 1}-{start + len(block)} | {statistics.fmean(block):+.2f} | "
            f"{sum(g > 0 for g in block)}/{len(block)} |"
        )
    if (run / CONTROLLER_FILE).is_file():
        theta, where = load_controller(run / CONTROLLER_FILE)["theta"], "the trained controller"
    elif trainer is not None:
        theta = trainer["policy"]["action_net.theta"].tolist()
        where = "the policy's mean at its last update; training not finished"
    else:
        return [*out, ""]
    searched = generations[-1]["mean_theta"] if generations else [float("nan")] * len(FEATURES)
    out += [
        "",
        f"Weights, PPO ({where}) and CMA-ES (the search's mean after its last generation):",
        "",
        "| feature | PPO | CMA-ES |",
        "|---|---|---|",
        *(f"| {name} | {a:+.2f} | {b:+.2f} |" for name, a, b in zip(FEATURES, theta, searched, strict=True)),
    ]
    return [*out, ""]


# The package's default controller is split 1's: GTSRB, in no training part, is its evidence.
SHIPPED_SPLIT = "1"


def ship(split: str = SHIPPED_SPLIT, destination: Path | None = None) -> Path:
    """The split's CMA-ES controller into the package (``policy="default"``; ``destination``
    :data:`~finetune_gym.agents.residual_controller.SHIPPED_CONTROLLER` unless given), its card
    extended by its held-out result. Refused before its held-out evaluation is complete: what ships
    carries the evidence for it, whatever that says."""
    from finetune_gym.agents import residual_controller as rc

    source = evaluation.controller_file(split)
    if not source.is_file():
        raise FileNotFoundError(
            f"no controller for split {split} at {_shown(source)}: finish its meta-training first "
            f"(python benchmarks/controller.py run --split {split})"
        )
    tasks = evaluation.paired_gains(split, grid.load_done(), evaluation.RESULTS.by("cell"))
    missing = {f"{d} {100 * r:g}%": t["missing"] for (d, r), t in sorted(tasks.items()) if t["missing"]}
    if missing:
        raise RuntimeError(
            f"the held-out evaluation of split {split} is incomplete (seeds missing: {missing}): run "
            f"python benchmarks/controller.py evaluate --split {split} first"
        )
    payload = rc.load_controller(source)
    held_out = {
        "report": str(_shown(REPORT_FILE)),
        "against": f"per task, the best on validation of {', '.join(evaluation.POOL)}; test accuracy in %",
        "tasks": [
            {
                "task": f"{dataset} {100 * rate:g}%",
                "best_one_run": t["best"],
                "paired_gains": [round(a - b, 2) for a, b in t["pairs"].values()],
                "mean_gain": round(statistics.mean(a - b for a, b in t["pairs"].values()), 2),
            }
            for (dataset, rate), t in sorted(tasks.items())
        ],
        "targets": target_summaries(tasks),
    }
    destination = rc.SHIPPED_CONTROLLER if destination is None else destination
    rc.save_controller(
        destination,
        payload["theta"],
        payload["optimizer"],
        {**payload["card"], "held_out": held_out},
        payload["schedule"],
    )
    return destination


def write_report(splits: list[str]) -> None:
    done, finished = grid.load_done(), evaluation.RESULTS.by("cell")
    out = [
        "# The residual controller on held-out instances (issue 28)",
        "",
        'Protocol: benchmarks/README.md, "Controller protocol". Reproduce: `python benchmarks/controller.py '
        "evaluate --split N` then `python benchmarks/controller.py report`. Intervals: stratified bootstrap "
        "over seeds within tasks (benchmarks/stats.py).",
        "",
    ]
    for split in splits:
        out += split_report(split, done, finished)
        out += search_report(split)
        out += ppo_report(split)
    out += noise_verdict(splits, done, finished)
    REPORT_FILE.write_text("\n".join(out).rstrip() + "\n")
