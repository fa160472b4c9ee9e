"""Replay a finished run with per-epoch readings of its optimizer: why did it end where it did?

A run folder keeps its configuration (``config.json``), and a fixed policy's run repeats bit for bit
on the same machine and thread count, so the run can be replayed with readings its own records lack:
the training loss per epoch (mean and worst batch), the relative step of the parameters (the largest
per-tensor ``|p_new - p_old| / |p_old|``, median and max over the epoch's steps), Prodigy's step
estimate ``d`` and the median ``sqrt(v)`` of each layer's Adam second moments. It found the collapse
of split 1's GTSRB 30% seed-4 run (benchmarks/README.md, "Controller protocol", Reference).

    python benchmarks/optimizer_probe.py benchmarks/runs/controller_eval/split1/residual_controller/gtsrb/r0.3/s4

Only fixed policies (baselines, a controller) replay: a learning agent's updates are not repeated.
Diagnosis only: it reads no test set, and its output is printed, not stored as a result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def optimizer_readings(optimizer: Any) -> dict[str, Any]:
    """Prodigy's ``d`` (None for optimizers without one) and each group's median ``sqrt(v)``."""
    import torch

    groups = optimizer.param_groups
    sqrt_v = []
    for group in groups:
        moments = [
            optimizer.state[p]["exp_avg_sq"].flatten()
            for p in group["params"]
            if "exp_avg_sq" in optimizer.state.get(p, {})
        ]
        sqrt_v.append(None if not moments else float(torch.cat(moments).sqrt().median()))
    return {"d": groups[0].get("d"), "sqrt_v_median": sqrt_v}


def replay(config: Any) -> Iterator[dict[str, Any]]:
    """The run of ``config`` (a fixed policy's :class:`RunConfig`, one episode), one reading per epoch;
    the last carries the final validation accuracy."""
    from finetune_gym.agents.registry import is_learning, make_agent
    from finetune_gym.agents.run import build_env

    venv, state = build_env(config)
    agent = make_agent(config.algo, venv, seed=config.seed, **config.agent_kwargs)
    if is_learning(agent):
        raise ValueError(f"{config.algo} learns while it acts: only a fixed policy's run replays")
    env = state.recorder.unwrapped
    raw = getattr(agent, "raw_observations", False)  # a rule over the environment's own values
    obs = venv.reset()
    for epoch in range(config.epochs_per_episode):
        losses, steps, done, info = [], [], False, {}
        for _ in range(env.steps_per_epoch):
            before = [p.detach().clone() for p in env.model.parameters()]
            action, _ = agent.predict(venv.get_original_obs() if raw else obs, deterministic=True)
            obs, _, dones, infos = venv.step(action)
            done, info = bool(dones[0]), infos[0]
            losses.append(info["loss"])
            if not done:  # at the episode's end the environment has reset the model
                steps.append(
                    max(
                        float((p.detach() - b).norm() / b.norm().clamp_min(1e-12))
                        for p, b in zip(env.model.parameters(), before, strict=True)
                    )
                )
        reading = {
            "epoch": epoch,
            "loss": statistics.mean(losses),
            "loss_max": max(losses),
            "step_median": statistics.median(steps) if steps else None,
            "step_max": max(steps) if steps else None,
        }
        if not done:
            reading.update(optimizer_readings(env.optimizer))
        else:
            reading["val_accuracy"] = info.get("val_accuracy")
        yield reading
        if done:
            return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="a finished run's folder (its config.json is read)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the benchmarks' runs use 1)")
    args = parser.parse_args(argv)
    import torch

    from finetune_gym.agents.config import RunConfig
    from finetune_gym.agents.rundir import CONFIG

    torch.set_num_threads(args.threads)
    config = RunConfig.from_json(json.loads((args.run_dir / CONFIG).read_text()))
    if config.episodes != 1:
        raise SystemExit(f"{args.run_dir}: {config.episodes} episodes; only a one-episode run replays here")
    for reading in replay(config):
        print(json.dumps(reading), flush=True)


if __name__ == "__main__":
    main()
