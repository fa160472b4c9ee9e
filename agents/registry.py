"""``make_agent(name, env)``: RL agents and baselines behind one name, built for one environment."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from sb3_contrib import TRPO, RecurrentPPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from finetune_gym.storage import UnreadableFile, load_tensors

from .baselines import BASELINES, Baseline
from .hyperparams import HYPERPARAMS
from .layerwise_policy import LayerwisePolicy
from .policies import LinearFeatures, LstmPolicy, MlpPolicy
from .pretrained import PretrainedPolicyAgent
from .residual_controller import ResidualController
from .safe_state import load_normalisation_state, normalisation_state

Agent = BaseAlgorithm | Baseline

LEARNERS: dict[str, type[BaseAlgorithm]] = {"rl_tune": RecurrentPPO, "ppo": PPO, "a2c": A2C, "trpo": TRPO}
ALIASES = {
    "recurrent_ppo": "rl_tune",
    "recurrentppo": "rl_tune",
    "ppo_lstm": "rl_tune",
}  # ppo_lstm: RL Zoo's name
# Agents that act without learning (the baselines, a frozen pretrained policy): built from their
# parameters, saved as agent.json alone.
FIXED: dict[str, type[Baseline]] = {
    **BASELINES,
    "rl_tune_pretrained": PretrainedPolicyAgent,
    "residual_controller": ResidualController,
}
AGENT_NAMES: list[str] = [*LEARNERS, *FIXED]
# SB3's Adam settings for its policies (eps 1e-5) in PyTorch's fused form (fewer, larger kernels
# than a loop of small ops per parameter: cheaper for these small policies, on the CPU too).
# SB3 drops its eps default once any optimizer_kwargs are given.
FUSED_ADAM = {"eps": 1e-5, "fused": True}
# Algorithms of SB3 / sb3-contrib that cannot act in MultiDiscrete spaces, and what they need.
UNSUPPORTED = {
    "dqn": "DQN needs a Discrete action space",
    "qrdqn": "QR-DQN needs a Discrete action space",
    "sac": "SAC needs a continuous (Box) action space",
    "td3": "TD3 needs a continuous (Box) action space",
    "ddpg": "DDPG needs a continuous (Box) action space",
    "tqc": "TQC needs a continuous (Box) action space",
    "crossq": "CrossQ needs a continuous (Box) action space",
    "ars": "ARS supports Box and Discrete action spaces only",
    "her": "HER is a replay buffer for goal-conditioned off-policy agents, not an algorithm",
}


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (aliases resolved); a clear error for anything else."""
    key = name.lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in LEARNERS or key in FIXED:
        return key
    supported = ", ".join(AGENT_NAMES)
    if key in UNSUPPORTED:
        raise ValueError(
            f"algorithm {name!r} cannot be used: {UNSUPPORTED[key]}, but these environments choose one "
            f"learning-rate step per layer (MultiDiscrete). Agents that can: {supported}"
        )
    raise ValueError(f"unknown agent {name!r}: choose one of {supported}")


def is_learning(agent: Agent) -> bool:
    return isinstance(agent, BaseAlgorithm)


def baseline_env_overrides(name: str, **overrides: Any) -> dict[str, Any]:
    """Environment arguments the agent needs before the environment is built (exact rate grids)."""
    name = canonical_name(name)
    if name in FIXED:
        check_hyperparameters(name, overrides)
        return _baseline(name, 0, overrides).env_overrides()
    return {}


def check_hyperparameters(name: str, overrides: dict[str, Any]) -> None:
    """A number where agents/hyperparams.py has a number (``clip_range=(0.1`` arrives as a string)."""
    for key, value in overrides.items():
        default = HYPERPARAMS[name].get(key)
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        unset = value is None and name in FIXED  # a baseline's alternative (uniform: lr=None, index=3)
        if (
            numeric
            and not unset
            and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value))
        ):
            raise ValueError(
                f"agent {name!r}: {key} must be a finite number (default {default}), got {value!r}; "
                f"write it as {key}=<number> in --agent-kwargs"
            )


def _baseline(name: str, seed: int, overrides: dict[str, Any]) -> Baseline:
    try:
        return FIXED[name](seed=seed, **{**HYPERPARAMS[name], **overrides})
    except TypeError as error:
        raise ValueError(f"agent {name!r} does not take {sorted(overrides)}: {error}") from error


def _bind(baseline: Baseline, venv: VecEnv) -> Baseline:
    """Attach a baseline to the environment's layer count, learning-rate grid and layer names."""
    return baseline.bind(
        venv.get_attr("n_layers")[0], venv.get_attr("lr_map")[0].rates, venv.get_attr("layer_names")[0]
    )


def _as_vec_env(env: gym.Env | VecEnv) -> VecEnv:
    return env if isinstance(env, VecEnv) else DummyVecEnv([lambda: env])


def make_agent(
    name: str, env: gym.Env | VecEnv, *, seed: int = 0, verbose: int = 0, **overrides: Any
) -> Agent:
    """Build agent ``name`` for ``env`` with the hyperparameters of :mod:`finetune_gym.agents.hyperparams`.

    Learning agents update once per epoch (``n_steps`` = the environment's steps
    per epoch) and run on the CPU (their networks are tiny; the GPU is the
    fine-tuned model's).
    """
    name = canonical_name(name)
    check_hyperparameters(name, overrides)
    venv = _as_vec_env(env)
    if name in FIXED:
        fixed = _bind(_baseline(name, seed, overrides), venv)
        if isinstance(fixed, PretrainedPolicyAgent) and fixed.params["learn"]:
            return _pretrained_learner(fixed, venv, seed, verbose, overrides)
        return fixed

    params = {**HYPERPARAMS[name], **overrides}
    n_steps = int(params.pop("n_steps", venv.get_attr("steps_per_epoch")[0]))
    if n_steps < 2:
        raise ValueError(
            f"agent {name!r} learns from each epoch's steps, but an epoch here is {n_steps} step: its update "
            "would divide by zero (advantage normalisation over one sample). Use a smaller batch_size or a "
            "larger sampling_rate so that an epoch has at least 2 batches (or set n_steps=...)"
        )
    kwargs: dict[str, Any] = {
        "n_steps": n_steps,
        "seed": seed,
        "verbose": verbose,
        "device": params.pop("device", "cpu"),
    }
    if name == "rl_tune":
        policy: type | str = LstmPolicy
        kwargs["batch_size"] = params.pop("batch_size", n_steps)
        kwargs["policy_kwargs"] = {
            "features_extractor_class": LinearFeatures,
            "features_extractor_kwargs": {"features_dim": params.pop("features_dim")},
            "lstm_hidden_size": params.pop("lstm_hidden_size"),
            "n_lstm_layers": 1,
            "shared_lstm": False,
            "enable_critic_lstm": False,  # the paper's critic is an MLP
            "net_arch": {"pi": [], "vf": list(params.pop("critic_net_arch"))},
            "optimizer_kwargs": dict(FUSED_ADAM),
        }
    else:
        # TRPO keeps SB3's distribution: its KL divergence iterates over per-layer distributions.
        policy = "MlpPolicy" if name == "trpo" else MlpPolicy
        kwargs["policy_kwargs"] = {"net_arch": list(params.pop("net_arch"))}
        if name == "ppo":  # A2C keeps its RMSprop; TRPO's Adam fits only the value function
            kwargs["policy_kwargs"]["optimizer_kwargs"] = dict(FUSED_ADAM)
        if name in ("ppo", "trpo"):
            kwargs["batch_size"] = params.pop("batch_size", n_steps)
    try:
        agent = LEARNERS[name](policy, venv, **kwargs, **params)
    except TypeError as error:
        raise ValueError(f"agent {name!r} got an argument it does not take: {error}") from error
    # What rebuilds it (save_agent): the overrides of agents/hyperparams.py and the rollout length.
    agent.finetune_gym_spec = {"overrides": dict(overrides), "n_steps": n_steps}
    return agent


def _pretrained_learner(
    fixed: PretrainedPolicyAgent, venv: VecEnv, seed: int, verbose: int, overrides: dict[str, Any]
) -> PPO:
    """PPO over the pretrained policy's weights, learning online once per epoch."""
    params = {k: v for k, v in fixed.params.items() if k not in ("policy", "learn")}
    n_steps = int(params.pop("n_steps", venv.get_attr("steps_per_epoch")[0]))
    try:
        agent = PPO(
            LayerwisePolicy,
            venv,
            n_steps=n_steps,
            batch_size=n_steps,
            policy_kwargs={"hidden": int(fixed.card["hidden"])},
            seed=seed,
            verbose=verbose,
            device="cpu",
            **params,
        )
    except TypeError as error:
        raise ValueError(f"agent 'rl_tune_pretrained' got an argument it does not take: {error}") from error
    agent.policy.load_state_dict(fixed.policy.state_dict())
    agent.finetune_gym_spec = {"overrides": dict(overrides), "n_steps": n_steps}
    return agent


def layer_tokens(name: str, **overrides: Any) -> int | None:
    """``max_layers`` of the :class:`~finetune_gym.layerwise.LayerwiseView` the agent reads, or None
    for agents that read the environment's own observation."""
    if canonical_name(name) != "rl_tune_pretrained":
        return None
    return _baseline("rl_tune_pretrained", 0, overrides).max_layers


AGENT_FILE = "agent.json"
POLICY_FILE = "policy.pt"  # the policy's state dict: loads with weights_only=True
NORMALISATION_FILE = "vecnormalize.pt"  # VecNormalize's statistics: loads with weights_only=True
SB3_FILE = "model.zip"  # SB3's own format, for SB3 tools; never read here (it unpickles objects)


def save_agent(agent: Agent, directory: str | Path, name: str) -> None:
    """Everything needed to run the agent later, in files that cannot run code when loaded:
    ``agent.json`` (what to build), the policy's weights, the normalisation statistics; and
    SB3's ``model.zip`` for SB3's own tools."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(agent, Baseline):
        agent.save(directory / AGENT_FILE)
        return
    spec = getattr(agent, "finetune_gym_spec", None) or {"overrides": {}, "n_steps": agent.n_steps}
    torch.save(agent.policy.state_dict(), directory / POLICY_FILE)
    vec_normalize = agent.get_vec_normalize_env()
    normalised = vec_normalize is not None and vec_normalize.norm_obs  # tokens (LayerwiseView) are not
    if normalised:
        torch.save(normalisation_state(vec_normalize), directory / NORMALISATION_FILE)
    agent.save(directory / SB3_FILE)
    (directory / AGENT_FILE).write_text(
        json.dumps(
            {"agent": name, "algorithm": type(agent).__name__, **spec, "normalised": normalised}, indent=2
        )
    )


def load_agent(directory: str | Path, env: gym.Env | VecEnv) -> tuple[Agent, VecEnv]:
    """Load what :func:`save_agent` wrote, for ``env`` (not yet normalised); no file is unpickled.

    Returns the agent and the environment to run it in: for an RL agent, ``env``
    wrapped in its saved ``VecNormalize`` statistics, frozen (``training=False``).
    """
    directory = Path(directory)
    meta_file = directory / AGENT_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(f"{str(directory)!r} holds no saved agent ({AGENT_FILE} is missing)")
    try:
        meta = json.loads(meta_file.read_text())
        name = canonical_name(meta["agent"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{str(meta_file)!r} is not a saved agent's description ({error})") from error
    venv = _as_vec_env(env)
    if name in FIXED and "n_steps" not in meta:  # a fixed policy (a learner's file has its rollout length)
        agent = FIXED[name](seed=meta["seed"], **meta["params"])
        return _bind(agent, venv), venv
    stats = directory / NORMALISATION_FILE
    # Files written before "normalised" was recorded: every learner but the token reader normalised.
    if meta.get("normalised", name != "rl_tune_pretrained") and not stats.is_file():
        raise FileNotFoundError(
            f"{str(directory)!r} lacks {NORMALISATION_FILE}: the agent learned on standardised observations "
            "and would act on raw ones without its statistics. Copy the agent folder whole"
        )
    if stats.is_file():
        normalised = VecNormalize(venv, norm_obs=True, norm_reward=False, training=False)
        load_normalisation_state(normalised, _load_tensors(stats))
        venv = normalised
    agent = make_agent(name, venv, **{**meta.get("overrides", {}), "n_steps": meta["n_steps"]})
    try:
        agent.policy.load_state_dict(_load_tensors(directory / POLICY_FILE))
    except RuntimeError as error:
        raise ValueError(
            f"the policy in {str(directory)!r} does not fit this environment: {error}"
        ) from error
    return agent, venv


def _load_tensors(path: Path) -> Any:
    try:
        return load_tensors(path)
    except UnreadableFile as error:
        raise ValueError(f"saved agent file {error}") from error
