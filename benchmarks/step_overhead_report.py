"""The step-overhead benchmark's markdown: one table per configuration (images/s, time per step,
ratio to the plain step, peak memory) with the agent's cost and the full-run comparison."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.overhead_setup import EXTRAS, EXTRAS_ALONE, GRADIENT_ALONE, GRADIENT_EXTRAS
from finetune_gym.device import resolve_channels_last, resolve_precision


def settings(config: dict[str, Any], device: str) -> str:
    """The precision, memory format and optimizer the configuration runs in (the environment's
    defaults for the device unless the configuration sets them)."""
    dtype = resolve_precision(config.get("precision", "auto"), torch.device(device))
    channels_last = resolve_channels_last(config.get("channels_last"), torch.device(device))
    layout = f"{'bf16 autocast' if dtype else 'fp32'}, {'channels-last' if channels_last else 'contiguous'}"
    return layout + f", {config.get('optimizer', 'adam')}"


def render(report: dict[str, Any]) -> str:
    lines = [
        f"### {report['config']['name']} on {report['device']} ({report['machine']}; "
        f"{settings(report['config'], report['device'])})",
        "",
        "| mode | images/s | time per step (ms) | ratio to plain | peak memory (MiB) |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["steps"].items():
        memory = report.get("peak_memory", {}).get(name, {}).get("peak_mib")
        lines.append(
            f"| {name} | {row['images_per_s']:.0f} | {1000 * row['s_per_step']:.{1 if row['ratio'] > 1e-3 else 4}f} | "
            f"{row['ratio']:.{3 if row['ratio'] > 1e-3 else 6}f} | "
            f"{'' if memory is None else f'{memory:.0f}'} |"
        )
    for label, full, alone_name in (
        ("Observation extras (progress, lr, loss)", EXTRAS, EXTRAS_ALONE),
        ("Gradient extras (grad_ratio, drift, grad_cosine, base_step)", GRADIENT_EXTRAS, GRADIENT_ALONE),
    ):
        if full not in report["steps"]:
            continue
        step = report["steps"]["env.step reward=next_batch"]["s_per_step"]
        ratio = report["steps"][full]["s_per_step"] / step
        alone = report["steps"].get(alone_name, {}).get("s_per_step")
        lines += [
            "",
            f"{label}: {100 * (ratio - 1):+.1f}% on an `env.step` with reward=next_batch, side by side"
            + (
                ""
                if alone is None
                else f"; their own work, timed alone, is {100 * alone / step:.3f}% of that step"
            )
            + ".",
        ]
    memory = report.get("peak_memory")
    if memory:
        kind = "CUDA peak allocated" if report["device"].startswith("cuda") else "peak RSS (VmHWM)"
        lines += [
            "",
            f"Peak memory: {kind}, each mode in a fresh process; the plain loop's excludes the "
            f"environment's two model copies it does not use ({memory['plain']['subtracted_mib']:.0f} MiB). "
            "Ratio to plain: "
            + ", ".join(
                f"{name} {row['peak_mib'] / memory['plain']['peak_mib']:.3f}"
                for name, row in memory.items()
                if name != "plain"
            )
            + ".",
        ]
    agent = report.get("agent")
    if agent:
        step_ms = 1000 * report["steps"]["env.step reward=next_batch"]["s_per_step"]
        lines += [
            "",
            f"Agent alone, per fine-tuning step (zero-cost environment with these spaces, "
            f"{agent['steps_per_epoch']} steps per epoch, one update per epoch):",
        ]
        for label, row in agent.items():
            if isinstance(row, dict):
                share = row["total_ms"] / (row["total_ms"] + step_ms)
                lines.append(
                    f"- {label}: acting {row['acting_ms']:.2f} ms + update {row['updates_ms']:.2f} ms = "
                    f"{row['total_ms']:.2f} ms; with env.step (next_batch, {step_ms:.1f} ms) that is "
                    f"{100 * share:.1f}% of a step"
                )
    full = report.get("full_run")
    if full:
        lines += [
            "",
            f"Full run, {full['epochs']} epoch{'s' * (full['epochs'] != 1)} ({full['steps']} steps), "
            f"median of {full['rounds']} round{'s' * (full['rounds'] != 1)} in rotated order: plain fine-tuning "
            f"{full['plain_run_s']:.1f} s; RL-Tune with reward=batch {full['rl_tune_batch_s']:.1f} s "
            f"(ratio **{full['ratio_batch']:.3f}**), with reward=next_batch {full['rl_tune_next_batch_s']:.1f} s "
            f"(ratio **{full['ratio_next_batch']:.3f}**).",
        ]
        each = ", ".join(
            f"{label} " + " / ".join(f"{t:.1f}" for t in full[key])
            for label, key in (
                ("plain", "plain_runs_s"),
                ("batch", "rl_tune_batch_runs_s"),
                ("next_batch", "rl_tune_next_batch_runs_s"),
            )
        )
        lines.append(f"- every run (s, in round order): {each}.")
        lines.append(
            "- without the final test evaluation (the same work on both sides), medians: plain "
            f"{full['plain_without_test_s']:.1f} s; RL-Tune with reward=batch "
            f"{full['rl_tune_batch_without_test_s']:.1f} s (ratio **{full['ratio_without_test_batch']:.3f}**), "
            f"with reward=next_batch {full['rl_tune_next_batch_without_test_s']:.1f} s "
            f"(ratio **{full['ratio_without_test_next_batch']:.3f}**)."
        )
        phases = full["plain_phases"]
        lines.append(
            f"- plain (median run): setup {phases['setup_s']:.1f} s, training {phases['training_s']:.1f} s, "
            f"validation {phases['validation_s']:.2f} s, test evaluation {phases['test_evaluation_s']:.1f} s."
        )
        for reward in ("batch", "next_batch"):
            t = full[f"timing_{reward}"]
            lines.append(
                f"- reward={reward}: of the {t['loop_s']:.1f} s training loop, environment steps and resets "
                f"{t['env_steps_s']:.1f} s, agent acting {t['agent_acting_s']:.2f} s, agent updates "
                f"{t['agent_updates_s']:.2f} s (agent side {100 * full[f'agent_share_{reward}']:.1f}%), "
                f"checkpoints {t['checkpoints_s']:.2f} s, final test evaluation {t['test_evaluation_s']:.1f} s."
            )
    return "\n".join(lines) + "\n"
