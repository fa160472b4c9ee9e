"""RL Zoo hyperparameter files (``hyperparams/<algo>.yml``), written from :mod:`.hyperparams`.

RL Zoo users train any registered environment with ``python -m rl_zoo3.train --algo ppo_lstm --env
FineTune-Digits-v0 --gym-packages finetune_gym --conf-file hyperparams/ppo_lstm.yml``. The files are
generated here so that the zoo and ``train.py`` read the same numbers (``python -m
finetune_gym.agents.zoo hyperparams`` rewrites them; a test keeps them equal).

What the zoo cannot take from ``train.py``: its YAML names a policy by SB3's alias (``MlpLstmPolicy``,
``MlpPolicy``) and evaluates ``policy_kwargs`` without our classes, so zoo runs use SB3's standard
policies with our sizes and PPO/A2C/TRPO settings; the paper's actor (linear features before the LSTM)
and the faster per-grid distribution are ``train.py --algo rl_tune``'s.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .hyperparams import HYPERPARAMS

# RL Zoo's algorithm name -> this package's agent (the registry accepts ppo_lstm as rl_tune's alias).
ZOO_ALGOS = {"ppo_lstm": "rl_tune", "ppo": "ppo", "a2c": "a2c", "trpo": "trpo"}

# Steps per epoch of each registered id's default configuration (seed 0): the zoo's rollout
# length, so that the agent updates once per epoch of fine-tuning as in train.py. Digits and
# CIFARResNet (GTSRB) are checked against the built environment by the tests (GTSRB where
# ../shared/data is present); FGVC Aircraft's comes from its published split (6,667 trainval
# images, 10% held out for validation by class, batch 32) and varies by one step with the seed
# (validation counts are rounded at random per class). For another dataset or sampling rate set
# --hyperparams n_steps:<env.steps_per_epoch> n_timesteps:<5 x 10 x that>.
STEPS_PER_EPOCH = {
    "FineTune-ResNet50-v0": 188,
    "FineTune-CIFARResNet-v0": 33,
    "FineTune-Digits-v0": 17,
}
EPISODES = 5  # the paper's protocol, as train.py's defaults
EPOCHS_PER_EPISODE = 10


def _policy_kwargs(agent: str, params: dict[str, Any]) -> str:
    """The zoo evaluates this string with only ``nn`` and ``th`` in scope."""
    if agent == "rl_tune":
        critic = list(params["critic_net_arch"])
        return (
            f"dict(lstm_hidden_size={params['lstm_hidden_size']}, n_lstm_layers=1, shared_lstm=False, "
            f"enable_critic_lstm=False, net_arch=dict(pi=[], vf={critic}))"
        )
    return f"dict(net_arch={list(params['net_arch'])})"


def zoo_hyperparams(algo: str) -> dict[str, dict[str, Any]]:
    """One RL Zoo hyperparameter block per registered id for zoo algorithm ``algo``."""
    agent = ZOO_ALGOS[algo]
    params = dict(HYPERPARAMS[agent])
    blocks = {}
    for env_id, n_steps in STEPS_PER_EPOCH.items():
        block: dict[str, Any] = {
            "n_timesteps": EPISODES * EPOCHS_PER_EPISODE * n_steps,
            "policy": "MlpLstmPolicy" if agent == "rl_tune" else "MlpPolicy",
            "n_steps": n_steps,
            # train.py's VecNormalize: observations normalised, rewards kept (accuracy is in [0, 1]).
            "normalize": "dict(norm_obs=True, norm_reward=False)",
            # The paper's episodic moving-average control, as in train.py.
            "env_wrapper": "finetune_gym.wrappers.EMAEpisodeWrapper",
            "policy_kwargs": _policy_kwargs(agent, params),
        }
        if agent in ("rl_tune", "ppo", "trpo"):
            block["batch_size"] = n_steps  # one minibatch per epoch's rollout, as train.py
        for key, value in params.items():
            if key not in ("features_dim", "lstm_hidden_size", "critic_net_arch", "net_arch"):
                block[key] = value
        blocks[env_id] = block
    return blocks


def render(algo: str) -> str:
    """The YAML text of ``hyperparams/<algo>.yml`` (written by hand: no YAML library is a dependency)."""
    lines = [
        f"# RL Zoo hyperparameters for {algo} ({ZOO_ALGOS[algo]} in finetune-gym), generated from",
        "# finetune_gym/agents/hyperparams.py by `python -m finetune_gym.agents.zoo hyperparams`: edit that",
        "# file, not this one. n_steps = steps per epoch of each id's default configuration.",
    ]
    for env_id, block in zoo_hyperparams(algo).items():
        lines.append(f"{env_id}:")
        for key, value in block.items():
            text = f"'{value}'" if isinstance(value, str) else repr(value)
            lines.append(f"  {key}: {text}")
    return "\n".join(lines) + "\n"


def write(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for algo in ZOO_ALGOS:
        path = directory / f"{algo}.yml"
        path.write_text(render(algo))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write(sys.argv[1] if len(sys.argv) > 1 else "hyperparams"):
        print(written)
