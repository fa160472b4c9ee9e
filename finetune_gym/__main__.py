"""Demo: run a registered environment with a fixed or random learning-rate policy.

``python -m finetune_gym`` fine-tunes the built-in offline default
(FineTune-Digits-v0) for one episode with uniformly random per-layer learning
rates and prints training, validation and test accuracy. It exercises the whole
environment (data, source weights, steps, EMA between episodes) without an agent.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

from . import ENV_IDS
from .cli import parse_kwargs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_gym",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--env", default="FineTune-Digits-v0", choices=ENV_IDS)
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--epochs-per-episode", type=int, default=None)
    parser.add_argument(
        "--policy",
        choices=["random", "uniform"],
        default="random",
        help="random: uniformly random step per layer; uniform: the same --lr-index for every layer",
    )
    parser.add_argument("--lr-index", type=int, default=2, help="step index used by --policy uniform")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--env-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="any other FineTuneEnv argument, e.g. sampling_rate=0.3 data_root=../shared/data",
    )
    args = parser.parse_args(argv)

    try:
        kwargs = parse_kwargs(args.env_kwargs)
    except ValueError as error:
        parser.error(str(error))
    if args.epochs_per_episode is not None:
        kwargs["epochs_per_episode"] = args.epochs_per_episode
    start = time.perf_counter()
    try:
        env = gym.make(args.env, **kwargs)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        parser.exit(2, f"error: {error}\n")
    base = env.unwrapped
    print(
        f"{args.env}: {base.n_layers} layers, {len(base.train_indices)} training / {len(base.val_indices)} "
        f"validation images, {base.steps_per_epoch} steps per epoch, device {base.device}"
    )
    env.action_space.seed(args.seed)
    observation, _ = env.reset(seed=args.seed)
    for episode in range(args.episodes):
        if episode:
            observation, _ = env.reset()
        rewards, terminated = [], False
        while not terminated:
            if args.policy == "random":
                action = env.action_space.sample()
            else:
                action = np.full(base.n_layers, args.lr_index)
            observation, reward, terminated, _, info = env.step(action)
            rewards.append(reward)
            if "epoch_train_accuracy" in info:
                print(
                    f"  episode {episode} epoch {info['epoch']}: train accuracy "
                    f"{info['epoch_train_accuracy']:.3f}, mean reward {np.mean(rewards):.3f}"
                )
                rewards = []
        val = info.get("val_accuracy")
        print(
            f"episode {episode}: validation accuracy {val:.4f}"
            if val is not None
            else f"episode {episode} done"
        )
    print(
        f"test accuracy of the final model: {base.evaluate('test'):.4f} ({time.perf_counter() - start:.1f} s)"
    )
    env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
