"""``RayVecEnv``: SB3's ``VecEnv`` over environments that live in Ray actors, on any node of a cluster.

Pretraining a controller steps many fine-tuning runs at once; SubprocVecEnv keeps them on one
machine. SB3 has no maintained Ray vector env (its maintainers declined multi-node support), so
this is the small bridge: each environment is built and stepped inside a Ray actor that asks for
one GPU where it fine-tunes on one (Ray places it on a node with a free GPU and makes that GPU the
actor's ``cuda``), else for ``threads`` CPUs. The protocol is SubprocVecEnv's, command for command
(auto-reset with ``terminal_observation``, ``TimeLimit.truncated``, seeds and options used once),
so a run gives the same results through either for the same seeds (a test checks it).

Ray is optional (``pip install -e ".[ray]"``): it is imported when a ``RayVecEnv`` is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

# SubprocVecEnv's own helpers (module-private), so that this env stacks and patches exactly as it
# does; tests/test_ray.py checks the two step alike.
from stable_baselines3.common.vec_env.subproc_vec_env import _stack_obs


class EnvActor:
    """One environment in a Ray actor: SubprocVecEnv's worker loop as methods."""

    def __init__(self, env_fn: Callable[[], gym.Env], threads: int | None) -> None:
        import torch
        from stable_baselines3.common.vec_env.patch_gym import _patch_env

        if threads is not None:
            torch.set_num_threads(threads)
        self.env = _patch_env(env_fn())

    def spaces(self) -> tuple[gym.Space, gym.Space, str | None]:
        return self.env.observation_space, self.env.action_space, self.env.render_mode

    def step(self, action: Any) -> tuple[Any, float, bool, dict[str, Any], dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        done = terminated or truncated
        info["TimeLimit.truncated"] = truncated and not terminated
        reset_info: dict[str, Any] = {}
        if done:  # keep the final observation where SB3 looks for it, then start the next episode
            info["terminal_observation"] = observation
            observation, reset_info = self.env.reset()
        return observation, reward, done, info, reset_info

    def reset(self, seed: int | None, options: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        return self.env.reset(seed=seed, **({"options": options} if options else {}))

    def render(self) -> Any:
        return self.env.render()

    def get_attr(self, name: str) -> Any:
        return self.env.get_wrapper_attr(name)

    def has_attr(self, name: str) -> bool:
        try:
            self.env.get_wrapper_attr(name)
        except AttributeError:
            return False
        return True

    def set_attr(self, name: str, value: Any) -> None:
        setattr(self.env, name, value)

    def env_method(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        return self.env.get_wrapper_attr(name)(*args, **kwargs)

    def is_wrapped(self, wrapper_class: type[gym.Wrapper]) -> bool:
        from stable_baselines3.common.env_util import is_wrapped

        return is_wrapped(self.env, wrapper_class)

    def close(self) -> None:
        self.env.close()


def connect(address: str | None, num_cpus: int, **init_kwargs: Any) -> bool:
    """Join the Ray at ``address`` (``"auto"``, ``HOST:PORT``), or start one here with ``num_cpus``;
    True if this call started Ray (whoever started it shuts it down). Ray starts its workers at
    niceness 15, under anything else the machine runs (measured: 5% of a core each beside another
    job): here they run at 0; a cluster's nodes take it from their own environment (README).
    ``init_kwargs`` go to ``ray.init``."""
    import os

    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_worker_niceness", "0")
    # "local": a new Ray for this call, even where `ray start` runs one on this machine
    ray.init(
        address=address or "local",
        num_cpus=None if address else num_cpus,
        include_dashboard=False,
        **init_kwargs,
    )
    return True


class RayVecEnv(VecEnv):
    """Each of ``env_fns`` built in a Ray actor. ``gpus[i]``: whether environment ``i`` asks for a
    GPU (its fine-tuning device is then the actor's ``cuda``); else it asks for ``threads`` CPUs
    (default 1) and runs with that many torch threads. Ray must be initialised (``ray.init``, or
    :func:`connect`); ``shutdown_on_close``: ``close`` shuts it down (who started it)."""

    def __init__(
        self,
        env_fns: list[Callable[[], gym.Env]],
        threads: int | None = 1,
        gpus: Sequence[bool] | None = None,
        shutdown_on_close: bool = False,
    ) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError(
                "RayVecEnv needs a running Ray: call ray.init() (or ray.init(address=...)) first"
            )
        gpus = list(gpus) if gpus is not None else [False] * len(env_fns)
        if len(gpus) != len(env_fns):
            raise ValueError(f"gpus has {len(gpus)} entries for {len(env_fns)} environments")
        remote = ray.remote(EnvActor)
        self._ray = ray
        self.actors = [
            remote.options(num_cpus=threads or 1, num_gpus=1 if gpu else 0).remote(
                env_fn, None if gpu else threads
            )
            for env_fn, gpu in zip(env_fns, gpus, strict=True)
        ]
        self.waiting, self.closed, self._shutdown_on_close = False, False, shutdown_on_close
        self._pending: list[Any] = []
        observation_space, action_space, render_mode = ray.get(self.actors[0].spaces.remote())
        super().__init__(len(env_fns), observation_space, action_space)
        self.render_mode = render_mode

    def step_async(self, actions: np.ndarray) -> None:
        self._pending = [actor.step.remote(a) for actor, a in zip(self.actors, actions, strict=True)]
        self.waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        results = self._ray.get(self._pending)
        self.waiting, self._pending = False, []
        obs, rewards, dones, infos, self.reset_infos = zip(*results, strict=True)
        return _stack_obs(obs, self.observation_space), np.stack(rewards), np.stack(dones), list(infos)

    def reset(self) -> VecEnvObs:
        results = self._ray.get(
            [actor.reset.remote(self._seeds[i], self._options[i]) for i, actor in enumerate(self.actors)]
        )
        obs, self.reset_infos = zip(*results, strict=True)
        self._reset_seeds()
        self._reset_options()
        return _stack_obs(obs, self.observation_space)

    def close(self) -> None:
        if self.closed:
            return
        if self.waiting:
            self._ray.get(self._pending)
        self._ray.get([actor.close.remote() for actor in self.actors])
        for actor in self.actors:
            self._ray.kill(actor)
        self.closed = True
        if self._shutdown_on_close:
            self._ray.shutdown()

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            return [None for _ in self.actors]
        return self._ray.get([actor.render.remote() for actor in self.actors])

    def has_attr(self, attr_name: str) -> bool:
        return all(self._ray.get([actor.has_attr.remote(attr_name) for actor in self.actors]))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._ray.get([a.get_attr.remote(attr_name) for a in self._targets(indices)])

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._ray.get([a.set_attr.remote(attr_name, value) for a in self._targets(indices)])

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        calls = [a.env_method.remote(method_name, method_args, method_kwargs) for a in self._targets(indices)]
        return self._ray.get(calls)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return self._ray.get([a.is_wrapped.remote(wrapper_class) for a in self._targets(indices)])

    def _targets(self, indices: VecEnvIndices) -> list[Any]:
        return [self.actors[i] for i in self._get_indices(indices)]
