"""Re-evaluate finished runs, tabulate many runs, or replay a saved agent.

The command line of ``evaluate.py`` (and of the installed ``finetune-gym-evaluate``).

python evaluate.py RUN_DIR [RUN_DIR ...]
    Rebuild each run's fine-tuned model from final_model.pt and recompute its top-1 test (and
    validation) accuracy from the data; flag any disagreement with results.json beyond 1e-6
    (exit status 1 if there is one).

python evaluate.py --table OUT.md RUN_DIR_OR_PARENT [...]
    Aggregate runs by (env, dataset, model, sampling rate, method) into a markdown table of
    mean ± std over seeds (like the paper's Table 1), plus OUT.csv and OUT.png (test accuracy
    against sampling rate, one line per method, std bands). Reads results.json only.

python evaluate.py --agent RUN_DIR/agent [--dataset ... --data-root ... --env-kwargs ...]
    Replay a saved agent deterministically (frozen, not learning) on a fresh fine-tuning run of
    its environment, or of another one with the same backbone, and report the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from finetune_gym.agents import report
from finetune_gym.agents.config import RunConfig
from finetune_gym.agents.outputs import load_final_model
from finetune_gym.agents.run import run_training
from finetune_gym.agents.rundir import CONFIG, FINAL_MODEL, RESULTS, RunDirectoryError
from finetune_gym.agents.trust import TRUST_FLAG, check_code, named_code
from finetune_gym.cli import parse_kwargs

TOLERANCE = 1e-6


def _stored(results: dict, key: str, optional: bool = False) -> float | None:
    """A stored accuracy as a float in [0, 1] (None where ``optional`` and absent); ValueError else."""
    value = results.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{RESULTS} holds {key}={value!r}, not an accuracy in [0, 1]")
    return float(value)


def recompute(run_dirs: list[Path], device: str, trust_code: bool = False) -> int:
    """Print stored against recomputed accuracy for each run, going on past broken runs; 1 if any
    run differs beyond TOLERANCE or cannot be checked."""
    flagged = 0
    print("| run | stored test | recomputed test | stored val | recomputed val | status |")
    print("|---|---|---|---|---|---|")
    for run_dir in run_dirs:
        try:
            results = json.loads((run_dir / RESULTS).read_text())
            stored_test = _stored(results, "final_test_accuracy")
            stored_val = _stored(results, "final_val_accuracy", optional=True)
            env, _ = load_final_model(run_dir / FINAL_MODEL, device=device, trust_code=trust_code)
            test = env.evaluate("test")
            val = env.evaluate("val") if len(env.val_indices) else None
            env.close()
        except Exception as error:  # noqa: BLE001 - one broken run is a row, never the end of the table
            flagged += 1
            message = " ".join(str(error).replace("|", "/").split())
            print(f"| {run_dir} | | | | | ERROR: {type(error).__name__}: {message} |")
            continue
        bad = abs(test - stored_test) > TOLERANCE or (
            val is not None and stored_val is not None and abs(val - stored_val) > TOLERANCE
        )
        flagged += bad
        print(
            f"| {run_dir} | {report.fmt_pct(stored_test)} | {report.fmt_pct(test)} | "
            f"{report.fmt_pct(stored_val)} | {report.fmt_pct(val)} | {'DISAGREES' if bad else 'ok'} |"
        )
    if flagged:
        print(
            f"{flagged} run(s) disagree with their {RESULTS} by more than {TOLERANCE} or could not be checked",
            file=sys.stderr,
        )
    return 1 if flagged else 0


def table(out: Path, paths: list[str]) -> int:
    """Aggregate runs into OUT.md/.csv/.png; a run whose results.json cannot be read is named and
    left out (exit status 1), the rest are tabulated."""
    rows, broken = [], 0
    for run_dir in report.find_runs(paths):
        try:
            results = json.loads((run_dir / RESULTS).read_text())
            _stored(results, "final_test_accuracy")
            rows.append(report.row_from_results(results, str(run_dir)))
        except Exception as error:  # noqa: BLE001 - one broken run is left out, never the end of the table
            broken += 1
            print(f"evaluate.py: left out {run_dir}: {type(error).__name__}: {error}", file=sys.stderr)
    groups = report.aggregate(rows)
    text = report.markdown_table(groups)
    _write_all(
        out,
        {
            out: lambda path: path.write_text(text + "\n"),
            out.with_suffix(".csv"): lambda path: report.write_csv(groups, path),
            out.with_suffix(".png"): lambda path: report.plot_rates(groups, path),
        },
    )
    print(text)
    print(f"wrote {out}, {out.with_suffix('.csv')}, {out.with_suffix('.png')} ({len(rows)} runs)")
    return 1 if broken else 0


def _write_all(out: Path, writers: dict[Path, Callable[[Path], object]]) -> None:
    """Write every output or none: each to a temporary name first, renamed once all are written
    (a read-only or full disk leaves no half table beside an old plot)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, Path]] = []
    try:
        for path, write in writers.items():
            tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # the suffix tells matplotlib the format
            written.append((tmp, path))
            write(tmp)
        for tmp, path in written:
            tmp.replace(path)
    finally:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)


def replay(agent_dir: Path, args: argparse.Namespace) -> int:
    run_dir_of_agent = agent_dir.parent
    if not (run_dir_of_agent / CONFIG).is_file():
        raise FileNotFoundError(
            f"{str(agent_dir)!r} is not the agent/ folder of a run ({CONFIG} missing beside it)"
        )
    config_file = run_dir_of_agent / CONFIG
    try:
        saved = json.loads(config_file.read_text())
        saved_env = dict(saved["env_kwargs"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{str(config_file)!r} is not a run configuration ({type(error).__name__}: {error})"
        ) from error
    given = parse_kwargs(args.env_kwargs)
    # The saved model's import path is imported only if asked for (or given again here).
    check_code(
        {k: v for k, v in saved_env.items() if k not in given},
        repr(str(config_file)),
        trust_code=args.trust_code,
        given=named_code(given),
    )
    env_kwargs = {**saved_env, **given}
    for key in ("dataset", "data_root", "sampling_rate", "device"):
        if getattr(args, key) is not None:
            env_kwargs[key] = getattr(args, key)
    config = RunConfig(
        env_id=args.env or saved["env_id"],
        algo=saved["algo"],
        seed=args.seed if args.seed is not None else saved["seed"],
        episodes=args.episodes or saved["episodes"],
        epochs_per_episode=args.epochs_per_episode or saved["epochs_per_episode"],
        ema=saved["ema"],
        env_kwargs=env_kwargs,
        agent_kwargs=saved["agent_kwargs"],
        label=f"replay:{saved.get('label') or saved['algo']}",
        replay_agent=str(agent_dir),
    )
    out = Path(args.run_dir or run_dir_of_agent.parent / f"{run_dir_of_agent.name}-replay")
    results = run_training(config, out, overwrite=args.overwrite, progress=not args.no_progress)
    print(
        f"replayed {agent_dir} on {config.env_id}/{results['env_config']['dataset']}: "
        f"test accuracy {report.fmt_pct(results['final_test_accuracy'])}% (run in {out})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=None if Path(sys.argv[0]).name != "evaluate.py" else "evaluate.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="*", help="run directories (or, with --table, folders holding runs)")
    parser.add_argument(
        "--table", type=Path, metavar="OUT.md", help="aggregate the runs into OUT.md/.csv/.png"
    )
    parser.add_argument("--device", default="cpu", help="device to recompute on (default cpu)")
    replay_group = parser.add_argument_group("replaying a saved agent (--agent)")
    replay_group.add_argument("--agent", type=Path, metavar="RUN_DIR/agent", help="a saved agent to replay")
    replay_group.add_argument("--env", help="environment id (default: the agent's)")
    replay_group.add_argument("--dataset")
    replay_group.add_argument("--data-root")
    replay_group.add_argument("--sampling-rate", type=float)
    replay_group.add_argument("--seed", type=int)
    replay_group.add_argument("--episodes", type=int)
    replay_group.add_argument("--epochs-per-episode", type=int)
    replay_group.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE")
    replay_group.add_argument("--run-dir", help="where the replay run is written (default: <run>-replay)")
    replay_group.add_argument("--overwrite", action="store_true")
    replay_group.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        TRUST_FLAG,
        action="store_true",
        help="import a model the run's files name by import path (package.module:factory); that runs "
        "its code: only for runs you trust",
    )
    args = parser.parse_args(argv)
    try:
        if args.agent is not None:
            return replay(args.agent, args)
        if not args.runs:
            parser.error("give run directories, --table OUT.md with run directories, or --agent")
        if args.table is not None:
            return table(args.table, args.runs)
        return recompute(report.find_runs(args.runs), args.device, args.trust_code)
    except (FileNotFoundError, ValueError, RunDirectoryError) as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a read-only or full disk: the file and the reason, in one line
        print(
            f"evaluate.py: error: could not write {error.filename}: {error.strerror or error}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
