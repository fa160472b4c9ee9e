"""A residual learning-rate controller: a handful of numbers, shared by every layer, that modulate
a strong one-run base optimizer per layer instead of replacing it (issue 28).

Why this shape: learned controllers that beat tuned baselines modulate a good base optimizer
(Almeida et al. 2021); the gains in fine-tuning come from how the step is spread across layers
(L-DoG, Auto-RGN, surgical fine-tuning); and a few parameters found by black-box search over ~100
task instances is what worked for step-size control (the DAC re-study of a log-linear policy over
4 features). A policy of 8 weights is also one a person can read.

The rule. For each layer ``l`` at each step, with features ``phi_l`` (:data:`FEATURES`, each
scale-free so that it means the same on any network and dataset)::

    log2(multiplier_l) = theta . phi_l

rounded to a quarter octave within 1/8 .. 8 (:data:`STEPS_PER_OCTAVE`, :data:`OCTAVES`), and 0
(the layer frozen) below 2^-(OCTAVES + 0.5). The multiplier scales the base's own step for that
layer (its share of Prodigy's one step; a per-layer base's own estimate). ``theta = 0`` gives
multiplier 1 everywhere: the base run itself, bit for bit (a test).

Features (``phi_l``): 1; the layer's relative depth ``d`` (0 the stem, 1 the head); the run's
progress ``p``; ``d * p``; whether the layer is the (new, random) head; and the environment's
scale-free extras (:mod:`finetune_gym.layer_signals`): the relative gradient norm ``log10
||g||/||w||`` and the relative drift from the source ``log10 ||w - w0||/||w0||``, each minus its
mean over the layers (so only how a layer differs from the others counts), and the cosine of the
layer's last two gradients. Centred features are clipped to [-3, 3]: a frozen layer's drift
(log10 of 0) would otherwise dominate.

Step-size noise (``jitter``, a log2 standard deviation, 0 by default): each layer's log2 multiplier
gets a fresh ``N(0, jitter^2)`` draw at every step, from a generator seeded by the run's seed (and
checkpointed with it, so a resumed run draws what an unbroken one would). It exists to test one
hypothesis on its own (research log, "PPO at split 1's budget"): that PPO's sampled episodes,
which are Prodigy with exactly this noise (log2 sd 0.37) while its mean weights stay near 0, beat
Prodigy because of the noise, not because of a rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from finetune_gym.observation import extras_layout, extras_size
from finetune_gym.schedules import check_schedule
from finetune_gym.storage import UnreadableFile, atomic_torch_save, load_tensors

from .baselines import Baseline, base_rate

FEATURES = ("bias", "depth", "progress", "depth_x_progress", "head", "grad_ratio", "drift", "grad_cosine")
OBS_EXTRAS = ["progress", "grad_ratio", "drift", "grad_cosine"]
STEPS_PER_OCTAVE = 4
OCTAVES = 3
CENTRED_LIMIT = 3.0
FORMAT = "finetune-gym-controller-1"
# The controller shipped inside the package (``policy="default"``): meta-trained on split 1 of
# instance set v1, GTSRB held out, so that its held-out result (benchmarks/results/controller_eval.md)
# is the evidence for it. None ships until a meta-training has finished and been evaluated.
DEFAULT_POLICY = "default"
SHIPPED_CONTROLLER = (
    Path(__file__).resolve().parent / "pretrained_policies" / "residual_controller_v1_split1.pt"
)


def resolve_controller(policy: str) -> Path:
    """The file ``policy`` names (``"default"``: the shipped controller), with a clear error where
    the default is asked for and this version ships none."""
    if policy != DEFAULT_POLICY:
        return Path(policy).expanduser()
    if not SHIPPED_CONTROLLER.is_file():
        raise ValueError(
            "residual_controller: this version ships no meta-trained controller yet (its meta-training "
            "runs: `python benchmarks/controller.py status`); pass policy=PATH to a controller file "
            "(benchmarks/results/controller/<run>/controller.pt), theta=..., or nothing for the base run"
        )
    return SHIPPED_CONTROLLER


def multiplier_grid() -> np.ndarray:
    """0, then 2^(k / STEPS_PER_OCTAVE) for k in -OCTAVES*STEPS .. OCTAVES*STEPS: exact powers of
    two, so the middle step is exactly 1."""
    k = np.arange(-OCTAVES * STEPS_PER_OCTAVE, OCTAVES * STEPS_PER_OCTAVE + 1, dtype=np.float64)
    return np.concatenate([[0.0], 2.0 ** (k / STEPS_PER_OCTAVE)])


def features(observation: np.ndarray, n_layers: int) -> np.ndarray:
    """``phi`` (n_layers, len(FEATURES)) from a FineTuneEnv observation with :data:`OBS_EXTRAS`."""
    observation = np.asarray(observation, dtype=np.float64)
    features_per_layer, rest = divmod(len(observation) - extras_size(OBS_EXTRAS, n_layers), n_layers)
    if rest or features_per_layer < 1:
        raise ValueError(
            f"observation of length {len(observation)} is not {n_layers} layers' activations and the extras "
            f"{OBS_EXTRAS}: build the environment with the controller's env_overrides()"
        )
    layout = extras_layout(OBS_EXTRAS, n_layers, features_per_layer)
    progress = float(observation[layout["progress"]][0])
    depth = np.arange(n_layers) / max(n_layers - 1, 1)
    head = (np.arange(n_layers) == n_layers - 1).astype(np.float64)

    def centred(values: np.ndarray) -> np.ndarray:
        return np.clip(values - values.mean(), -CENTRED_LIMIT, CENTRED_LIMIT)

    phi = np.stack(
        [
            np.ones(n_layers),
            depth,
            np.full(n_layers, progress),
            depth * progress,
            head,
            centred(observation[layout["grad_ratio"]]),
            centred(observation[layout["drift"]]),
            np.clip(observation[layout["grad_cosine"]], -1.0, 1.0),
        ],
        axis=1,
    )
    return np.nan_to_num(phi)


def action_indices(log2_multipliers: np.ndarray) -> np.ndarray:
    """Indices into :func:`multiplier_grid` for the wanted log2 multipliers (nearest quarter
    octave within the grid; 0, the layer frozen, below half a step under its lowest)."""
    values = np.asarray(log2_multipliers, dtype=np.float64)
    k = np.clip(np.rint(values * STEPS_PER_OCTAVE), -OCTAVES * STEPS_PER_OCTAVE, OCTAVES * STEPS_PER_OCTAVE)
    index = (k + OCTAVES * STEPS_PER_OCTAVE + 1).astype(np.int64)
    index[values < -(OCTAVES + 0.5 / STEPS_PER_OCTAVE)] = 0
    return index


def check_base_schedule(schedule: str) -> str:
    """The base's schedule over the run (:mod:`finetune_gym.schedules`, no warm-up)."""
    check_schedule(schedule, 0.0)
    return schedule


def check_jitter(jitter: float) -> float:
    try:
        value = float(jitter)
    except (TypeError, ValueError):
        value = float("nan")
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(
            f"residual_controller: jitter is a log2 standard deviation >= 0 (0: no noise), got {jitter!r}"
        )
    return value


def check_theta(theta: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(theta, dtype=np.float64)
    if array.shape != (len(FEATURES),) or not np.all(np.isfinite(array)):
        raise ValueError(
            f"residual_controller: theta must be {len(FEATURES)} finite numbers, one per feature {FEATURES}; "
            f"got {list(np.ravel(array))}"
        )
    return array


class ResidualController(Baseline):
    """The controller as an agent (``--algo residual_controller``): ``theta`` given, or read from
    a controller file (``policy=``, written by :func:`save_controller`; ``policy=default``: the one
    shipped in the package); neither: all zeros, the base run. ``jitter`` > 0 adds seeded per-step,
    per-layer noise to the rule's log2 multipliers (module docstring)."""

    name = "residual_controller"
    raw_observations = True  # the rule reads the environment's own extras

    def __init__(
        self,
        seed: int = 0,
        theta: Sequence[float] | None = None,
        policy: str | None = None,
        optimizer: str = "prodigy",
        lr: float | None = None,
        schedule: str | None = None,
        jitter: float = 0.0,
    ) -> None:
        jitter = check_jitter(jitter)
        if policy is not None:
            card = load_controller(resolve_controller(policy))
            # A saved agent records both (the file, and the weights read from it): they must agree.
            if theta is not None and not np.array_equal(check_theta(theta), np.asarray(card["theta"])):
                raise ValueError(f"residual_controller: theta {list(theta)} is not the weights of {policy!r}")
            if schedule is not None and schedule != card["schedule"]:
                raise ValueError(
                    f"residual_controller: {policy!r} was trained over a {card['schedule']!r} schedule of its "
                    f"base, not {schedule!r}: leave schedule out to use its own"
                )
            theta, optimizer, schedule = card["theta"], card["optimizer"], card["schedule"]
        theta = [0.0] * len(FEATURES) if theta is None else check_theta(theta).tolist()
        schedule = check_base_schedule(schedule or "constant")
        super().__init__(
            seed,
            theta=theta,
            policy=policy,
            optimizer=optimizer,
            lr=base_rate(self.name, optimizer, lr),
            schedule=schedule,
            **({"jitter": jitter} if jitter else {}),  # a saved agent without noise reads as before
        )
        self.theta = np.asarray(theta, dtype=np.float64)
        self.jitter = jitter
        self.rng = np.random.default_rng(self.seed)

    def env_overrides(self) -> dict[str, Any]:
        # The base is the optimizer under its schedule (a cosine scales every step, the controller's
        # multipliers included): theta = 0 is that base run, bit for bit.
        return {
            "optimizer": self.params["optimizer"],
            "lr_steps": (self.params["lr"] * multiplier_grid()).tolist(),
            "obs_extras": list(OBS_EXTRAS),
            "schedule": self.params["schedule"],
        }

    def log2_multipliers(self, observation: np.ndarray) -> np.ndarray:
        assert self.n_layers is not None
        rule = features(observation, self.n_layers) @ self.theta
        if not self.jitter:  # no draw at all: theta 0 stays the base run, bit for bit
            return rule
        return rule + self.jitter * self.rng.standard_normal(self.n_layers)

    def get_rng_state(self) -> Any:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: Any) -> None:
        if state is not None:  # a checkpoint from before the noise existed
            self.rng.bit_generator.state = state

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        if self.n_layers is None or self.rates is None:
            raise RuntimeError(f"{self.name}: call bind(n_layers, rates) (make_agent does) before predict")
        if len(self.rates) != len(multiplier_grid()):
            raise ValueError(
                f"{self.name}: the environment's rate grid has {len(self.rates)} steps, not the controller's "
                f"{len(multiplier_grid())}: build it with the controller's env_overrides()"
            )
        rows = np.atleast_2d(np.asarray(observation))
        return np.stack([action_indices(self.log2_multipliers(row)) for row in rows]), state


def save_controller(
    path: str | Path,
    theta: Sequence[float],
    optimizer: str,
    card: dict[str, Any],
    schedule: str = "constant",
) -> None:
    """A controller file: its weights, its base (optimizer and schedule) and its card (how it was
    trained), plain values only, so that it loads with ``weights_only=True`` (a file from anyone
    runs no code)."""
    payload = {
        "format": FORMAT,
        "features": list(FEATURES),
        "theta": [float(v) for v in check_theta(theta)],
        "optimizer": optimizer,
        "schedule": check_base_schedule(schedule),
        "card": card,
    }
    atomic_torch_save(payload, Path(path))


def load_controller(path: str | Path) -> dict[str, Any]:
    """What :func:`save_controller` wrote; a clear error for any other file."""
    try:
        payload = load_tensors(Path(path))
    except UnreadableFile as error:
        raise ValueError(f"residual_controller: policy file {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a residual controller file (format {FORMAT!r})")
    if list(payload.get("features", [])) != list(FEATURES):
        raise ValueError(
            f"{str(path)!r} was trained on the features {payload.get('features')}, this version reads {FEATURES}"
        )
    check_theta(payload["theta"])
    # Files from before the base could have a schedule ran theirs at a constant rate.
    payload["schedule"] = check_base_schedule(payload.get("schedule", "constant"))
    return payload
