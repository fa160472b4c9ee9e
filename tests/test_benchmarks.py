"""The benchmark scripts run (smoke tests; their numbers live in benchmarks/results/)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import limit

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_step_overhead_quick(tmp_path):
    out = tmp_path / "overhead.md"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/step_overhead.py",
            "--quick",
            "--device",
            "cpu",
            "--configs",
            "cifar_resnet20-32px-b32",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=limit(600),
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    for mode in ("| plain |", "| env.step reward=batch |", "| env.step reward=next_batch |"):
        assert mode in text
    report = json.loads(out.with_suffix(".json").read_text().splitlines()[0])
    assert "fp32, contiguous" in text  # the CPU defaults, stated in the heading
    memory = report["peak_memory"]  # each mode's peak RSS, each in its own process
    assert set(memory) == {"plain", "env.step reward=batch", "env.step reward=next_batch"}
    assert all(row["peak_mib"] > 100 for row in memory.values())  # torch alone takes more
    assert memory["plain"]["subtracted_mib"] > 0 and "Peak memory: peak RSS (VmHWM)" in text
    # The data pipeline, timed alone, is a small part of the plain step it belongs to.
    assert 0 < report["steps"]["data pipeline alone (part of plain)"]["ratio"] < 0.5
    full = report["full_run"]  # whole runs: plain, then RL-Tune with each reward
    assert full["rounds"] == 1 and len(full["plain_runs_s"]) == 1
    for reward in ("batch", "next_batch"):
        assert full[f"ratio_{reward}"] == pytest.approx(full[f"rl_tune_{reward}_s"] / full["plain_run_s"])
        assert 0 < full[f"agent_share_{reward}"] < 1
        test_s = full[f"timing_{reward}"]["test_evaluation_s"]
        assert full[f"rl_tune_{reward}_without_test_s"] == pytest.approx(full[f"rl_tune_{reward}_s"] - test_s)
        assert full[f"ratio_without_test_{reward}"] == pytest.approx(
            full[f"rl_tune_{reward}_without_test_s"] / full["plain_without_test_s"]
        )
    assert "Full run, 1 epoch (" in text and "median of 1 round in rotated order" in text
    phases = full["plain_phases"]  # where the plain run's time goes, summing to its wall time
    assert sum(phases.values()) == pytest.approx(full["plain_run_s"])
    assert phases["training_s"] > 0 and "- plain (median run): setup" in text
    agent = report["agent"]
    assert agent["steps_per_epoch"] > 0
    for variant in ("rl_tune as run", "rl_tune, SB3's per-layer distribution"):
        row = agent[variant]
        assert row["acting_ms"] > 0 and row["updates_ms"] > 0
        assert row["total_ms"] == pytest.approx(row["acting_ms"] + row["updates_ms"])
        assert f"- {variant}: acting" in text


@pytest.mark.parametrize(
    "optimizer", ["schedulefree_adamw", "prodigy", "prodigy_layerwise", "ldog", "mechanic_adamw"]
)
def test_step_benchmark_times_each_optimizer_against_its_own_plain_step(optimizer):
    from benchmarks import overhead_measures, overhead_setup, step_overhead_report

    config = next(c for c in overhead_setup.OPTIMIZER_CONFIGS if c["optimizer"] == optimizer)
    rows = overhead_measures.step_benchmark(config, "cpu", steps=2, rounds=1)
    assert set(rows) >= {
        "plain",
        "env.step reward=next_batch",
        overhead_setup.EXTRAS,
        overhead_setup.EXTRAS_ALONE,
        overhead_setup.GRADIENT_EXTRAS,
        overhead_setup.GRADIENT_ALONE,
    }
    assert rows[overhead_setup.EXTRAS_ALONE]["ratio"] < 0.5  # a few numpy operations against a step
    assert rows[overhead_setup.GRADIENT_ALONE]["ratio"] < 0.5  # a few reductions against a step
    assert all(row["s_per_step"] > 0 for row in rows.values())
    text = step_overhead_report.render({"config": config, "device": "cpu", "machine": "m", "steps": rows})
    assert f"fp32, contiguous, {optimizer}" in text and "Observation extras" in text
    assert "Gradient extras (grad_ratio, drift, grad_cosine, base_step):" in text


def _child_peak(queue) -> None:
    from benchmarks import timing

    queue.put(timing.peak_rss_mib())


def test_peak_rss_of_a_spawned_child_is_its_own():
    """A mode's peak memory is measured in a fresh process: it must not include the parent's."""
    import multiprocessing

    from benchmarks import timing

    held = bytearray(600 * 2**20)  # the parent holds 600 MiB more than the child ever does
    held[::4096] = b"x" * len(held[::4096])  # touch every page so that it is resident
    parent = timing.peak_rss_mib()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_child_peak, args=(queue,))
    child.start()
    peak = queue.get(timeout=limit(120))
    child.join()
    assert parent > 600
    assert 0 < peak < parent - 400, (peak, parent)


def test_synthetic_stand_in_gives_full_epochs(monkeypatch, tmp_path):
    """Without ../shared (the GPU machine) the benchmark writes random images: enough of them that
    an epoch is 40 batches at the configuration's batch size, written once per process."""
    from benchmarks import overhead_setup
    from finetune_gym import FineTuneEnv

    monkeypatch.setattr(overhead_setup, "SHARED", tmp_path / "absent")
    config = {"name": "t", "model": "cifar_resnet20", "image_size": 32, "batch_size": 48}
    kwargs = overhead_setup.env_kwargs(config, "cpu", "next_batch")
    assert kwargs["dataset"] == "imagefolder"
    assert overhead_setup.env_kwargs(config, "cpu", "batch")["data_root"] == kwargs["data_root"]
    assert FineTuneEnv(**kwargs).steps_per_epoch >= 40
    # The full run builds its environment from the registered id, whose GTSRB options must not leak.
    from finetune_gym.agents.config import RunConfig
    from finetune_gym.agents.run import build_env

    kwargs.pop("epochs_per_episode")
    kwargs.pop("seed")
    run = RunConfig(env_id="FineTune-CIFARResNet-v0", algo="rl_tune", episodes=1, env_kwargs=kwargs)
    venv, state = build_env(run)
    assert state.recorder.unwrapped.steps_per_epoch >= 40
    venv.close()


def test_gtsrb_benchmark_grid_is_declared():
    from benchmarks import grid, grid_report, harness

    cells = grid.all_cells()
    assert len(cells) == len(set(cells))
    # First grid: 15 methods at 4 rates and 6 knobs at 15% on GTSRB. Second grid: 14 methods (11,
    # and issue 25's three bases) at 4 rates on GTSRB and at 2 on each of the four other
    # datasets. 3 seeds each, but 5 at 15% on the two grey-scale domains (issue 25). Issue 25's
    # Lee et al. rules (auto_rgn, four surgical blocks) at 15% on the five datasets.
    # Issue 28's reference prodigy_cosine at 15% on the training domains of split 2 (not GTSRB,
    # not clothing10).
    fifteen = 3 + 3 + 3 + 5 + 5
    prodigy_cosine = 3 + 5 + 5
    assert len(cells) == (
        (15 * 4 + 6) * 3 + 14 * (4 + 2 + 2) * 3 + 14 * 2 * (5 + 3) + 5 * fifteen + prodigy_cosine
    )
    reference = grid.run_config("prodigy_cosine", 0.15, 0, {}, "sign_digits")
    prodigy = grid.run_config("prodigy", 0.15, 0, {}, "sign_digits")
    assert reference.env_kwargs == {**prodigy.env_kwargs, "schedule": "cosine"}
    assert (reference.algo, reference.agent_kwargs, reference.epochs_per_episode) == ("prodigy", {}, 50)
    surgical = grid.run_config("surgical_layer2", 0.15, 0, {}, "oracle_mnist")
    assert (
        surgical.algo == "surgical" and surgical.agent_kwargs == {"block": "layer2"} and surgical.ema is None
    )
    assert [s for m, r, s, d in cells if (m, r, d) == ("prodigy", 0.15, "oracle_mnist")] == [0, 1, 2, 3, 4]
    assert grid.seeds_on("gtsrb", 0.15) == grid.seeds_on("oracle_mnist", 1.0) == (0, 1, 2)
    # Every cell of a family comes before the cells whose rate is chosen from it.
    for dataset, rates in grid.NEW_RATES.items():
        for rate in rates:
            order = [m for m, r, _, d in cells if r == rate and d == dataset]
            last = max(i for i, m in enumerate(order) if m.startswith("cosine_0"))
            assert last < order.index("rl_tune_cos_rel") and last < order.index("random_cos_rel")
            if dataset == "gtsrb":
                assert max(i for i, m in enumerate(order) if m.startswith("uniform_0")) < order.index(
                    "uniform_best_ema"
                )
    config = grid.run_config("rl_tune", 0.15, 1, {})
    assert config.env_id == "FineTune-CIFARResNet-v0" and config.episodes * config.epochs_per_episode == 50
    plain = grid.run_config("uniform_0.0003", 0.3, 0, {})
    assert plain.ema is None and plain.episodes == 1 and plain.agent_kwargs == {"lr": 3e-4}
    # The second grid: its RL-Tune and random control share one environment around Schedule-Free.
    rl, control = (grid.run_config(m, 1.0, 2, {}, "clothing10") for m in ("rl_tune_sf_rel", "random_sf_rel"))
    assert rl.env_kwargs == control.env_kwargs and rl.env_kwargs["optimizer"] == "schedulefree_adamw"
    assert rl.env_kwargs["data_root"].endswith("clothing10") and rl.ema is None and rl.episodes == 1
    assert grid.cell_id("prodigy", 0.15, 0, "sign_digits") == "sign_digits/prodigy/r0.15/s0"
    # Result lines record the commit they ran from.
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", harness.code_version())

    # The wall-time table leaves out cells whose time covers only part of the run, as the results
    # file marks them; every resumed cell of the committed grid is either marked or timed whole.
    assert grid_report.time_covers_run({"results": {"timing": {"resumed": True}}})
    assert not grid_report.time_covers_run({"results": {}, "wall_time_invalid": "paused"})
    # (The second grid's cells ran on code whose resumed timing always covers the whole run.)
    for line in grid.load_done().values():
        timing = line["results"].get("timing", {})
        first_grid = not grid.METHODS[line["method"]].other_rates
        if first_grid and timing.get("resumed") and "wall_time_invalid" not in line:
            assert timing.get("whole_run"), line["cell"]


def test_grid_status_estimates_the_missing_cells_time(capsys):
    from benchmarks import gtsrb_lowdata

    def line(dataset, rate, seconds, **extra):
        return {"dataset": dataset, "sampling_rate": rate, "results": {"wall_time_s": seconds}, **extra}

    done = {
        "a": line("gtsrb", 0.15, 60.0),
        "b": line("gtsrb", 0.15, 100.0),
        "c": line("gtsrb", 0.15, 80.0),
        "d": line("gtsrb", 0.15, 9999.0, wall_time_invalid="paused"),  # partial: not counted
        "e": line("sign_digits", 1.0, 400.0),
    }
    assert gtsrb_lowdata.cell_seconds(done, "gtsrb", 0.15) == (80.0, "median of 3 done there")
    seconds, how = gtsrb_lowdata.cell_seconds(done, "gtsrb", 0.3)
    assert seconds == pytest.approx(160.0) and how == "scaled from 15%"
    assert gtsrb_lowdata.cell_seconds(done, "clothing10", 1.0) is None
    # The status command prints them from the committed grid.
    gtsrb_lowdata.cmd_status(None)
    out = capsys.readouterr().out
    assert re.search(r"\d+ of \d+ cells done", out) and "gtsrb 15%" in out


def test_transfer_benchmark_is_declared(tmp_path, monkeypatch):
    """The transfer protocol: pretraining never sees the held-out domain; deployment cells are the
    GTSRB grid's protocol with the pretrained agent; the report runs on what exists."""
    from benchmarks import grid, harness, transfer_report, transfer_setup
    from finetune_gym.agents.config import RunConfig

    for held_out, (task_set, rates) in transfer_setup.SPLITS.items():
        names = {
            task.get("name", task["dataset"])
            for task in transfer_setup.pretrain_config(task_set).resolved_tasks()
        }
        assert held_out not in names and len(names) == 3
        assert set(rates) <= set(grid.RATES)
    config = transfer_setup.run_config("pretrained_learn", 0.15, 1, "gtsrb", Path("policy.pt"))
    assert isinstance(config, RunConfig) and config.episodes == 1 and config.epochs_per_episode == 50
    assert config.ema is None and config.agent_kwargs["learn"] is True
    assert config.env_kwargs["weights"] == grid.BASE_ENV["weights"]
    monkeypatch.setattr(transfer_report, "REPORT", tmp_path / "transfer.md")
    monkeypatch.setattr(transfer_setup, "RESULTS", harness.ResultsFile(tmp_path / "none.jsonl"))
    monkeypatch.setattr(transfer_report, "DERIVED", tmp_path / "derived.json")
    monkeypatch.setattr(transfer_report, "RUNS_DIR", tmp_path / "no_runs")
    transfer_report.write_report()
    assert "No deployment cell has run yet." in (tmp_path / "transfer.md").read_text()
    # The policy plot, from a deployed cell's learning-rate log.
    import numpy as np

    cell = tmp_path / "runs" / grid.cell_id("pretrained_frozen", 0.15, 0, "gtsrb")
    cell.mkdir(parents=True)
    rates = 0.0025 * 2.0 ** np.array([[-3, 0, 3]] * 20, dtype=float)
    np.savez(cell / "lr_schedule.npz", learning_rates=rates, layer_names=np.array(["stem", "mid", "head"]))
    monkeypatch.setattr(transfer_report, "RUNS_DIR", tmp_path / "runs")
    assert (
        transfer_report.plot_policy(tmp_path / "policy.png") and (tmp_path / "policy.png").stat().st_size > 0
    )
    # What the report reads from the run folders is kept in the committed facts file, and a clone
    # without the folders reports the same.
    np.savez(  # a second seed: the head at the base rate for the first two fifths, then 8x
        (cell.parent / "s1").mkdir() or cell.parent / "s1" / "lr_schedule.npz",
        learning_rates=np.concatenate([rates[:8] * [1, 1, 1 / 8], rates[8:]]),
        layer_names=np.array(["stem", "mid", "head"]),
    )
    facts = transfer_report.derived_facts()
    phases = facts["phases"]["gtsrb/pretrained_frozen/r0.15"]
    assert phases["layers"] == ["stem", "mid", "head"] and phases["runs"] == 2
    assert phases["log2_multiple"] == [[-3.0] * 5, [0.0] * 5, [1.5, 1.5, 3.0, 3.0, 3.0]]
    assert phases["log2_spread"][0] == 0.0  # constant within each fifth
    table = transfer_report.phases_table(facts["phases"], "gtsrb")
    assert (
        table[0] == "| layer | frozen 15% (2 runs) |" and table[-2] == "| head | +1.5 +1.5 +3.0 +3.0 +3.0 |"
    )
    assert transfer_report.phases_table(facts["phases"], "sign_digits") == []
    monkeypatch.setattr(transfer_report, "RUNS_DIR", tmp_path / "no_runs")
    assert transfer_report.derived_facts() == facts


def test_transfer_targets_are_judged_from_complete_cells():
    """+2 beyond the spread at the lowest rate, not below elsewhere, +2 over the control everywhere;
    a rate with a missing reference is named incomplete, never judged."""
    from benchmarks import transfer_report
    from finetune_gym.agents.report import Group

    def group(method, rate, mean, std=0.01, n=3, note=""):
        return Group("E", "gtsrb", "m", rate, method, n, mean, std, 0.5, 0.0, 1.0, 1.0, note)

    groups = [
        group("uniform (best on val)", 0.15, 0.60, note="= uniform_0.001"),
        group("cosine (best on val)", 0.15, 0.58),
        group("schedulefree_adamw", 0.15, 0.59),
        group("random_sf_rel", 0.15, 0.55),
        group("pretrained_frozen", 0.15, 0.63),  # +3, beyond spread (0.62 > 0.61); +8 over control
        group("pretrained_learn", 0.15, 0.615),  # +1.5: missed
        *[group(m, 1.0, v) for m, v in [("uniform (best on val)", 0.90), ("cosine (best on val)", 0.91)]],
        group("random_sf_rel", 1.0, 0.85),
        group("pretrained_frozen", 1.0, 0.91),
        group("pretrained_learn", 1.0, 0.92, n=2),
    ]
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:3]): line
        for line in transfer_report.targets_table(groups, (0.15, 1.0))[2:]
    }
    assert (
        "+3.00" in rows[("15%", "pretrained_frozen")]
        and "beyond spread: met; control +2: met" in rows[("15%", "pretrained_frozen")]
    )
    assert "+2, beyond spread: missed" in rows[("15%", "pretrained_learn")]
    assert "uniform (best on val) = uniform_0.001: 60.00" in rows[("15%", "pretrained_learn")]
    # No Schedule-Free cell at 100%: incomplete, whatever the others say.
    assert "incomplete: schedulefree_adamw" in rows[("100%", "pretrained_frozen")]
    assert "incomplete: pretrained_learn, schedulefree_adamw" in rows[("100%", "pretrained_learn")]


def test_threads_under_load_measures_both_thread_counts(tmp_path, capsys):
    from benchmarks import step_overhead

    out = tmp_path / "threads.md"
    step_overhead.main(["--threads-under-load", "--steps", "2", "--rounds", "1", "--out", str(out)])
    text = out.read_text()
    for row in (
        "as found, 1 thread",
        "as found, 2 threads",
        "+ one busy process, 1 thread",
        "+ one busy process, 2 threads",
    ):
        assert f"| {row} |" in text
    assert "| as found, 2 threads | " in text and "| 1.00 |" in text


def test_the_grid_pairs_issue_25s_methods_with_the_bar_by_seed():
    from benchmarks import grid, grid_report

    def line(method, seed, val, test):
        cell = grid.cell_id(method, 0.15, seed, "sign_digits")
        results = {"final_val_accuracy": val, "final_test_accuracy": test}
        return cell, {"cell": cell, "dataset": "sign_digits", "sampling_rate": 0.15, "results": results}

    done = dict(
        [line(m, s, 0.5, 0.5) for m in grid.NO_TUNING if m != "prodigy" for s in range(3)]
        + [line("prodigy", s, 0.9, t) for s, t in enumerate((0.80, 0.70, 0.60))]  # the bar: best on val
        + [line("auto_rgn", s, 0.1, t) for s, t in enumerate((0.81, 0.75, 0.50))]
        + [
            line(m, s, 0.2 + 0.1 * (m == "surgical_layer2"), 0.9)
            for m in grid.SURGICAL_METHODS
            for s in range(3)
        ]
    )
    table = grid_report._paired_table(done)
    row = next(r for r in table.splitlines() if r.startswith("| sign_digits"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    columns = dict(zip(["dataset", "rate", "bar", *grid_report.PAIRED], cells, strict=True))
    assert columns["bar"] == "prodigy" and columns["prodigy"] == "(the bar)"
    assert columns["auto_rgn"] == "-1.3 ± 7.8: +1.0/+5.0/-10.0"
    assert columns["surgical"].startswith("+20.0 ± 10.0 (layer2): +10.0/+20.0/+30.0")
    assert columns["cosine"] == ""  # its family is not done


@pytest.mark.slow
def test_executors_benchmark_runs_the_same_cell_through_both_and_reports_ray_costs(tmp_path):
    """Issue 27's throughput target is measured by benchmarks/executors.py: the same real cell through
    the process pool and through Ray (same results, checked), Ray's start-up and memory reported."""
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from finetune_gym import presets

    if not (presets.data_root() / "oracle_mnist").is_dir():
        pytest.skip("needs oracle_mnist from ../shared/data")
    out = tmp_path / "executors.md"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/executors.py",
            "--cells",
            "oracle_mnist/prodigy/r0.15/s0",
            "--epochs",
            "1",
            "--rounds",
            "1",
            "--workers",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=limit(900),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert "| processes |" in text and "| ray |" in text and "Ray's start-up" in text
    assert "same accuracies through both executors" in text


def test_transfer_runs_its_missing_deployment_cells_as_harness_jobs(tmp_path, monkeypatch):
    """transfer.py run: the split's policy first, then every missing cell once as a job; a second
    call runs nothing."""
    import concurrent.futures as futures
    import contextlib

    from benchmarks import grid, harness, transfer, transfer_setup

    store = harness.ResultsFile(tmp_path / "transfer.jsonl")
    ran = []

    def fake_cell(method, rate, seed, dataset, policy):
        ran.append((method, rate, seed, dataset, policy))
        return {"cell": grid.cell_id(method, rate, seed, dataset), "results": {"final_test_accuracy": 0.5}}

    monkeypatch.setattr(transfer_setup, "RESULTS", store)
    monkeypatch.setattr(transfer, "RESULTS", store)
    monkeypatch.setattr(transfer, "ensure_policy", lambda task_set: tmp_path / f"{task_set}.pt")
    monkeypatch.setattr(transfer, "run_cell", fake_cell)
    monkeypatch.setattr(transfer, "write_report", lambda: None)
    monkeypatch.setattr(
        harness, "pool_from_args", lambda args: contextlib.nullcontext(futures.ThreadPoolExecutor(2))
    )
    transfer.main(["run", "--datasets", "sign_digits", "--workers", "2"])
    rates = transfer_setup.SPLITS["sign_digits"][1]
    assert len(ran) == len(rates) * len(grid.SEEDS) * len(transfer_setup.METHODS)
    assert {r[4] for r in ran} == {str(tmp_path / "no-sign_digits.pt")}
    assert len(store.by("cell")) == len(ran) and all(line["code"] for line in store.lines())
    transfer.main(["run", "--datasets", "sign_digits"])
    assert len(ran) == len(rates) * len(grid.SEEDS) * len(transfer_setup.METHODS)  # nothing twice


def test_pbt_report_sets_pbt_beside_the_one_run_base_paired_by_seed_with_its_runs(tmp_path, monkeypatch):
    """pbt.py report: per setting, the val-chosen base, the val-chosen cosine and PBT, each with
    the number of runs it took and its per-seed difference to the base; a missing seed is named."""
    from benchmarks import grid, pbt_report
    from benchmarks import headroom_study as study

    def line(method, seed, val, test):
        cell = grid.cell_id(method, 0.15, seed, "gtsrb")
        return cell, {"cell": cell, "results": {"final_val_accuracy": val, "final_test_accuracy": test}}

    done = dict(
        [line(m, s, 0.5, 0.5) for m in study.POOL if m != "prodigy" for s in grid.seeds_on("gtsrb", 0.15)]
        + [line("prodigy", s, 0.9, 0.70 + 0.01 * s) for s in grid.seeds_on("gtsrb", 0.15)]
        + [line(f"cosine_{lr:g}", s, 0.3 + (lr == 1e-3), 0.60) for lr in grid.UNIFORM_RATES for s in range(5)]
    )
    monkeypatch.setattr(grid, "load_done", lambda: done)
    monkeypatch.setattr(study, "load_lines", lambda: [])  # no headroom search: no row for it
    monkeypatch.setattr(pbt_report, "REPORT_FILE", tmp_path / "pbt.md")
    multipliers = {"base": 2.0, "head": 0.5}
    pbt_lines = [
        {"setting": "gtsrb/r0.15", "seed": s, "runs": 8, "wall_s": 1800, "cores": 2,
         "results": {"final_val_accuracy": 0.9, "final_test_accuracy": t, "multipliers": multipliers}}
        for s, t in ((0, 0.75), (2, 0.69))
    ]  # fmt: skip
    del pbt_lines[1]["cores"]  # a population that did not record its cores: its cost is left out
    pbt_report.write_report(pbt_lines, ["gtsrb/r0.15", "clothing10/r0.15"], [0, 1, 2])
    text = (tmp_path / "pbt.md").read_text()
    rows = {
        r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")]
        for r in text.splitlines()
        if r.startswith("| ")
    }
    assert rows["base: prodigy (no tuning, chosen on val)"][1:3] == ["1", "71.0 ± 1.4"]  # seeds 0 and 2
    assert rows["tuned cosine (lr 0.001, chosen on val)"][1:] == ["5", "60.0 ± 0.0", "-10.0, -12.0", "-11.0"]
    assert rows["PBT (best member on val)"][1:] == ["8", "72.0 ± 4.2", "+5.0, -3.0", "+1.0"]
    assert (
        "Seeds [0, 2]; missing [1]." in text
        and "1.00 core-hours (wall-clock x cores) for the 1 that recorded" in text
    )
    assert "## clothing10 0.15\n\nNot run yet (seeds [0, 1, 2])." in text


def test_signal_and_noise_separates_candidates_from_the_instances_noise():
    """stats.signal_and_noise: an additive candidate + instance matrix has no noise whatever its
    instance effects; noise added cell by cell is recovered at its size over sqrt(instances)."""
    from benchmarks import stats

    candidates, instances = np.array([0.0, 1.0, 2.0, 3.0]), np.array([-5.0, 0.0, 10.0])
    spread, noise = stats.signal_and_noise(candidates[:, None] + instances[None, :])
    assert spread == pytest.approx(np.std(candidates, ddof=1)) and noise == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    cells = rng.normal(0.0, 2.0, size=(400, 4))  # no candidate effect, cell noise sd 2
    spread, noise = stats.signal_and_noise(cells + instances.repeat(2)[None, :4])
    assert noise == pytest.approx(2.0 / 2, rel=0.1) and spread == pytest.approx(noise, rel=0.15)
    with pytest.raises(ValueError, match="at least 2 candidates and 2 instances"):
        stats.signal_and_noise(np.zeros((3, 1)))
    # The F-test: under no candidate effect its p-values are uniform (about 5% below 0.05); a real
    # effect of 3 noise-sds between candidates is found; the true spread is the observed one less
    # the noise's part.
    null = [stats.candidate_effect(rng.normal(0.0, 1.0, size=(8, 4))).p for _ in range(2000)]
    assert np.mean(np.array(null) < 0.05) == pytest.approx(0.05, abs=0.015)
    effect = np.arange(8.0)[:, None] * 1.5 + rng.normal(0.0, 1.0, size=(8, 4))
    *_, true_spread, p = stats.candidate_effect(effect)
    assert p < 1e-6 and true_spread == pytest.approx(np.std(np.arange(8.0) * 1.5, ddof=1), rel=0.1)
    spread, noise, true_spread, p = stats.candidate_effect(candidates[:, None] + instances[None, :])
    assert (spread, noise) == stats.signal_and_noise(candidates[:, None] + instances[None, :])
    assert true_spread == pytest.approx(np.std(candidates, ddof=1)) and p < 1e-12
    assert stats.candidate_effect(np.zeros((3, 2))) == (0.0, 0.0, 0.0, 1.0)


def test_rliable_statistics_follow_their_definitions():
    """benchmarks/stats.py against scipy and hand-computed cases (rliable itself does not run here)."""
    from scipy.stats import trim_mean

    from benchmarks import stats

    values = np.array([5.0, -1.0, 3.0, 2.0, 8.0, 0.0, 4.0, 7.0, 1.0])
    assert stats.iqm(values) == pytest.approx(trim_mean(values, 0.25))
    # Constant within each task: every replicate is the same, the interval is the point.
    point, low, high = stats.stratified_bootstrap({"a": [1.0] * 3, "b": [3.0] * 5}, stats.mean, reps=200)
    assert point == low == high == pytest.approx((3 * 1 + 5 * 3) / 8)
    # Strata keep their sizes: a task's runs are never replaced by another task's.
    seen = []
    stats.stratified_bootstrap(
        {"a": [0.0, 0.0], "b": [1.0, 1.0, 1.0]}, lambda v: seen.append(v.sum()) or 0.0, reps=50
    )
    assert set(seen) == {3.0}
    point, low, high = stats.stratified_bootstrap({"a": [0.0, 1.0, 2.0, 3.0, 4.0]}, stats.mean, reps=4000)
    assert point == 2.0 and 0.5 < low < 2.0 < high < 3.5
    assert stats.probability_of_improvement({"t": [1.0, 3.0]}, {"t": [2.0, 3.0]}) == pytest.approx(
        (0 + 0 + 1 + 0.5) / 4
    )
    assert stats.probability_of_improvement({"t": [2.0], "u": [0.0]}, {"t": [1.0], "u": [1.0]}) == 0.5
    # The profile: per task the fraction of runs above tau, then the mean over tasks (t: 2 of 4
    # runs above 1.5; u: 1 of 1), whatever the tasks' sizes.
    fraction, low, high = stats.performance_profile(
        {"t": [1.0, 2.0, 1.0, 3.0], "u": [5.0]}, [1.5, 10.0], reps=300
    )
    assert fraction.tolist() == [(0.5 + 1.0) / 2, 0.0]
    assert low[0] <= fraction[0] <= high[0] and low[1] == high[1] == 0.0


def test_the_noise_test_runs_jittered_prodigy_paired_with_prodigy_and_pools_its_answer(tmp_path, monkeypatch):
    """benchmarks/controller_eval.py's step-size noise test: Prodigy with per-step per-layer noise on
    every held-out instance, Prodigy where neither the grid nor the benchmark has run it; the
    report pairs them seed by seed and states the declared pooled answer."""
    from benchmarks import controller_eval as ce
    from benchmarks import controller_report as cr
    from benchmarks import grid, harness

    def line(method, rate, seed, test):
        cell = grid.cell_id(method, rate, seed, "gtsrb")
        return cell, {"cell": cell, "results": {"final_val_accuracy": 0.9, "final_test_accuracy": test}}

    done = dict(line(m, r, s, 0.70) for m in ce.POOL for r in (0.15, 0.3) for s in range(3))
    instances = [i for i in ce.InstanceSet.load("v1").split("1", "test") if i.sampling_rate in (0.15, 0.3)]
    monkeypatch.setattr(ce, "test_instances", lambda split: instances if split == "1" else [])
    monkeypatch.setattr(grid, "load_done", lambda: done)
    monkeypatch.setattr(ce, "RESULTS", harness.ResultsFile(tmp_path / "eval.jsonl"))
    monkeypatch.setattr(cr, "REPORT_FILE", tmp_path / "eval.md")
    monkeypatch.setattr(ce, "RUNS", tmp_path / "controllers")
    keys = sorted(job.key for job in ce.noise_jobs("1", done, {}))
    assert len(keys) == 10 + 4  # jittered Prodigy everywhere; Prodigy on seeds 3-4, the grid's 0-2 reused
    assert "split1/prodigy/gtsrb/r0.3/s4" in keys and "split1/prodigy/gtsrb/r0.3/s2" not in keys
    instance = ce.Instance("gtsrb", "cifar_resnet20", 0.15, 0, 50)
    mine, theirs = (
        ce.run_config("1", ce.NOISE_TEST, instance, done),
        grid.run_config("prodigy", 0.15, 0, done),
    )
    assert mine.env_kwargs == theirs.env_kwargs and mine.seed == theirs.seed == 0
    assert (mine.algo, mine.agent_kwargs) == ("residual_controller", {"jitter": 0.37})
    assert (mine.episodes, mine.epochs_per_episode, mine.ema) == (1, 50, None)
    cr.write_report(["1"])
    assert "Step-size noise test" not in (tmp_path / "eval.md").read_text()  # nothing before its runs
    for instance in instances:
        if instance.seed >= 3:
            ce.RESULTS.append(
                {"cell": ce.cell_key("1", "prodigy", instance), "results": {"final_test_accuracy": 0.70}}
            )
    assert sorted(job.key for job in ce.noise_jobs("1", done, ce.RESULTS.by("cell"))) == sorted(
        k for k in keys if ce.NOISE_TEST in k
    )
    for instance in instances:
        gain = 0.02 if instance.seed else -0.01
        ce.RESULTS.append(
            {
                "cell": ce.cell_key("1", ce.NOISE_TEST, instance),
                "results": {"final_test_accuracy": 0.70 + gain},
            }
        )
    assert ce.noise_jobs("1", done, ce.RESULTS.by("cell")) == []
    cr.write_report(["1"])
    text = (tmp_path / "eval.md").read_text()
    part = text[text.index("Step-size noise test (") :]
    assert "| gtsrb 15% | prodigy | 70.0 ± 0.0 | 71.4 ± 1.3 | -1.0, +2.0, +2.0, +2.0, +2.0 | +1.4 [" in part
    assert "P(prodigy_jitter > prodigy)" in part and ": met" not in part and ": missed" not in part
    assert "against the best one-run method chosen on validation" in part
    verdict = text[text.index("## Step-size noise test, pooled") :]
    assert "over 10 paired held-out runs of split(s) 1 (2 tasks): mean +1.40 points" in verdict
    assert "the hypothesis holds." in verdict


def test_controller_evaluation_pairs_with_the_val_chosen_method_and_reports_intervals(tmp_path, monkeypatch):
    """benchmarks/controller_eval.py: the jobs are the controller on every held-out instance and the
    chosen one-run method on the seeds the grid lacks; the report pairs them seed by seed."""
    from benchmarks import controller_eval as ce
    from benchmarks import controller_plots, grid, harness
    from benchmarks import controller_report as cr

    def line(method, rate, seed, val, test):
        cell = grid.cell_id(method, rate, seed, "gtsrb")
        return cell, {"cell": cell, "results": {"final_val_accuracy": val, "final_test_accuracy": test}}

    done = dict(
        line(m, r, s, 0.9 if m == "prodigy" else 0.5, 0.70)
        for m in ce.POOL
        for r in (0.15, 0.3)
        for s in range(3)
        if not (m == "mechanic" and r == 0.3)  # a pool with a hole: chosen among the rest
    )
    monkeypatch.setattr(
        ce,
        "test_instances",
        lambda split: [
            i for i in ce.InstanceSet.load("v1").split("1", "test") if i.sampling_rate in (0.15, 0.3)
        ],
    )
    monkeypatch.setattr(ce, "RESULTS", harness.ResultsFile(tmp_path / "eval.jsonl"))
    monkeypatch.setattr(cr, "REPORT_FILE", tmp_path / "eval.md")
    monkeypatch.setattr(grid, "load_done", lambda: done)
    monkeypatch.setattr(ce, "RUNS", tmp_path / "controllers")
    keys = sorted(job.key for job in ce.jobs("1", done, {}))
    # The controller and the reference on 10 instances each; prodigy (chosen) on seeds 3 and 4.
    assert len(keys) == 2 * 5 + 2 * 5 + 2 * 2
    assert "split1/prodigy/gtsrb/r0.15/s3" in keys and "split1/prodigy/gtsrb/r0.15/s0" not in keys
    assert "split1/prodigy_cosine/gtsrb/r0.15/s0" in keys and "split1/prodigy_cosine/gtsrb/r0.3/s4" in keys
    config = ce.run_config("1", ce.CONTROLLER, ce.Instance("gtsrb", "cifar_resnet20", 0.15, 0, 50), done)
    theirs = grid.run_config("prodigy", 0.15, 0, done, "gtsrb")
    assert config.env_kwargs == theirs.env_kwargs and config.seed == 0 and config.epochs_per_episode == 50
    assert config.agent_kwargs == {"policy": str(ce.controller_file("1"))}
    # The reference is the pool's Prodigy run, with the cosine schedule and nothing else changed.
    reference = ce.run_config(
        "1", "prodigy_cosine", ce.Instance("gtsrb", "cifar_resnet20", 0.15, 0, 50), done
    )
    assert reference.env_kwargs == {**theirs.env_kwargs, "schedule": "cosine"}
    assert (reference.algo, reference.agent_kwargs, reference.label) == (
        "prodigy",
        theirs.agent_kwargs,
        "prodigy_cosine",
    )
    assert (reference.episodes, reference.epochs_per_episode, reference.ema) == (1, 50, None)
    for rate in (0.15, 0.3):
        for seed in range(5):
            gain = 0.03 if seed else -0.01
            instance = ce.Instance("gtsrb", "cifar_resnet20", rate, seed, 50)
            ce.RESULTS.append(
                {
                    "cell": ce.cell_key("1", ce.CONTROLLER, instance),
                    "results": {"final_test_accuracy": 0.70 + gain},
                }
            )
            if seed >= 3:
                ce.RESULTS.append(
                    {"cell": ce.cell_key("1", "prodigy", instance), "results": {"final_test_accuracy": 0.70}}
                )
            if rate == 0.15:  # the reference: 71% on every seed at 15%, not run yet at 30%
                ce.RESULTS.append(
                    {
                        "cell": ce.cell_key("1", "prodigy_cosine", instance),
                        "results": {"final_test_accuracy": 0.71},
                    }
                )
    pairs = [(s, 0.72, 0.70) for s in range(5)]  # a headroom of +2 over prodigy at 15%
    monkeypatch.setattr(
        cr.study,
        "confirmation",
        lambda setting, done, lines: ("prodigy", 7, pairs) if setting == "gtsrb/r0.15" else None,
    )
    cr.write_report(["1"])
    text = (tmp_path / "eval.md").read_text()
    if not ce.controller_file("1").parent.is_dir():  # the meta-training's own table, once it has run
        assert "Meta-training of split 1: not started" in text
    assert (
        "- gtsrb 15%: headroom +2.0 points over prodigy (profile trial 7); the controller +2.2 on the same 5 seeds: 110% captured (target >= 75%: met)"
        in text
    )
    # The task's own interval: resampling 5 gains from {-1 (one seed), +3 (four)}, the mean is 3 - 4k/5
    # with k ~ Binomial(5, 0.2) draws of -1; P(k >= 3) = 0.058 > 2.5% > P(k >= 4) = 0.007, so the
    # 2.5th percentile is k = 3 (+0.6), and P(k = 0) = 0.33 puts the 97.5th at +3.0.
    assert (
        "| gtsrb 15% | prodigy | 70.0 ± 0.0 | 72.2 ± 1.8 | -1.0, +3.0, +3.0, +3.0, +3.0 | +2.2 [+0.6, +3.0] |  |"
        in text
    )
    assert "| gtsrb 30% | prodigy (of the pool without mechanic) |" in text
    assert (
        "15% and 30%: mean paired gain +2.20 points [95% CI" in text
        and "target +2 with the interval above 0: met" in text
    )
    assert "trained by PPO" not in text
    # The reference's own table: paired with it, no target verdict, its missing runs named.
    part = text[text.index("Controller against a reference") :]
    assert "`prodigy_cosine`, Prodigy with cosine annealing" in part
    assert (
        "| gtsrb 15% | prodigy_cosine | 71.0 ± 0.0 | 72.2 ± 1.8 | -2.0, +2.0, +2.0, +2.0, +2.0 | +1.2 ["
        in part
    )
    assert "| gtsrb 30% | prodigy_cosine |  |  |  |  | [0, 1, 2, 3, 4] |" in part
    assert "15% and 30%: mean paired gain +1.20 points" in part and "P(controller > prodigy_cosine)" in part
    assert "(seeds missing: not final)" in part and ": met" not in part and ": missed" not in part
    assert "![performance profile, split 1](controller_profile_split1.png)" in text
    assert (tmp_path / "controller_profile_split1.png").read_bytes()[:4] == b"\x89PNG"
    scores = controller_plots.profile_scores("1", done, ce.RESULTS.by("cell"))
    assert sorted(scores) == ["best one-run (val)", "residual_controller"]
    assert scores["residual_controller"][("gtsrb", 0.15)] == pytest.approx([-1.0, 3.0, 3.0, 3.0, 3.0])

    # Shipping the controller into the package: refused without it, refused while a held-out seed
    # is missing, and then its card carries the held-out result the report shows.
    from finetune_gym.agents.residual_controller import load_controller, save_controller

    shipped = tmp_path / "package" / "residual_controller_v1_split1.pt"
    with pytest.raises(FileNotFoundError, match="finish its meta-training first"):
        cr.ship("1", shipped)
    ce.controller_file("1").parent.mkdir(parents=True)
    save_controller(ce.controller_file("1"), [0.25] * 8, "prodigy", {"trainer": "cma-es", "generations": 15})
    complete = ce.RESULTS
    monkeypatch.setattr(ce, "RESULTS", harness.ResultsFile(tmp_path / "partial.jsonl"))
    ce.RESULTS.append(next(iter(complete.by("cell").values())))
    with pytest.raises(
        RuntimeError,
        match=r"incomplete \(seeds missing: \{'gtsrb 15%': \[1, 2, 3, 4\], 'gtsrb 30%': \[0, 1, 2, 3, 4\]",
    ):
        cr.ship("1", shipped)
    assert not shipped.exists()
    monkeypatch.setattr(ce, "RESULTS", complete)
    assert cr.ship("1", shipped) == shipped
    payload = load_controller(shipped)
    assert payload["theta"] == [0.25] * 8 and payload["card"]["generations"] == 15
    held_out = payload["card"]["held_out"]
    assert held_out["tasks"][0] == {
        "task": "gtsrb 15%",
        "best_one_run": "prodigy",
        "paired_gains": [-1.0, 3.0, 3.0, 3.0, 3.0],
        "mean_gain": 2.2,
    }
    low = held_out["targets"][0]
    assert low["rates"] == "15% and 30%" and low["met"] and low["complete"]
    assert low["mean_gain"] == pytest.approx(2.2) and low["ci95"][0] <= 2.2 <= low["ci95"][1]

    # The held-out runs wait for the grid's pool: the chosen method could change once it is complete.
    from benchmarks import controller

    assert ce.incomplete_pools("1", done) == {("gtsrb", 0.3): ["mechanic"]}
    with pytest.raises(SystemExit, match=r"pool \(gtsrb 30%: mechanic\).*--datasets gtsrb --only mechanic`"):
        controller.main(["evaluate", "--split", "1"])

    # Once PPO has trained the same controller, it is a second method on the same instances.
    ppo = ce.controller_file("1", method="residual_controller_ppo")
    assert ppo.parent.name == "v1-split1-s0-ppo"
    # A search over the cosine base (v2) has a folder of its own, judged once it has a controller.
    cosine = ce.controller_file("2", method="residual_controller_cosine")
    assert cosine.parent.name == "v1-split2-s0-cosine" == ce.run_name("v1", "2", 0, "cma", "cosine")
    assert ce.judged_controllers("2") == ["residual_controller"]
    cosine.parent.mkdir(parents=True)
    save_controller(cosine, [0.0] * 8, "prodigy", {"trainer": "cma-es"}, schedule="cosine")
    assert ce.judged_controllers("2") == ["residual_controller", "residual_controller_cosine"]
    ppo.parent.mkdir(parents=True)

    save_controller(ppo, [0.0] * 8, "prodigy", {"trainer": "ppo"})
    finished = ce.RESULTS.by("cell")
    keys = sorted(job.key for job in ce.jobs("1", done, finished))
    assert keys == sorted(
        [f"split1/residual_controller_ppo/gtsrb/r{r:g}/s{s}" for r in (0.15, 0.3) for s in range(5)]
        + [f"split1/prodigy_cosine/gtsrb/r0.3/s{s}" for s in range(5)]
    )
    config = ce.run_config(
        "1", "residual_controller_ppo", ce.Instance("gtsrb", "cifar_resnet20", 0.15, 0, 50), done
    )
    assert config.algo == "residual_controller" and config.agent_kwargs == {"policy": str(ppo)}
    for rate in (0.15, 0.3):
        for seed in range(5):
            instance = ce.Instance("gtsrb", "cifar_resnet20", rate, seed, 50)
            key = ce.cell_key("1", "residual_controller_ppo", instance)
            ce.RESULTS.append({"cell": key, "results": {"final_test_accuracy": 0.69}})
    cr.write_report(["1"])
    text = (tmp_path / "eval.md").read_text()
    ppo_part = text[text.index("Controller trained by PPO") :]
    assert (
        "| gtsrb 15% | prodigy | 70.0 ± 0.0 | 69.0 ± 0.0 | -1.0, -1.0, -1.0, -1.0, -1.0 | -1.0 [-1.0, -1.0] |  |"
        in ppo_part
    )
    assert (
        "| gtsrb 15% | prodigy | 70.0 ± 0.0 | 72.2 ± 1.8 |" in text[: text.index("Controller trained by PPO")]
    )
    # Head to head with the CMA-ES controller on the same seeds: 69 against 69 (seed 0), 73 (others).
    head = ppo_part[ppo_part.index("Controller trained by PPO against the controller") :]
    assert "(`residual_controller`, `" in head and "not the bar the targets judge" in head
    assert (
        "| gtsrb 15% | residual_controller | 72.2 ± 1.8 | 69.0 ± 0.0 | +0.0, -4.0, -4.0, -4.0, -4.0 |" in head
    )
    assert "P(controller > residual_controller)" in head and ": met" not in head


def test_ppo_report_sets_its_runs_beside_the_searchs_budget(tmp_path, monkeypatch):
    """PPO's training section: its runs against its budget and the search's, its episodes' paired
    gains in blocks, and its weights (the checkpoint's mean while training) beside the search's."""
    import torch

    from benchmarks import controller_eval as ce
    from benchmarks import controller_report as cr
    from finetune_gym.agents.run_budget import save_trainer

    monkeypatch.setattr(ce, "RUNS", tmp_path / "controllers")
    assert cr.ppo_report("1") == []  # not started: no section
    search = ce.controller_file("1").parent
    search.mkdir(parents=True)
    row = {"generation": 10, "mean_gain": 0.0, "best_gain": 0.0, "sigma": 0.4, "runs": 384, "run_s": 7200.0}
    (search / "generations.jsonl").write_text(json.dumps(row | {"mean_theta": [0.5] * 8}) + "\n")
    run = ce.controller_file("1", method="residual_controller_ppo").parent
    run.mkdir(parents=True)
    (run / "ppo_config.json").write_text(json.dumps({"runs": 384}))
    episodes = [
        {"episode": e + 1, "instance": "i", "paired_gain": 0.01 if e < 32 else -0.02, "wall_s": 90.0}
        for e in range(40)
    ]
    (run / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    (run / "bases.jsonl").write_text(json.dumps({"instance": "i", "val": 0.5, "wall_s": 360.0}) + "\n")
    theta = torch.nn.Parameter(torch.tensor([0.25, -1.0, 0, 0, 0, 0, 0, 0]))
    policy = SimpleNamespace(  # what save_trainer reads of an SB3 model's policy
        state_dict=lambda: {"action_net.theta": theta.detach()}, optimizer=torch.optim.Adam([theta])
    )
    save_trainer(
        run / "checkpoint.pt",
        SimpleNamespace(policy=policy, num_timesteps=1000),
        {"runs": 41, "episodes": 40},
    )
    text = "\n".join(cr.ppo_report("1"))
    assert (
        "41 of 384 runs (base runs included; 1 base runs cached), 1.1 h of runs; the CMA-ES search used 384 runs (2.0 h)"
        in text
    )
    assert "| 1-32 | +1.00 | 32/32 |" in text and "| 33-40 | -2.00 | 0/8 |" in text
    assert "policy's mean at its last update; training not finished" in text
    assert "| bias | +0.25 | +0.50 |" in text and "| depth | -1.00 | +0.50 |" in text


def test_search_report_shows_each_generations_spread_and_noise(tmp_path, monkeypatch):
    """The meta-training table: per generation, the candidates' spread and the noise in one
    fitness, computed from the evaluations the search kept (here an additive matrix: no noise)."""
    from benchmarks import controller_eval as ce
    from benchmarks import controller_report as cr

    monkeypatch.setattr(ce, "RUNS", tmp_path / "controllers")
    monkeypatch.setattr(cr, "REPORT_FILE", tmp_path / "eval.md")
    run = ce.controller_file("2").parent
    run.mkdir(parents=True)
    lines = [{"key": f"base/i{i}", "instance": f"i{i}", "val": 0.5} for i in range(2)]
    rows = []
    for generation in range(2):
        gains = [[0.01 * (c + generation) + 0.02 * i for i in range(2)] for c in range(3)]
        lines += [
            {"key": f"g{generation}/c{c}/i{i}", "instance": f"i{i}", "val": 0.5 + gains[c][i]}
            for c in range(3)
            for i in range(2)
        ]
        means = np.mean(gains, axis=1)
        rows.append(
            {"generation": generation, "mean_gain": means.mean(), "best_gain": means.max(), "sigma": 0.5}
            | {"runs": 2 + 6 * (generation + 1), "run_s": 3600.0, "mean_theta": [0.0] * 8}
        )
    (run / "evaluations.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run / "generations.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    text = "\n".join(cr.search_report("2"))
    # spread: sd of 1, 2, 3 points; no noise, so all of it is true and the candidates differ (p ~ 0)
    # (p: 0, or a rounding error's 1e-31)
    assert re.search(
        r"\| 0 \| \+2.00 \| \+3.00 \| 1.00 \| 0.00 \| 1.00 \| (0|[\d.]+e-\d+) \| 0.500 \| 8 \|", text
    )
    assert re.search(
        r"\| 1 \| \+3.00 \| \+4.00 \| 1.00 \| 0.00 \| 1.00 \| (0|[\d.]+e-\d+) \| 0.500 \| 14 \|", text
    )
    assert (
        "Generations 1-1: candidates' spread 1.00 points, noise in a fitness 0.00, true spread 1.00 (medians); "
        "the candidates differed (p < 0.05) in 1 of 1 generations." in text
    )


def test_optimizer_probe_replays_a_finished_run_to_its_recorded_result(tmp_path, capsys):
    """benchmarks/optimizer_probe.py: a fixed policy's finished run, replayed from its folder's
    config.json with the optimizer's readings, ends on the validation accuracy the run recorded."""
    import torch

    from benchmarks import harness
    from benchmarks import optimizer_probe as probe
    from finetune_gym.agents.config import RunConfig

    config = RunConfig(
        env_id="FineTune-Digits-v0", algo="prodigy", seed=3, episodes=1, epochs_per_episode=3, ema=None
    )
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the probe's default, as the benchmarks' runs
        results = harness.run_or_load(tmp_path / "run", lambda: config)
        probe.main([str(tmp_path / "run")])
    finally:
        torch.set_num_threads(threads)
    readings = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["epoch"] for r in readings] == [0, 1, 2]
    assert readings[-1]["val_accuracy"] == results["final_val_accuracy"]  # the same run, bit for bit
    first, second = readings[0], readings[1]
    assert 0 < first["d"] <= second["d"]  # Prodigy's estimate never decreases
    assert len(first["sqrt_v_median"]) == 5 and all(v > 0 for v in first["sqrt_v_median"])
    assert 0 < first["step_median"] <= first["step_max"] and first["loss_max"] >= first["loss"]
    with pytest.raises(ValueError, match="only a fixed policy's run replays"):
        next(probe.replay(RunConfig(env_id="FineTune-Digits-v0", algo="ppo", episodes=1, ema=None)))


@pytest.mark.slow
def test_controller_overhead_benchmark_times_both_modes_side_by_side(tmp_path):
    from benchmarks import controller_overhead

    controller_overhead.main(["--steps", "1", "--rounds", "2", "--out", str(tmp_path / "o.md")])
    result = json.loads((tmp_path / "o.json").read_text())
    assert len(result["ratios"]) == 2 and all(r > 0 for r in result["ratios"])
    assert result["ms_per_step"]["decision"] < result["ms_per_step"]["controller"]
    assert "Controller / base:" in (tmp_path / "o.md").read_text()
    # The gradient check's own cost: the base against itself with the check passing; the check
    # is back afterwards.
    assert len(result["check_ratios"]) == 2 and result["ms_per_step"][controller_overhead.UNCHECKED] > 0
    assert "The environment's gradient check:" in (tmp_path / "o.md").read_text()
    import torch

    from finetune_gym import training

    with controller_overhead.gradients_unchecked():
        assert training.gradients_finite(None)
    nan = torch.nn.Parameter(torch.ones(2))
    nan.grad = torch.tensor([1.0, float("nan")])
    assert not training.gradients_finite(torch.optim.SGD([nan], lr=0.1))
