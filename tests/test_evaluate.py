"""evaluate.py: recomputation, tables over seeds, agent replay, the W&B sweep files, errors."""

from __future__ import annotations

import errno
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_TRAIN_ARGS, make_image_folder

import evaluate
import train
from finetune_gym.agents import report

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_TRAIN_ARGS


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two methods x two seeds of tiny digits runs."""
    root = tmp_path_factory.mktemp("runs")
    for algo, seed in itertools.product(("rl_tune", "uniform"), (0, 1)):
        assert (
            train.main(
                ["--run-dir", str(root / f"{algo}-s{seed}"), "--algo", algo, "--seed", str(seed), *TINY]
            )
            == 0
        )
    return root


def test_recompute_agrees_and_flags_tampering(runs, tmp_path, capsys):
    assert evaluate.main([str(runs / "rl_tune-s0"), str(runs / "uniform-s1")]) == 0
    out = capsys.readouterr().out
    assert out.count("| ok |") == 2
    tampered = tmp_path / "tampered"
    shutil.copytree(runs / "uniform-s0", tampered)
    results = json.loads((tampered / "results.json").read_text())
    results["final_test_accuracy"] += 0.01
    (tampered / "results.json").write_text(json.dumps(results))
    assert evaluate.main([str(tampered)]) == 1
    assert "DISAGREES" in capsys.readouterr().out


def test_table_over_seeds(runs, tmp_path, capsys):
    out = tmp_path / "table.md"
    assert evaluate.main(["--table", str(out), str(runs)]) == 0
    text = out.read_text()
    assert "| rl_tune |" in text and "| uniform |" in text and "(2)" in text and "±" in text
    rows = report.load_rows(report.find_runs([runs]))
    tests = [r.test_accuracy for r in rows if r.method == "uniform"]
    mean = sum(tests) / 2
    assert f"{100 * mean:.2f} ±" in text
    assert out.with_suffix(".csv").read_text().startswith("env_id,dataset,model,sampling_rate,method,n,")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_select_by_validation_never_looks_at_test():
    rows = [
        report.Row("E", "d", "m", 0.5, method, seed, test, val, 1.0, 10, "cpu", "")
        for method, test, val in (("a", 0.9, 0.5), ("b", 0.1, 0.6))
        for seed in (0, 1)
    ]
    best = report.select_by_validation(report.aggregate(rows), ["a", "b"], "best")
    assert len(best) == 1 and best[0].note == "= b" and best[0].test_mean == pytest.approx(0.1)


def test_replay_agent_on_the_same_and_on_another_dataset(runs, tmp_path, capsys):
    agent = runs / "rl_tune-s0" / "agent"
    assert evaluate.main(["--agent", str(agent), "--run-dir", str(tmp_path / "same"), "--no-progress"]) == 0
    same = json.loads((tmp_path / "same" / "results.json").read_text())
    assert same["config"]["replay_agent"] == str(agent) and same["config"]["label"] == "replay:rl_tune"
    assert 0 <= same["final_test_accuracy"] <= 1
    # Another task with the same backbone: the source digits 0-4 instead of 5-9.
    assert (
        evaluate.main(
            [
                "--agent",
                str(agent),
                "--run-dir",
                str(tmp_path / "other"),
                "--no-progress",
                "--env-kwargs",
                "dataset_kwargs={'digit_classes': (0, 1, 2, 3, 4)}",
            ]
        )
        == 0
    )
    other = json.loads((tmp_path / "other" / "results.json").read_text())
    assert other["env_config"]["dataset_kwargs"] == {"digit_classes": [0, 1, 2, 3, 4]}
    assert "test accuracy" in capsys.readouterr().out


def test_replay_is_deterministic(runs, tmp_path):
    agent = runs / "rl_tune-s1" / "agent"
    for name in ("a", "b"):
        assert evaluate.main(["--agent", str(agent), "--run-dir", str(tmp_path / name), "--no-progress"]) == 0
    a, b = (torch.load(tmp_path / n / "final_model.pt", weights_only=True)["state_dict"] for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_errors_name_the_problem(runs, tmp_path, capsys):
    assert evaluate.main([str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(runs / "uniform-s0", broken)
    saved = torch.load(broken / "final_model.pt", weights_only=True)
    saved["state_dict"].pop("linear.weight")
    torch.save(saved, broken / "final_model.pt")
    # A broken run is reported in its row and the others are still checked.
    assert evaluate.main([str(broken), str(runs / "uniform-s0")]) == 1
    out = capsys.readouterr().out
    assert "ERROR: ValueError:" in out and "does not match the model" in out
    assert f"| {runs / 'uniform-s0'} |" in out and out.rstrip().endswith("| ok |")
    assert evaluate.main(["--agent", str(tmp_path)]) == 2
    assert "is not the agent/ folder of a run" in capsys.readouterr().err


def test_missing_data_is_reported(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "images", size=32)
    run_dir = tmp_path / "run"
    assert (
        train.main(
            [
                "--run-dir",
                str(run_dir),
                "--dataset",
                "imagefolder",
                "--data-root",
                str(folder),
                "--episodes",
                "1",
                "--epochs-per-episode",
                "1",
                "--algo",
                "uniform",
                "--no-progress",
                "--env-kwargs",
                "model=cifar_resnet20",
                "weights=None",
                "image_size=32",
                "batch_size=8",
            ]
        )
        == 0
    )
    shutil.rmtree(folder)
    assert evaluate.main([str(run_dir)]) == 1
    row = capsys.readouterr().out.split("final test accuracy")[-1]
    assert "ERROR: DatasetNotFoundError" in row and "does not exist" in row


@pytest.mark.parametrize("sweep", ["paper_sweep.yaml", "paper_sweep_uniform.yaml"])
def test_sweep_commands_are_accepted_by_train(sweep, monkeypatch):
    """Every command the W&B grid sweep generates parses and makes a valid run configuration."""
    spec = yaml.safe_load((ROOT / "benchmarks" / sweep).read_text())
    assert spec["program"] == "train.py" and spec["method"] == "grid"
    monkeypatch.setenv("DATA_ROOT", "/data")
    static = [a.replace("${envvar:DATA_ROOT}", "/data") for a in spec["command"] if not a.startswith("${")]
    names = list(spec["parameters"])
    commands = 0
    for values in itertools.product(*(spec["parameters"][n]["values"] for n in names)):
        argv = static + [f"--{n}={v}" for n, v in zip(names, values, strict=True)]
        config = train.config_from_args(train.build_parser().parse_args(argv))
        assert config.env_id == "FineTune-ResNet50-v0" and config.env_kwargs["data_root"] == "/data"
        assert config.epochs_per_episode * config.episodes == 50
        commands += 1
    assert commands == {"paper_sweep.yaml": 6 * 3 * 4 * 3, "paper_sweep_uniform.yaml": 5 * 3 * 4 * 3}[sweep]


def test_table_leaves_out_any_broken_run_and_writes_nothing_on_a_read_only_disk(
    runs, tmp_path, capsys, monkeypatch
):
    """A results.json that is not an object stopped the table with an AttributeError traceback;
    a read-only disk gave a traceback and could leave a half-written set of outputs."""
    broken = tmp_path / "broken"
    shutil.copytree(runs / "uniform-s0", broken)
    (broken / "results.json").write_text("[1, 2]")
    out = tmp_path / "t" / "table.md"
    assert evaluate.main(["--table", str(out), str(runs), str(broken)]) == 1
    assert "left out" in capsys.readouterr().err and "| uniform |" in out.read_text()

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_text", read_only)
    fresh = tmp_path / "ro" / "table.md"
    assert evaluate.main(["--table", str(fresh), str(runs)]) == 2
    err = capsys.readouterr().err
    assert "could not write" in err and "Read-only file system" in err and "Traceback" not in err
    assert list(fresh.parent.iterdir()) == []


def test_recompute_goes_through_many_differently_broken_runs(runs, tmp_path, capsys):
    """Each broken run is one ERROR row and the rest are still checked (it once stopped after 6)."""
    damages = {
        "bare_tensor": lambda d: torch.save(torch.zeros(3), d / "final_model.pt"),
        "garbage_model": lambda d: (d / "final_model.pt").write_bytes(b"garbage"),
        "truncated_model": lambda d: (d / "final_model.pt").write_bytes(
            (d / "final_model.pt").read_bytes()[:100]
        ),
        "no_model": lambda d: (d / "final_model.pt").unlink(),
        "model_is_a_folder": lambda d: ((d / "final_model.pt").unlink(), (d / "final_model.pt").mkdir()),
        "results_a_list": lambda d: (d / "results.json").write_text("[1, 2]"),
        "results_not_json": lambda d: (d / "results.json").write_text("{"),
        "accuracy_text": lambda d: (d / "results.json").write_text(
            json.dumps({"final_test_accuracy": "high"})
        ),
        "model_without_env": lambda d: torch.save({"state_dict": {}}, d / "final_model.pt"),
    }
    folders = []
    for name, damage in damages.items():
        folder = tmp_path / name
        shutil.copytree(runs / "uniform-s0", folder)
        damage(folder)
        folders.append(str(folder))
    assert evaluate.main([*folders, str(runs / "uniform-s1")]) == 1
    out = capsys.readouterr().out
    for name in damages:
        row = next(line for line in out.splitlines() if f"/{name} |" in line)
        assert "ERROR:" in row, row
    assert next(line for line in out.splitlines() if "uniform-s1 |" in line).endswith("| ok |")
