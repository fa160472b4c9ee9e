"""Meta-training the residual controller by black-box search (CMA-ES) over many fine-tuning runs.

Why CMA-ES: the controller has 8 weights (:mod:`.residual_controller`), its fitness is a noisy
average over whole fine-tuning runs, and no gradient of it exists; for a handful of continuous
parameters under noise, CMA-ES (``cma``, Hansen's reference implementation) is the standard
optimizer and needs no surrogate model (SMAC, Optuna's TPE: built for fewer, costlier points with
mixed types). Each generation's candidates are independent runs, so they spread over any
``concurrent.futures`` executor: processes on this machine, or Ray tasks on a cluster (the
benchmarks' harness gives both).

Fitness of a candidate = its paired gain: the mean over a batch of training instances of (its
final validation accuracy - the base optimizer's on the same instance: same subset, split, head
and seed). The base run is the controller with ``theta = 0`` (the base itself, bit for bit), run
once per instance and cached. Every candidate of a generation sees the same batch (common random
numbers), drawn afresh each generation from the training part of the instance set.

Resumable exactly: every evaluation is appended to ``evaluations.jsonl`` as it finishes; on a
restart the search replays its generations (CMA-ES's sampling is seeded, so it asks the same
candidates again; a mismatch stops with an error) and evaluates only what is missing.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune_gym.device import describe_machine
from finetune_gym.instances import Instance, InstanceSet

from .residual_controller import FEATURES, ResidualController, check_base_schedule, save_controller

EVALUATIONS = "evaluations.jsonl"
GENERATIONS = "generations.jsonl"
CONFIG = "meta_config.json"
CONTROLLER = "controller.pt"
VERSIONS = "versions.json"  # the cma and NumPy that drew the search: a replay needs the same

# A meta-training run is judged on its final validation accuracy, never on a step's reward; the
# paper's "batch" reward costs one extra forward per step (about 17% of a ResNet-20 run on CPU) for
# a number nobody reads. "next_batch" reads the forward every step runs anyway; the run is the same
# bit for bit (the extra forward runs in eval mode and changes no state: tests/test_env.py).
UNREWARDED: dict[str, Any] = {"reward": "next_batch"}


@dataclass(frozen=True)
class MetaTrainConfig:
    """A meta-training run: which instances, which base, how large a search."""

    instance_set: str = "v1"
    split: str = "1"
    optimizer: str = "prodigy"
    schedule: str = "constant"  # the base's schedule over the run (cosine: Prodigy as its authors use it)
    generations: int = 20
    batch: int = 4  # training instances per generation
    popsize: int | None = 8  # None: CMA-ES's default (10 for 8 weights)
    sigma0: float = 0.5  # initial step, in log2 of a multiplier per unit of a feature
    seed: int = 0
    data_root: str | None = None

    def __post_init__(self) -> None:
        for name in ("generations", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"meta-training {name} must be a positive integer, got {value!r}")
        if self.popsize is not None and (not isinstance(self.popsize, int) or self.popsize < 2):
            raise ValueError(f"meta-training popsize must be an integer >= 2, got {self.popsize!r}")
        if not self.sigma0 > 0:
            raise ValueError(f"meta-training sigma0 must be > 0, got {self.sigma0!r}")
        check_base_schedule(self.schedule)

    def training_instances(self) -> list[Instance]:
        instances = InstanceSet.load(self.instance_set).split(self.split, "train")
        if len(instances) < self.batch:
            raise ValueError(
                f"a batch of {self.batch} instances needs at least as many training instances; split "
                f"{self.split!r} of {self.instance_set!r} has {len(instances)}"
            )
        return instances


def keep_settings(
    path: Path, settings: dict[str, Any], budget: str, what: str, defaults: dict[str, Any] | None = None
) -> None:
    """Write a training run's ``settings`` to ``path``, refusing (with the settings named) to go on
    in a folder whose saved settings differ in anything but the ``budget`` key: a longer run
    continues the same search, other settings would be another one. A setting the saved file
    lacks (it was written before the setting existed) had its value in ``defaults``."""
    if path.is_file():
        before = {**(defaults or {}), **json.loads(path.read_text())}
        changed = sorted(k for k in settings if k != budget and before.get(k) != settings[k])
        if changed:
            raise ValueError(
                f"{str(path.parent)!r} holds {what} with other settings ({', '.join(changed)}): "
                "continue it with its own, or give another folder"
            )
    path.write_text(json.dumps(settings, indent=2) + "\n")


def run_instance(
    instance: dict[str, Any],
    theta: list[float],
    optimizer: str,
    data_root: str | None,
    schedule: str = "constant",
) -> dict[str, Any]:
    """One fine-tuning run of ``instance`` under the controller ``theta``: its final validation
    accuracy (a job: top-level, plain arguments, so that it travels to a process or a Ray task)."""
    from finetune_gym.env import FineTuneEnv

    started = time.perf_counter()
    controller = ResidualController(theta=theta, optimizer=optimizer, schedule=schedule)
    env = FineTuneEnv(
        **Instance(**instance).env_kwargs(data_root), **controller.env_overrides(), **UNREWARDED
    )
    try:
        controller.bind(env.n_layers, env.lr_map.rates, env.layer_names)
        observation, _ = env.reset(seed=instance["seed"])
        done = False
        while not done:
            action, _ = controller.predict(observation)
            observation, _, terminated, truncated, _ = env.step(action[0])
            done = terminated or truncated
        return {
            "val": env.evaluate("val"),
            "wall_s": time.perf_counter() - started,
            # Results repeat bit for bit only on the same CPU (finetune_gym.device.describe_machine).
            "machine": describe_machine(env.device),
        }
    finally:
        env.close()


def _drawn_with(path: Path) -> dict[str, str]:
    """The versions of the libraries that draw the search's candidates, written at its start and
    read back after (a search folder from before this file existed gets the present ones)."""
    import cma

    if not path.is_file():
        path.write_text(json.dumps({"cma": cma.__version__, "numpy": np.__version__}) + "\n")
    return json.loads(path.read_text())


def _job_key(
    kind: str, instance: Instance, generation: int | None = None, candidate: int | None = None
) -> str:
    return f"base/{instance.id}" if kind == "base" else f"g{generation}/c{candidate}/{instance.id}"


def generation_gains(evaluations: Iterable[Mapping[str, Any]]) -> dict[int, np.ndarray]:
    """Each generation's paired validation gains over the base, read back from
    ``evaluations.jsonl``'s lines: candidates x instances (candidate order, instances by id), the
    matrix whose row means were the fitness. For the search's diagnostics (how much of a fitness is
    the instances' noise); a generation some of whose runs are missing is left out. The lines may
    come in any order: parallel workers append them as their runs finish."""
    lines = {line["key"]: line for line in evaluations}
    base = {key.removeprefix("base/"): line["val"] for key, line in lines.items() if key.startswith("base/")}
    cells: dict[int, dict[int, dict[str, float]]] = {}
    for key, line in lines.items():
        if key.startswith("base/"):
            continue
        generation, candidate, instance = key.split("/", 2)
        row = cells.setdefault(int(generation[1:]), {}).setdefault(int(candidate[1:]), {})
        row[instance] = line["val"] - base[instance]
    out = {}
    for generation, rows in sorted(cells.items()):
        instances = sorted(set().union(*rows.values()))
        if sorted(rows) != list(range(len(rows))) or any(len(r) != len(instances) for r in rows.values()):
            continue
        out[generation] = np.array([[rows[c][i] for i in instances] for c in range(len(rows))])
    return out


class MetaTrainer:
    """CMA-ES over the controller's weights (see the module's docstring); ``run()`` continues from
    whatever ``run_dir`` holds."""

    def __init__(
        self,
        config: MetaTrainConfig,
        run_dir: str | Path,
        executor: futures.Executor,
        log: Callable[[int, dict[str, float]], None] | None = None,
        stop: Callable[[list[dict[str, Any]]], bool] | None = None,
    ) -> None:
        self.config, self.run_dir, self.executor = config, Path(run_dir), executor
        self.log = log or (lambda generation, scalars: None)
        # A stopping rule over the generations' summaries so far (a protocol's "fewer if it has
        # flattened"); deterministic, so a replay stops where the search stopped.
        self.stop = stop or (lambda summaries: False)
        self.instances = config.training_instances()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A run may go on for more generations; anything else changes what it searches.
        keep_settings(
            self.run_dir / CONFIG,
            asdict(config),
            "generations",
            "a meta-training run",
            {"schedule": MetaTrainConfig.schedule},
        )
        self.versions = _drawn_with(self.run_dir / VERSIONS)
        self.evaluations: dict[str, dict[str, Any]] = {}
        path = self.run_dir / EVALUATIONS
        lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except ValueError:
                if number < len(lines):
                    raise ValueError(f"{path}, line {number}, is not JSON: the file is damaged") from None
                # The last line cut short by a kill while it was written: that run is run again.
                path.write_text("".join(f"{kept}\n" for kept in lines[:-1]))
                break
            self.evaluations[record["key"]] = record

    def _strategy(self):
        import cma

        rng = np.random.default_rng(self.config.seed)
        options = {
            "verbose": -9,
            # Its own generator instead of NumPy's global one: the search replays exactly whatever
            # else the process draws.
            "randn": lambda *shape: rng.standard_normal(shape),
        }
        if self.config.popsize is not None:
            options["popsize"] = self.config.popsize
        return cma.CMAEvolutionStrategy(np.zeros(len(FEATURES)), self.config.sigma0, options)

    def batch(self, generation: int) -> list[Instance]:
        """The generation's training instances (the same for each of its candidates)."""
        rng = np.random.default_rng([self.config.seed, generation])
        chosen = rng.choice(len(self.instances), size=self.config.batch, replace=False)
        return [self.instances[int(i)] for i in sorted(chosen)]

    def _evaluate(self, jobs: dict[str, tuple[Instance, list[float]]]) -> None:
        """Run the jobs not yet in the evaluations file, appending each as it finishes."""
        missing = {key: job for key, job in jobs.items() if key not in self.evaluations}
        pending = {
            self.executor.submit(
                run_instance,
                instance.to_json(),
                theta,
                self.config.optimizer,
                self.config.data_root,
                self.config.schedule,
            ): (key, instance, theta)
            for key, (instance, theta) in missing.items()
        }
        with open(self.run_dir / EVALUATIONS, "a") as out:
            for future in futures.as_completed(pending):
                key, instance, theta = pending[future]
                record = {"key": key, "instance": instance.id, "theta": theta, **future.result()}
                out.write(json.dumps(record) + "\n")
                out.flush()
                self.evaluations[key] = record

    def run(self) -> np.ndarray:
        """The search to its last generation, or to the one after which ``stop`` says so; the
        distribution's mean (the controller to deploy, also written to ``controller.pt``)."""
        es = self._strategy()
        summaries, used = [], set()
        for generation in range(self.config.generations):
            candidates = [np.asarray(x, dtype=np.float64) for x in es.ask()]
            batch = self.batch(generation)
            jobs = {_job_key("base", i): (i, [0.0] * len(FEATURES)) for i in batch}
            for k, theta in enumerate(candidates):
                for instance in batch:
                    key = _job_key("candidate", instance, generation, k)
                    done = self.evaluations.get(key)
                    if done is not None and not np.allclose(done["theta"], theta, rtol=0, atol=1e-12):
                        raise RuntimeError(
                            f"replaying generation {generation}: CMA-ES asked another candidate {k} than the "
                            f"one recorded in {EVALUATIONS}. The search was drawn with {self.versions}: install "
                            f"those (pip install {' '.join(f'{k}=={v}' for k, v in self.versions.items())}) "
                            "to continue it, or continue in a new folder"
                        )
                    jobs[key] = (instance, theta.tolist())
            self._evaluate(jobs)
            used |= set(jobs)
            base = {i.id: self.evaluations[_job_key("base", i)]["val"] for i in batch}
            gains = np.array(
                [
                    [
                        self.evaluations[_job_key("candidate", i, generation, k)]["val"] - base[i.id]
                        for i in batch
                    ]
                    for k in range(len(candidates))
                ]
            )
            fitness = gains.mean(axis=1)
            es.tell(candidates, (-fitness).tolist())  # CMA-ES minimises
            summary = {
                "generation": generation,
                "mean_gain": float(fitness.mean()),
                "best_gain": float(fitness.max()),
                "base_val": float(np.mean(list(base.values()))),
                "sigma": float(es.sigma),
                "runs": len(used),  # fine-tuning runs so far (each base run once)
                # One thread each: core-s. fsum because `used` is a set whose order follows the
                # process's string hashing: a plain sum changed the last digit on each resume.
                "run_s": math.fsum(self.evaluations[key]["wall_s"] for key in used),
                "mean_theta": [float(v) for v in es.mean],
                "best_theta": candidates[int(fitness.argmax())].tolist(),
            }
            summaries.append(summary)
            # Rewritten whole after each generation: a replay regenerates the same lines.
            (self.run_dir / GENERATIONS).write_text("".join(json.dumps(s) + "\n" for s in summaries))
            self.log(generation, {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
            if self.stop(summaries):
                break
        mean = np.asarray(es.mean, dtype=np.float64)
        card = {
            "trainer": "cma-es",
            "instance_set": self.config.instance_set,
            "split": self.config.split,
            "generations": len(summaries),  # run; the configuration's may be more (a stopping rule)
            "batch": self.config.batch,
            "popsize": len(candidates),
            "runs": summaries[-1]["runs"],
            "run_hours": summaries[-1]["run_s"] / 3600,  # the runs' wall-clock summed
            "last_mean_gain": summaries[-1]["mean_gain"],
        }
        save_controller(
            self.run_dir / CONTROLLER, mean.tolist(), self.config.optimizer, card, self.config.schedule
        )
        return mean
