"""Every agent's hyperparameters, in one place.

Learning agents update once per epoch of fine-tuning: ``n_steps`` (the rollout
length) is set to the environment's steps per epoch when the agent is built, so
it is not listed here. ``make_agent(name, env, **overrides)`` overrides any key.
"""

from __future__ import annotations

from typing import Any

# PPO's settings, shared by every agent trained with PPO (the paper's clip 0.1) and by pretraining.
PPO_SETTINGS: dict[str, Any] = {
    "learning_rate": 3e-4,
    "n_epochs": 10,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_range": 0.1,
    "ent_coef": 0.01,
}

HYPERPARAMS: dict[str, dict[str, Any]] = {
    # The paper's agent: linear layer over the pooled activations, then an LSTM (actor);
    # an MLP critic on the same linear features; PPO with clip 0.1.
    "rl_tune": {
        **PPO_SETTINGS,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "features_dim": 64,
        "lstm_hidden_size": 64,
        "critic_net_arch": [64, 64],
    },
    "ppo": {**PPO_SETTINGS, "net_arch": [64, 64]},
    "a2c": {
        "learning_rate": 7e-4,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "ent_coef": 0.01,
        "net_arch": [64, 64],
    },
    "trpo": {
        "learning_rate": 1e-3,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "target_kl": 0.01,
        "net_arch": [64, 64],
    },
    # Plain fine-tuning: one learning rate for every layer (a rate, or an action index if given).
    "uniform": {"lr": 1e-3, "index": None},
    # One rate decayed by a cosine over the episode, optional linear warm-up (fraction of it).
    "cosine": {"lr": 1e-3, "warmup": 0.0},
    # Optimizers that avoid a learning-rate search, at their published defaults (lr None).
    "schedulefree_adamw": {"lr": None},
    "prodigy": {"lr": None},
    "prodigy_layerwise": {"lr": None},
    "ldog": {"lr": None},
    "mechanic": {"lr": None},
    # Discriminative fine-tuning: the head at base_lr, each earlier layer `decay` times lower.
    "layerwise_decay": {"base_lr": 1e-3, "decay": 0.8},
    # The control: uniformly random actions in the environment's own action space.
    "random": {},
    # A fixed per-stage profile of multipliers on a base optimizer (the headroom study's search space).
    "stage_profile": {"optimizer": "prodigy", "lr": None, "multipliers": {}, "schedule": "constant"},
    # Surgical fine-tuning: one block (a stage) and the head train, the rest is frozen.
    "surgical": {"block": None, "optimizer": "prodigy", "lr": None},
    # Auto-RGN: each layer's share of the base's rate from its relative gradient norm.
    "auto_rgn": {"optimizer": "prodigy", "lr": None},
    # Only the head learns.
    "linear_probe": {"lr": 1e-3},
    # A policy pretrained over many runs (train.py pretrain): frozen, or learning online with PPO
    # (the pretraining's settings; one update per epoch).
    "rl_tune_pretrained": {"policy": None, "learn": False, **PPO_SETTINGS},
    # The residual controller (issue 28): per-layer multipliers of a base optimizer from 8 weights
    # (theta, or a controller file; neither: the base run itself).
    "residual_controller": {"theta": None, "policy": None, "optimizer": "prodigy", "lr": None},
}
