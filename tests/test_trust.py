"""Nothing read from a run folder, a saved model or a policy card runs code unless the person at the
command line asked for it (issue 24); every file that cannot be loaded says so in one line.

Each probe names a module that, when imported, creates a marker file: proof that code ran.
"""

from __future__ import annotations

import json
import pickle
import sys
import uuid
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN_ARGS
from test_faults import Payload

import evaluate
import train
from finetune_gym.agents.config import RunConfig
from finetune_gym.agents.outputs import load_final_model
from finetune_gym.agents.pretrained import SHIPPED_POLICY, load_policy, save_policy
from finetune_gym.agents.trust import UntrustedCodeError, check_code, named_code


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """``(import path, marker)``: importing the path's module creates the marker. The module sits in
    a folder on sys.path, like a ``helper.py`` beside a downloaded run."""
    name = f"finetune_probe_{uuid.uuid4().hex[:12]}"
    folder = tmp_path / "code"
    folder.mkdir()
    marker = tmp_path / "executed"
    (folder / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n\n"
        "def build(num_classes=10):\n    raise RuntimeError('the probe builds nothing')\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    return f"{name}:build", marker


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def unfinished_run(tmp_path: Path, model: str) -> Path:
    """A run folder as --resume finds it (config.json and a checkpoint), naming ``model``."""
    run_dir = tmp_path / "downloaded"
    run_dir.mkdir()
    config = RunConfig(algo="uniform", env_kwargs={"model": model, "weights": None}).to_json()
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "checkpoint.pt").write_bytes(b"")
    return run_dir


def test_named_code_finds_import_paths_at_any_depth():
    settings = {"model": "a.b:c", "tasks": [{"model": "resnet50"}, {"model": "d:e"}], "x": "f:g"}
    assert list(named_code(settings)) == ["a.b:c", "d:e"]  # only models; names are not code
    check_code(settings, "f", trust_code=True)
    check_code(settings, "f", given=["a.b:c", "d:e"])
    with pytest.raises(
        UntrustedCodeError, match=r"f names code to import and run, model='d:e'.*--trust-code"
    ):
        check_code(settings, "f", given=["a.b:c"])


def test_resume_refuses_code_named_in_config_json(tmp_path, capsys, probe):
    path, marker = probe
    run_dir = unfinished_run(tmp_path, path)
    assert train.main(["--run-dir", str(run_dir), "--resume", "--no-progress"]) == 2
    err = one_line(capsys.readouterr().err)
    assert path in err and "--trust-code" in err and "config.json" in err
    assert not marker.exists(), "--resume imported the model config.json names"
    # Asked for, by the flag or by naming the same model on the command line: imported.
    for extra in (["--trust-code"], ["--env-kwargs", f"model={path}"]):
        marker.unlink(missing_ok=True)
        sys.modules.pop(path.partition(":")[0], None)  # imported again, not from the cache
        assert train.main(["--run-dir", str(run_dir), "--resume", "--no-progress", *extra]) == 2
        assert marker.exists()


def test_evaluate_refuses_code_named_in_final_model(tmp_path, capsys, probe):
    path, marker = probe
    run_dir = tmp_path / "downloaded"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({"final_test_accuracy": 0.5}))
    settings = {"model": path, "weights": None, "dataset": "digits", "data_root": None, "image_size": 8}
    torch.save({"state_dict": {}, "env_kwargs": settings}, run_dir / "final_model.pt")
    assert evaluate.main([str(run_dir)]) == 1
    row = [line for line in capsys.readouterr().out.splitlines() if "ERROR" in line]
    assert len(row) == 1 and path in row[0] and "--trust-code" in row[0]
    assert not marker.exists(), "evaluate.py imported the model final_model.pt names"
    with pytest.raises(UntrustedCodeError):  # the Python API refuses as well, unless asked
        load_final_model(run_dir / "final_model.pt")
    assert not marker.exists()
    assert evaluate.main([str(run_dir), "--trust-code"]) == 1  # the probe builds nothing
    assert marker.exists()


def test_replaying_an_agent_refuses_code_named_in_its_run(tmp_path, capsys, probe):
    path, marker = probe
    run_dir = unfinished_run(tmp_path, path)
    (run_dir / "agent").mkdir()
    (run_dir / "agent" / "agent.json").write_text(json.dumps({"agent": "uniform", "seed": 0, "params": {}}))
    replay = ["--agent", str(run_dir / "agent"), "--run-dir", str(tmp_path / "replay"), "--no-progress"]
    assert evaluate.main(replay) == 2
    err = one_line(capsys.readouterr().err)
    assert path in err and "--trust-code" in err
    assert not marker.exists(), "evaluate.py --agent imported the model config.json names"
    assert evaluate.main([*replay, "--env-kwargs", f"model={path}"]) == 2  # named here: imported
    assert marker.exists()


def test_a_policy_card_cannot_name_the_model(tmp_path, capsys, probe):
    """A card sets what the policy's actions and observations mean, never the source network."""
    path, marker = probe
    policy, card = load_policy(SHIPPED_POLICY)
    card["env_kwargs"] = {**card["env_kwargs"], "model": path, "weights": None, "device": "cuda:7"}
    crafted = save_policy(policy, card, tmp_path / "crafted.pt")
    run_dir = tmp_path / "run"
    args = ["--run-dir", str(run_dir), *TINY_TRAIN_ARGS, "--algo", "rl_tune_pretrained"]
    assert train.main([*args, "--agent-kwargs", f"policy={crafted}"]) == 0
    assert not marker.exists(), "a policy card's model was imported"
    used = json.loads((run_dir / "results.json").read_text())["env_config"]
    assert used["model"] == "digits_resnet8" and used["device"] == "cpu"  # the run's own
    assert used["lr_scale"] == card["env_kwargs"]["lr_scale"] == "relative"  # the card's meaning


# -------------------------------------------------------------- files that do not load: one line


def pickled_files(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (file, marker): torch.save of an object, and a raw pickle (not torch's format)."""
    files = {}
    for name, save in (
        ("torch_pickle", lambda obj, f: torch.save(obj, f)),
        ("raw_pickle", lambda obj, f: f.write_bytes(pickle.dumps(obj))),
    ):
        marker = tmp_path / f"executed_{name}"
        path = tmp_path / f"{name}.pt"
        save({"state_dict": {}, "env_kwargs": {}, "x": Payload(marker)}, path)
        files[name] = (path, marker)
    return files


@pytest.mark.parametrize("kind", ["torch_pickle", "raw_pickle"])
def test_pickled_files_are_refused_in_one_line_everywhere(tmp_path, capsys, kind):
    path, marker = pickled_files(tmp_path)[kind]
    # evaluate.py on a final_model.pt: an ERROR row, exit 1
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({"final_test_accuracy": 0.5}))
    (run_dir / "final_model.pt").write_bytes(path.read_bytes())
    assert evaluate.main([str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "| ERROR: ValueError: final model" in out and "Traceback" not in out
    # train.py: a checkpoint on --resume, a weights file, a policy file: one line, exit 2
    (run_dir / "config.json").write_text(json.dumps(RunConfig(algo="uniform").to_json()))
    (run_dir / "checkpoint.pt").write_bytes(path.read_bytes())
    (run_dir / "results.json").unlink()
    cases = [
        ["--run-dir", str(run_dir), "--resume"],
        ["--run-dir", str(tmp_path / "w"), *TINY_TRAIN_ARGS, f"weights={path}"],
        ["--run-dir", str(tmp_path / "p"), *TINY_TRAIN_ARGS, "--algo", "rl_tune_pretrained"]
        + ["--agent-kwargs", f"policy={path}"],
    ]
    for args in cases:
        assert train.main(args) == 2
        err = one_line(capsys.readouterr().err)
        assert str(path.name) in err or "checkpoint.pt" in err
        assert "weights_only=False" not in err and "Please file an issue" not in err
        if kind == "torch_pickle":
            assert "pickled Python object" in err
    assert not marker.exists(), "a pickled file ran code"
