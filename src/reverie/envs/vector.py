"""A run's envs as one Gymnasium vector env (`run.vector`), each env able to rebuild an
episode from its seed and actions wherever it lives (this process or a worker).

Torch-free on purpose: an `async` worker process imports only this module, the env builders
and the env's own packages.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from reverie.config import VECTOR_MODES
from reverie.envs.make import make_env
from reverie.errors import UserError

# a fresh interpreter per worker (forkserver) rather than a fork of a process whose torch
# thread pools may be running; spawn where forkserver does not exist (Windows)
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
    `VectorEnv.call` (after `set_attr("plan", ...)`, which hands each env its own plan)."""

    def __init__(self, env, index: int) -> None:
        super().__init__(env)
        self.index = index
        self.plan: Plan | None = None

    def replay(self) -> tuple[Any, bool]:
        assert self.plan is not None, "set_attr('plan', ...) first"
        out, self.plan = replay_episode(self.env, self.plan), None
        return out

    def has_lives(self) -> bool:
        return hasattr(self.env.unwrapped, "ale")


def worker_env(make: Callable[[], Any], index: int, driver_pid: int) -> Replayable:
    if os.getpid() != driver_pid and hasattr(os, "setpgrp"):
        # an `async` worker leaves the driver's process group: Ctrl-C at a terminal and a
        # SIGTERM to the group (a scheduler's preemption) reach only the driver, which stops
        # with a checkpoint and then closes the workers itself
        os.setpgrp()
    return Replayable(make(), index)


class _DriverPipe:
    """A worker's end of its pipe to the driver: the driver gone (killed, so the pipe is
    closed at its end) ends the worker quietly. gymnasium's worker reports any exception to
    the driver over this same pipe (and prints two tracebacks per worker when it cannot);
    SystemExit is not an Exception, so it passes its handler, closes the env, and exits."""

    def __init__(self, pipe) -> None:
        self._pipe = pipe

    def recv(self):
        try:
            return self._pipe.recv()
        except (EOFError, ConnectionResetError):
            raise SystemExit(0) from None

    def send(self, obj) -> None:
        try:
            self._pipe.send(obj)
        except (BrokenPipeError, ConnectionResetError):
            raise SystemExit(0) from None

    def __getattr__(self, name: str):
        return getattr(self._pipe, name)


def quiet_worker(index, env_fn, pipe, *args) -> None:
    """gymnasium's `async` worker, with its pipe in `_DriverPipe`: an env worker of a driver
    killed with SIGKILL exits without a traceback."""
    from gymnasium.vector.async_vector_env import _async_worker

    _async_worker(index, env_fn, _DriverPipe(pipe), *args)


def vector_env(make: Callable[[], Any], num_envs: int, mode: str = "sync"):
    """`num_envs` envs from `make` (picklable for `async`: `env_maker(cfg)`), with
    Gymnasium's autoreset off: the caller resets ended envs (with their episode's seed)."""
    fns = [partial(worker_env, make, i, os.getpid()) for i in range(num_envs)]
    if mode == "async":
        try:
            return AsyncVectorEnv(fns, context=START_METHOD, worker=quiet_worker,
                                  autoreset_mode=AutoresetMode.DISABLED)
        except (ConnectionError, EOFError) as e:  # a worker died while starting
            main = getattr(sys.modules.get("__main__"), "__file__", None)
            if main == "<stdin>":
                raise UserError("run.vector=async: env workers re-import the main script, and "
                                "one read from standard input cannot be: run it from a file, "
                                "or set run.vector=sync") from e
            raise UserError(
                f"run.vector=async: an env worker process could not start or build the env "
                f"({e!r}; its traceback is above). A worker ({START_METHOD}) re-imports the main "
                "script and builds the env afresh: keep a script's top-level code under `if "
                "__name__ == \"__main__\":` and register custom envs in an importable module; "
                "or set run.vector=sync") from e
    if mode != "sync":
        raise ValueError(f"vector env mode must be one of {VECTOR_MODES}, got '{mode}'")
    return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED)
