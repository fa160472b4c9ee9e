"""Non-learning agents with the Stable-Baselines3 ``predict`` interface.

They let every script treat fine-tuning baselines and RL agents alike. Exact
learning rates (3e-4 is not on the paper's 20-step grid) come from
:meth:`Baseline.env_overrides`, which gives the environment an explicit list of
rate steps (``lr_steps``) before it is built; the baseline then picks indices in it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from finetune_gym import presets

# Enough steps for any layer count: the decay grid has one rate per possible depth.
MAX_LAYERS = 256


class Baseline:
    """A fixed policy over per-layer learning rates."""

    name = "baseline"
    # Whether predict() reads the environment's own observation: the run loop then hands it the
    # raw one, not VecNormalize's running standardisation (which would change a rule's meaning).
    raw_observations = False

    def __init__(self, seed: int = 0, **params: Any) -> None:
        self.seed = int(seed)
        self.params = params
        self.n_layers: int | None = None
        self.rates: np.ndarray | None = None
        self.layer_names: list[str] | None = None

    def env_overrides(self) -> dict[str, Any]:
        """Environment arguments this baseline needs (applied before the environment is built)."""
        return {}

    def bind(self, n_layers: int, rates: np.ndarray, layer_names: Sequence[str] | None = None) -> Baseline:
        """Attach to an environment: its layer count, its learning-rate steps and (for baselines
        that address layers by name) its layer names."""
        self.n_layers, self.rates = int(n_layers), np.asarray(rates)
        self.layer_names = None if layer_names is None else list(layer_names)
        return self

    def action(self) -> np.ndarray:
        raise NotImplementedError

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        """Same signature as SB3's: a batch of actions (one row per environment) and ``state``."""
        if self.n_layers is None:
            raise RuntimeError(f"{self.name}: call bind(n_layers, rates) (make_agent does) before predict")
        n_envs = np.asarray(observation).shape[0] if np.ndim(observation) > 1 else 1
        return np.stack([self.action() for _ in range(n_envs)]), state

    def _index(self, lr: float) -> int:
        assert self.rates is not None
        index = int(np.argmin(np.abs(self.rates - lr)))
        if not np.isclose(self.rates[index], lr, rtol=1e-9, atol=0.0):
            raise ValueError(
                f"{self.name}: rate {lr} is not a step of this environment's grid {self.rates.tolist()}"
            )
        return index

    # -- persistence -------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        Path(path).write_text(
            json.dumps({"agent": self.name, "seed": self.seed, "params": self.params}, indent=2)
        )

    def get_rng_state(self) -> Any:
        return None

    def set_rng_state(self, state: Any) -> None:
        pass


class Uniform(Baseline):
    """Plain fine-tuning: every layer at ``lr`` (or at step ``index`` of the environment's grid)."""

    name = "uniform"

    def __init__(self, seed: int = 0, lr: float | None = 1e-3, index: int | None = None) -> None:
        if index is None and (lr is None or lr < 0):
            raise ValueError("uniform needs a learning rate lr >= 0 or an action index")
        super().__init__(seed, lr=lr, index=index)

    def env_overrides(self) -> dict[str, Any]:
        return {} if self.params.get("index") is not None else presets.uniform(self.params["lr"])

    def action(self) -> np.ndarray:
        index = self.params.get("index")
        if index is None:
            index = self._index(self.params["lr"])
        assert self.rates is not None and self.n_layers is not None
        if not 0 <= index < len(self.rates):
            raise ValueError(f"uniform: index {index} outside the grid of {len(self.rates)} steps")
        return np.full(self.n_layers, index, dtype=np.int64)


class Cosine(Uniform):
    """One rate for every layer, decayed to 0 over the episode by a cosine (after ``warmup``, a
    fraction of the episode with linear warm-up): the tuned schedule practitioners use. Run as one
    episode it spans the whole run; under the EMA scheme it restarts each episode."""

    name = "cosine"

    def __init__(self, seed: int = 0, lr: float = 1e-3, warmup: float = 0.0) -> None:
        if lr is None or lr <= 0:
            raise ValueError("cosine needs a peak learning rate lr > 0")
        Baseline.__init__(self, seed, lr=lr, warmup=warmup)

    def env_overrides(self) -> dict[str, Any]:
        return presets.cosine(self.params["lr"], self.params["warmup"])


class PublishedOptimizer(Uniform):
    """An optimizer that avoids a learning-rate search, run as its authors ship it: one rate for
    every layer, its published default unless ``lr`` is given, no schedule."""

    optimizer = ""

    def __init__(self, seed: int = 0, lr: float | None = None) -> None:
        from finetune_gym.optimizers import DEFAULT_LR

        lr = DEFAULT_LR[self.optimizer] if lr is None else lr
        if lr <= 0:
            raise ValueError(f"{self.name} needs a rate (multiplier) lr > 0")
        Baseline.__init__(self, seed, lr=lr)

    def env_overrides(self) -> dict[str, Any]:
        return presets.published(self.optimizer, self.params["lr"])


class ScheduleFreeAdamW(PublishedOptimizer):
    """Schedule-Free AdamW (Defazio et al. 2024) at its default rate 0.0025; evaluated at its
    averaged weights with BatchNorm statistics recomputed there."""

    name = optimizer = "schedulefree_adamw"


class Prodigy(PublishedOptimizer):
    """Prodigy (Mishchenko & Defazio 2023), which estimates its own rate; multiplier 1.0."""

    name = optimizer = "prodigy"


class ProdigyLayerwise(PublishedOptimizer):
    """Prodigy with its own estimate per layer (one instance per layer; issue 25), multiplier 1.0."""

    name = optimizer = "prodigy_layerwise"


class LDoG(PublishedOptimizer):
    """L-DoG (Ivgi et al. 2023): distance over gradients per tensor, multiplier 1.0, evaluated at
    its polynomial-decay average as its authors advise."""

    name = optimizer = "ldog"


class Mechanic(PublishedOptimizer):
    """Mechanic (Cutkosky, Defazio & Mehta 2023) tuning the scale of AdamW's updates, at its
    authors' settings; multiplier 1.0."""

    name = "mechanic"
    optimizer = "mechanic_adamw"


class LayerwiseDecay(Baseline):
    """Discriminative rates: the head at ``base_lr``, layer ``i`` at ``base_lr * decay**(L-1-i)``."""

    name = "layerwise_decay"

    def __init__(self, seed: int = 0, base_lr: float = 1e-3, decay: float = 0.8) -> None:
        if base_lr <= 0 or not (0 < decay < 1):
            raise ValueError("layerwise_decay needs base_lr > 0 and 0 < decay < 1")
        super().__init__(seed, base_lr=base_lr, decay=decay)

    def _grid(self) -> list[float]:
        p = self.params
        return [0.0] + [p["base_lr"] * p["decay"] ** k for k in reversed(range(MAX_LAYERS))]

    def env_overrides(self) -> dict[str, Any]:
        return {"lr_steps": self._grid()}

    def action(self) -> np.ndarray:
        assert self.n_layers is not None
        p = self.params
        return np.array(
            [self._index(p["base_lr"] * p["decay"] ** (self.n_layers - 1 - i)) for i in range(self.n_layers)],
            dtype=np.int64,
        )


class LinearProbe(Baseline):
    """Only the head (the last layer) learns, at ``lr``; every other layer is frozen."""

    name = "linear_probe"

    def __init__(self, seed: int = 0, lr: float = 1e-3) -> None:
        if lr <= 0:
            raise ValueError("linear_probe needs lr > 0")
        super().__init__(seed, lr=lr)

    def env_overrides(self) -> dict[str, Any]:
        return presets.uniform(self.params["lr"])

    def action(self) -> np.ndarray:
        assert self.n_layers is not None
        action = np.zeros(self.n_layers, dtype=np.int64)
        action[-1] = self._index(self.params["lr"])
        return action


def base_rate(agent: str, optimizer: str, lr: float | None) -> float:
    """The rate a multiplier of 1 gives on ``optimizer``: ``lr``, or its published default."""
    from finetune_gym.optimizers import check_optimizer

    check_optimizer(optimizer)
    if lr is None:
        try:
            lr = presets.published_rate(optimizer)
        except ValueError as error:
            raise ValueError(f"{agent}: {error}") from error
    if not lr > 0:
        raise ValueError(f"{agent} needs a base rate lr > 0, got {lr}")
    return float(lr)


def stage_of(layer: str) -> str:
    """A layer's stage: its name before the first dot (``layer2.1`` -> ``layer2``; ``stem``, ``head``)."""
    return layer.split(".", 1)[0]


class StageProfile(Baseline):
    """A fixed per-stage profile on top of a base optimizer: every layer at the base's rate ``lr``
    (its published default unless given) times its stage's multiplier (0 freezes), the whole run
    under ``schedule`` (constant, cosine or warmdown). ``multipliers`` maps a stage (``stem``,
    ``layer1``, ..., ``head``: a layer's name before the first dot) or a whole layer name to its
    multiplier; layers not named keep 1, so ``{}`` is the base run itself. The headroom study
    (benchmarks/headroom.py) searches these profiles; on a per-layer base (``prodigy_layerwise``,
    ``ldog``) a multiplier scales the layer's own estimated step, on ``prodigy`` its share of the
    one global step."""

    name = "stage_profile"

    def __init__(
        self,
        seed: int = 0,
        optimizer: str = "prodigy",
        lr: float | None = None,
        multipliers: Mapping[str, float] | None = None,
        schedule: str = "constant",
    ) -> None:
        from finetune_gym.schedules import check_schedule

        check_schedule(schedule, 0.0)
        lr = base_rate(self.name, optimizer, lr)
        multipliers = dict(multipliers or {})
        bad = {k: v for k, v in multipliers.items() if not isinstance(v, (int, float)) or not v >= 0}
        if bad:
            raise ValueError(f"stage_profile needs multipliers >= 0 (0 freezes); got {bad}")
        super().__init__(seed, optimizer=optimizer, lr=lr, multipliers=multipliers, schedule=schedule)

    def _steps(self) -> list[float]:
        lr, multipliers = self.params["lr"], self.params["multipliers"]
        return sorted({0.0, lr, *(lr * float(m) for m in multipliers.values())})

    def env_overrides(self) -> dict[str, Any]:
        return {
            "optimizer": self.params["optimizer"],
            "lr_steps": self._steps(),
            "schedule": self.params["schedule"],
        }

    def bind(
        self, n_layers: int, rates: np.ndarray, layer_names: Sequence[str] | None = None
    ) -> StageProfile:
        if layer_names is None:
            raise ValueError("stage_profile addresses layers by name: this environment has no layer_names")
        names = list(layer_names)
        known = set(names) | {stage_of(name) for name in names}
        unknown = sorted(set(self.params["multipliers"]) - known)
        if unknown:
            stages = list(dict.fromkeys(stage_of(name) for name in names))
            raise ValueError(
                f"stage_profile: no layer or stage named {unknown} in this network; its stages are "
                f"{stages} (layers {names})"
            )
        super().bind(n_layers, rates, names)
        return self

    def layer_multipliers(self) -> list[float]:
        """Each layer's multiplier of the base (a layer's own entry wins over its stage's)."""
        assert self.layer_names is not None
        multipliers = self.params["multipliers"]
        return [float(multipliers.get(n, multipliers.get(stage_of(n), 1.0))) for n in self.layer_names]

    def action(self) -> np.ndarray:
        lr = self.params["lr"]
        return np.array([self._index(lr * m) for m in self.layer_multipliers()], dtype=np.int64)


class Surgical(Baseline):
    """Surgical fine-tuning (Lee et al. 2023): one block of the network trains, with the head
    (here a new, random one, which must), every other layer frozen; on a base optimizer at its
    published rate (``prodigy`` by default). ``block`` is a stage (``stem``, ``layer1``, ...):
    which one depends on the kind of shift, so the method is a choice on validation over the
    blocks, a multi-run method."""

    name = "surgical"

    def __init__(
        self, seed: int = 0, block: str | None = None, optimizer: str = "prodigy", lr: float | None = None
    ) -> None:
        if not block:
            raise ValueError("surgical needs the block to fine-tune: block=<stage>, e.g. block='layer1'")
        super().__init__(seed, block=block, optimizer=optimizer, lr=base_rate(self.name, optimizer, lr))

    def env_overrides(self) -> dict[str, Any]:
        return presets.published(self.params["optimizer"], self.params["lr"])

    def bind(self, n_layers: int, rates: np.ndarray, layer_names: Sequence[str] | None = None) -> Surgical:
        if layer_names is None:
            raise ValueError("surgical addresses layers by name: this environment has no layer_names")
        stages = list(dict.fromkeys(stage_of(name) for name in layer_names))
        if self.params["block"] not in stages[:-1]:
            raise ValueError(
                f"surgical: no block {self.params['block']!r} before the head; the blocks are {stages[:-1]}"
            )
        super().bind(n_layers, rates, layer_names)
        return self

    def action(self) -> np.ndarray:
        assert self.layer_names is not None
        on = self._index(self.params["lr"])
        last = len(self.layer_names) - 1
        return np.array(
            [
                on if stage_of(n) == self.params["block"] or i == last else 0
                for i, n in enumerate(self.layer_names)
            ],
            dtype=np.int64,
        )


class AutoRGN(Baseline):
    """Auto-RGN (Lee et al. 2023): each layer's rate is the base's rate times its relative
    gradient norm ``||g|| / ||w||`` over the largest one in the network, so the layer whose
    gradient is largest against its weights gets the base's full rate and the others a share.

    It reads the ``grad_ratio`` observation extra (it sets ``obs_extras=["grad_ratio"]``): the
    ratio of the gradient the last update applied, one step behind the paper's (which uses the
    gradient about to be applied; here the agent acts before that update). Per layer, not per
    tensor: the environment's unit of rate. Multipliers are rounded (in log) to a grid of 2^(-k/4)
    down to 1/256, and 0 below it. On ``prodigy`` the largest multiplier is 1, so Prodigy's one
    estimate is formed at its published rate."""

    name = "auto_rgn"
    raw_observations = True
    GRID = 2.0 ** (-np.arange(33) / 4.0)  # 1 ... 1/256, descending

    def __init__(self, seed: int = 0, optimizer: str = "prodigy", lr: float | None = None) -> None:
        super().__init__(seed, optimizer=optimizer, lr=base_rate(self.name, optimizer, lr))

    def env_overrides(self) -> dict[str, Any]:
        steps = sorted({0.0, *(self.params["lr"] * m for m in self.GRID)})
        return {"optimizer": self.params["optimizer"], "lr_steps": steps, "obs_extras": ["grad_ratio"]}

    def multipliers(self, log_ratios: np.ndarray) -> np.ndarray:
        """The rule on the ``grad_ratio`` extra (log10 of each layer's ratio)."""
        return 10.0 ** (np.asarray(log_ratios, dtype=np.float64) - np.max(log_ratios))

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        if self.n_layers is None or self.rates is None:
            raise RuntimeError("auto_rgn: call bind(n_layers, rates) (make_agent does) before predict")
        rows = np.atleast_2d(np.asarray(observation))
        actions = []
        for row in rows:
            wanted = self.params["lr"] * self.multipliers(row[-self.n_layers :])
            # The nearest step in log (0 where the share is below the grid's last step).
            logs = np.log(np.maximum(self.rates[1:], 1e-300))
            index = 1 + np.abs(np.log(np.maximum(wanted, 1e-300))[:, None] - logs[None, :]).argmin(1)
            index[wanted < self.rates[1] / np.sqrt(2.0**0.25)] = 0
            actions.append(index.astype(np.int64))
        return np.stack(actions), state


class RandomRates(Baseline):
    """Uniformly random steps per layer: the control an RL agent must beat to have learned anything."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.rng = np.random.default_rng(seed)

    def action(self) -> np.ndarray:
        assert self.rates is not None and self.n_layers is not None
        return self.rng.integers(0, len(self.rates), size=self.n_layers)

    def get_rng_state(self) -> Any:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: Any) -> None:
        self.rng.bit_generator.state = state


BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls
    for cls in (
        Uniform,
        Cosine,
        ScheduleFreeAdamW,
        Prodigy,
        ProdigyLayerwise,
        LDoG,
        Mechanic,
        LayerwiseDecay,
        LinearProbe,
        StageProfile,
        Surgical,
        AutoRGN,
        RandomRates,
    )
}


def load_baseline(path: str | Path) -> Baseline:
    data = json.loads(Path(path).read_text())
    return BASELINES[data["agent"]](seed=data["seed"], **data["params"])
