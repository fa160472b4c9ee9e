"""Tables and plots over many runs: mean ± std over seeds, like the paper's Table 1.

Runs are grouped by (env, dataset, model, sampling rate, method); the method is
the run's ``label`` (set by the benchmark, ``--label`` in train.py) or its
algorithm with its hyperparameters. Runs whose configurations differ in anything
else (a sweep over episodes, EMA or an environment argument) are never averaged
together: their rows are named apart by what differs. Everything here reads
``results.json`` files only.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import KEYED_ENV, leaves_result_alone, method_name
from .rundir import RESULTS


@dataclass(frozen=True)
class Row:
    """One finished run, flattened."""

    env_id: str
    dataset: str
    model: str
    sampling_rate: float
    method: str
    seed: int
    test_accuracy: float
    val_accuracy: float | None
    wall_time_s: float
    images_seen: int
    machine: str
    run_dir: str
    setting: tuple[tuple[str, str], ...] = ()  # the rest of its configuration (setting_of)

    @property
    def key(self) -> tuple[str, str, str, float, str]:
        return (self.env_id, self.dataset, self.model, self.sampling_rate, self.method)


@dataclass(frozen=True)
class Group:
    """Runs of one setting over seeds."""

    env_id: str
    dataset: str
    model: str
    sampling_rate: float
    method: str
    n: int
    test_mean: float
    test_std: float
    val_mean: float | None
    val_std: float | None
    wall_time_mean: float
    images_seen_mean: float
    note: str = ""

    @property
    def setting(self) -> tuple[str, str, str, float]:
        return (self.env_id, self.dataset, self.model, self.sampling_rate)


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories among ``paths``: each a run (holding results.json) or a folder searched for runs."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / RESULTS).is_file():
            found.append(path)
        elif path.is_dir():
            inner = sorted(p.parent for p in path.rglob(RESULTS))
            if not inner:
                raise FileNotFoundError(
                    f"{str(path)!r} is not a run directory and holds none ({RESULTS} missing)"
                )
            found.extend(inner)
        else:
            raise FileNotFoundError(f"{str(path)!r} does not exist")
    return found


# A run's configuration besides its row's key, its seed and what leaves the result alone
# (config.leaves_result_alone, config.KEYED_ENV) is its setting; algo and agent_kwargs count, as a
# label may hide them.
_KEYED = {"env_id", "seed", "label"}


def setting_of(config: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A run's configuration apart from its key, seed and logging, as sorted ``(name, value)``
    text pairs; paths by their file name (one checkpoint copied elsewhere is the same setting)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if key in _KEYED or leaves_result_alone(key):
            continue
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                if not (key == "env_kwargs" and inner in KEYED_ENV):
                    flat[inner if inner not in flat else f"{key}.{inner}"] = _text(inner_value)
        else:
            flat[key] = _text(value)
    return tuple(sorted(flat.items()))


def _text(value: Any) -> str:
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return Path(value).name
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def row_from_results(results: dict[str, Any], run_dir: str = "") -> Row:
    env = results["env_config"]
    config = results["config"]
    return Row(
        env_id=results["env_id"],
        dataset=str(env["dataset"]),
        # A module passed as an object is recorded as {"module": class, ...}: its class names it.
        model=str(env["model"]["module"] if isinstance(env["model"], dict) else env["model"]),
        sampling_rate=float(env["sampling_rate"]),
        method=method_name(results["algo"], config.get("label"), config.get("agent_kwargs", {})),
        seed=int(config["seed"]),
        test_accuracy=float(results["final_test_accuracy"]),
        val_accuracy=None if results["final_val_accuracy"] is None else float(results["final_val_accuracy"]),
        wall_time_s=float(results["wall_time_s"]),
        images_seen=int(results["images_seen"]),
        machine=str(results.get("machine", "")),
        run_dir=run_dir,
        setting=setting_of(config),
    )


def load_rows(run_dirs: Iterable[Path]) -> list[Row]:
    return [row_from_results(json.loads((d / RESULTS).read_text()), str(d)) for d in run_dirs]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def aggregate(rows: Iterable[Row]) -> list[Group]:
    """Mean and sample standard deviation over seeds for each setting (duplicated seeds are an error).

    Runs of one method whose settings differ (:func:`setting_of`) get a row each, named
    ``method{name=value,...}`` by what differs between them (``-`` where a run leaves it unset).
    """
    buckets: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        buckets[(row.key, row.setting)].append(row)
    names = _names_apart(list(buckets))
    groups = []
    for (key, setting), members in sorted(buckets.items()):
        key = (*key[:-1], names[(key, setting)])
        seen: dict[int, str] = {}
        for m in members:
            if m.seed in seen:
                raise ValueError(
                    f"setting {key} has seed {m.seed} twice, with the same configuration: "
                    f"{seen[m.seed] or '?'} and {m.run_dir or '?'} (a copied run folder?); "
                    "leave one of them out of the table"
                )
            seen[m.seed] = m.run_dir
        test = _mean_std([m.test_accuracy for m in members])
        vals = [m.val_accuracy for m in members if m.val_accuracy is not None]
        val = _mean_std(vals) if vals else (None, None)
        groups.append(
            Group(
                *key,
                n=len(members),
                test_mean=test[0],
                test_std=test[1],
                val_mean=val[0],
                val_std=val[1],
                wall_time_mean=float(np.mean([m.wall_time_s for m in members])),
                images_seen_mean=float(np.mean([m.images_seen for m in members])),
            )
        )
    return groups


def _names_apart(buckets: Sequence[tuple[tuple, tuple]]) -> dict[tuple, str]:
    """Each (key, setting)'s method name: the method, plus what differs between the settings that
    share its key."""
    by_key: dict[tuple, list[dict[str, str]]] = defaultdict(list)
    for key, setting in buckets:
        by_key[key].append(dict(setting))
    names = {}
    for key, setting in buckets:
        others = by_key[key]
        if len(others) == 1:
            names[(key, setting)] = key[-1]
            continue
        mine = dict(setting)
        differing = sorted(
            {k for o in others for k in o} - {k for k in mine if all(o.get(k) == mine[k] for o in others)}
        )
        shown = ",".join(f"{k}={mine.get(k, '-')}" for k in differing)
        names[(key, setting)] = f"{key[-1]}{{{shown}}}"
    return names


def select_by_validation(groups: Sequence[Group], candidates: Sequence[str], label: str) -> list[Group]:
    """For each (env, dataset, model, rate), the candidate method with the best mean validation
    accuracy, reported under ``label`` with its test numbers (test never takes part in the choice)."""
    chosen = []
    for setting in sorted({g.setting for g in groups}):
        pool = [
            g for g in groups if g.setting == setting and g.method in candidates and g.val_mean is not None
        ]
        if not pool:
            continue
        best = max(pool, key=lambda g: g.val_mean)
        chosen.append(
            Group(
                best.env_id,
                best.dataset,
                best.model,
                best.sampling_rate,
                label,
                best.n,
                best.test_mean,
                best.test_std,
                best.val_mean,
                best.val_std,
                best.wall_time_mean,
                best.images_seen_mean,
                note=f"= {best.method}",
            )
        )
    return chosen


def markdown_table(groups: Sequence[Group], method_order: Sequence[str] | None = None) -> str:
    """One table per (env, dataset, model): methods as rows, sampling rates as columns,
    cells ``test mean ± std (n)`` in percent."""
    out = []
    by_setting: dict[tuple, list[Group]] = defaultdict(list)
    for g in groups:
        by_setting[(g.env_id, g.dataset, g.model)].append(g)
    for (env_id, dataset, model), members in sorted(by_setting.items()):
        rates = sorted({g.sampling_rate for g in members})
        methods = list(
            dict.fromkeys(
                [m for m in (method_order or []) if any(g.method == m for g in members)]
                + sorted({g.method for g in members})
            )
        )
        out.append(
            f"**{env_id}**, dataset `{dataset}`, model `{model}`: top-1 test accuracy (%), "
            "mean ± std over seeds (n seeds)\n"
        )
        out.append("| method | " + " | ".join(f"{r:.0%}" for r in rates) + " |")
        out.append("|---|" + "---|" * len(rates))
        cell = {(g.method, g.sampling_rate): g for g in members}
        for method in methods:
            cells = []
            for rate in rates:
                g = cell.get((method, rate))
                if g is None:
                    cells.append("")
                else:
                    note = f" {g.note}" if g.note else ""
                    cells.append(f"{100 * g.test_mean:.2f} ± {100 * g.test_std:.2f} ({g.n}){note}")
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


CSV_FIELDS = [
    "env_id",
    "dataset",
    "model",
    "sampling_rate",
    "method",
    "n",
    "test_mean",
    "test_std",
    "val_mean",
    "val_std",
    "wall_time_mean",
    "images_seen_mean",
    "note",
]


def write_csv(groups: Sequence[Group], path: str | Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for g in groups:
            writer.writerow({f: getattr(g, f) for f in CSV_FIELDS})


def plot_rates(
    groups: Sequence[Group], path: str | Path, methods: Sequence[str] | None = None, title: str = ""
) -> Path:
    """Test accuracy against sampling rate, one line per method, ±1 std band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(methods) if methods else sorted({g.method for g in groups})
    fig, ax = plt.subplots(figsize=(8, 5))
    for method in methods:
        points = sorted((g.sampling_rate, g.test_mean, g.test_std) for g in groups if g.method == method)
        if not points:
            continue
        x, mean, std = (np.array(v) for v in zip(*points, strict=True))
        (line,) = ax.plot(100 * x, 100 * mean, marker="o", label=method)
        ax.fill_between(100 * x, 100 * (mean - std), 100 * (mean + std), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("sampling rate of the training set (%)")
    ax.set_ylabel("top-1 test accuracy (%), mean ± 1 std over seeds")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def agent_share(timing: dict[str, Any]) -> float:
    """The agent's share (acting + updates) of a run's recorded ``timing``: of its training loop
    without the final test evaluation, which plain fine-tuning pays alike."""
    loop = timing["loop_s"] - timing["test_evaluation_s"]
    return (timing["agent_acting_s"] + timing["agent_updates_s"]) / loop


def fmt_pct(value: float | None) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"
    )
