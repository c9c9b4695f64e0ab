"""A run's envs as one Gymnasium vector env (`run.vector`), each env able to rebuild an
episode from its seed and actions wherever it lives (this process or a worker).

Torch-free on purpose: an `async` worker process imports only this module, the env builders
and the env's own packages.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from reverie.config import VECTOR_MODES
from reverie.envs.make import make_env
from reverie.errors import UserError

# a fresh interpreter per worker (forkserver) rather than a fork of a process whose torch
# thread pools may be running; spawn where forkserver does not exist (macOS: both; Windows)
START_METHOD = ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                else "spawn")

Plan = tuple[int, Sequence[Any]]  # (reset seed, actions since that reset)


def env_maker(cfg, *, evaluation: bool = False, render: bool = False) -> Callable[[], Any]:
    """The builder of the env a run's config builds: the training env, or with `evaluation`
    the evaluation env (up to run.eval_noop_max random no-op starts on Atari). Plain values
    only, so that an `async` worker unpickles it without the config's own classes (the agents'
    modules, and torch with them)."""
    noop = {"noop_max": int(cfg.run.eval_noop_max)} if evaluation else {}
    return partial(make_env, str(cfg.env.id), int(cfg.env.image_size), render=render,
                   prev_reward=bool(cfg.env.get("prev_reward", False)), **noop)


def env_of(cfg, *, evaluation: bool = False, render: bool = False):
    """The env of `env_maker`, built: the one builder from a config, for training, the
    driver's evaluations, `reverie eval` and `reverie watch` alike."""
    return env_maker(cfg, evaluation=evaluation, render=render)()


def replay_episode(env, plan: Plan) -> tuple[Any, bool]:
    """Reset `env` with the plan's seed and take its actions -> (the last observation, whether
    the episode ended on the way: the actions are of an episode still running, so an end
    means the env is not deterministic given its seed)."""
    seed, actions = plan
    obs, _ = env.reset(seed=seed)
    for a in actions:
        obs, _, term, trunc, _ = env.step(a)
        if term or trunc:
            return obs, True
    return obs, False


class Replayable(gym.Wrapper):
    """Env `index` of a vector env, with the methods the collector calls through
    `VectorEnv.call` (which hands every env the same arguments)."""

    def __init__(self, env, index: int) -> None:
        super().__init__(env)
        self.index = index

    def replay(self, plans: Sequence[Plan]) -> tuple[Any, bool]:
        return replay_episode(self.env, plans[self.index])

    def has_lives(self) -> bool:
        return hasattr(self.env.unwrapped, "ale")


def worker_env(make: Callable[[], Any], index: int) -> Replayable:
    if multiprocessing.parent_process() is not None:
        # an `async` worker: Ctrl-C is the driver's to handle (it stops with a checkpoint
        # and then closes the workers); a worker that died of it would lose that step
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return Replayable(make(), index)


def vector_env(make: Callable[[], Any], num_envs: int, mode: str = "sync"):
    """`num_envs` envs from `make` (picklable for `async`: e.g. `partial(env_of, cfg)`), with
    Gymnasium's autoreset off: the caller resets ended envs (with their episode's seed)."""
    fns = [partial(worker_env, make, i) for i in range(num_envs)]
    if mode == "async":
        try:
            return AsyncVectorEnv(fns, context=START_METHOD,
                                  autoreset_mode=AutoresetMode.DISABLED)
        except (ConnectionError, EOFError) as e:  # a worker died while starting
            raise UserError(
                f"run.vector=async: an env worker process died while starting ({e!r}); a "
                f"worker ({START_METHOD}) re-imports the main script, so a script that trains "
                "must keep its top-level code under `if __name__ == \"__main__\":`; or set "
                "run.vector=sync") from e
    if mode != "sync":
        raise ValueError(f"vector env mode must be one of {VECTOR_MODES}, got '{mode}'")
    return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED)
