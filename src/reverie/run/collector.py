"""N environments stepped together through Gymnasium's vector API, with the bookkeeping an
exact resume needs.

`run.vector` picks the vector env: `sync` (`gymnasium.vector.SyncVectorEnv`, every env in
this process) or `async` (`AsyncVectorEnv`, one worker process per env: meant for env steps
that cost more than a pipe round trip, on a machine with cores to spare; bench/vector_env.py
measures it). Both run with
Gymnasium's autoreset off: the collector resets each ended env itself, so that
every episode starts with `reset(seed=episode_seed(seed, k))`, where k counts the episodes
the run has started (envs take the next k in index order when they end) — one env gives
the same episodes as before vectorisation, and `sync` and `async` give the same data.

Environments cannot be snapshotted in general, so the collector keeps the actions of each
env's current episode: a checkpoint can be taken at any step, and `load_state_dict` rebuilds
every env by resetting it with its episode's seed and replaying those actions, inside the
env's own process: an episode must depend only on its seed and actions, not on the episodes the
env ran before (tests/test_driver_hooks.py checks the bundled envs).

Each `step` returns a `Transition` batched over the envs: the observation the action was
chosen at, the action, reward, both end flags and the observation after the action — for an
ended episode its final observation (needed to bootstrap a time limit), not the reset one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv

from reverie.envs.actions import action_spec
from reverie.envs.vector import env_of, vector_env
from reverie.errors import UserError
from reverie.rng import substream

__all__ = ["Collector", "Transition", "env_of", "episode_seed", "stack"]

Obs = dict[str, np.ndarray]
# what a vector env raises when one of its worker processes is gone (killed, out of memory)
WORKER_GONE = (BrokenPipeError, ConnectionResetError, EOFError)


class EnvWorkerDied(UserError):
    """An `async` env worker process died: the run stops, its last checkpoint stands."""


class Transition(NamedTuple):
    """One vector step; every array has the env axis first, [N, ...]."""

    obs: Obs  # the observation the action was chosen at
    action: np.ndarray
    reward: np.ndarray  # float32
    terminated: np.ndarray  # bool: the MDP ended (no value after it)
    truncated: np.ndarray  # bool: a time limit cut the episode (bootstrap from next_obs)
    # (with env.life_loss_terminal, a lost life is `terminated` while the episode goes on)
    next_obs: Obs  # the observation after the action (an ended episode's final one)
    # (arrays are shared, not copied: `next_obs` of one step may be `obs` of the next; treat
    # them as read-only)
    first: np.ndarray  # bool: `obs` starts an episode


def episode_seed(seed: int, episode: int, stream: int = 0) -> int:
    """Seed of the k-th episode of a stream (0: training, 1: evaluation)."""
    return substream(seed, stream, episode)


def stack(rows: list[Obs]) -> Obs:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class Collector:
    """`num_envs` envs from one builder (`make`: the run's `env_maker(cfg)`, which is also
    picklable for `vector="async"`), stepped with a batch of actions; `name` (the env spec) is
    what its errors call the env."""

    def __init__(self, make: Callable[[], Any], num_envs: int, seed: int, name: str,
                 life_loss_terminal: bool = False, vector: str = "sync") -> None:
        self.env_id = name
        self.life_loss_terminal = life_loss_terminal
        self.seed = seed
        self.n = num_envs
        self.venv = vector_env(make, num_envs, vector)
        if life_loss_terminal and not self.venv.call("has_lives")[0]:
            self.close()
            raise UserError(f"env.life_loss_terminal needs an env with lives (ALE/<Game>-v5); "
                            f"'{name}' has none: set env.life_loss_terminal=false")
        self.observation_space = self.venv.single_observation_space
        self.action_space = self.venv.single_action_space
        self.started = 0  # episodes started so far (the next episode's k)
        self.episode = np.zeros(num_envs, np.int64)  # each env's current episode k
        self.actions: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)
        self.first = np.ones(num_envs, bool)
        self.obs: Obs = {}  # the current observation of every env, [N, ...]
        self.worker_died = False

    def _next_episode(self, i: int) -> int:
        """Env i starts the run's next episode -> that episode's reset seed."""
        k = self.started
        self.started += 1
        self.episode[i] = k
        self.actions[i] = []
        self.returns[i], self.lengths[i], self.first[i] = 0.0, 0, True
        return episode_seed(self.seed, k)

    def start(self) -> None:
        """Begin the run: every env starts its first episode."""
        with self._workers_alive():
            self.obs, _ = self.venv.reset(seed=[self._next_episode(i) for i in range(self.n)])

    def step(self, action: np.ndarray) -> tuple[Transition, list[tuple[float, int]]]:
        """Step every env with its action -> (the transition, (return, length) of each episode
        that ended, in env order). Ended envs are reset at once (their next obs is `first`)."""
        obs, first = self.obs, self.first.copy()
        with self._workers_alive():
            after, reward, te, tr, info = self.venv.step(action)
        for i in range(self.n):
            self.actions[i].append(np.asarray(action[i]))
        te, tr = np.asarray(te, bool), np.asarray(tr, bool)
        term = te.copy()
        if self.life_loss_terminal and "life_loss" in info:
            # a lost life ends the value (terminal) but not the episode: no reset, no `first`
            term |= np.asarray(info["life_loss"], bool) & np.asarray(info["_life_loss"], bool)
        self.returns += reward
        self.lengths += 1
        self.first[:] = False
        ended = te | tr
        finished = [(float(self.returns[i]), int(self.lengths[i])) for i in np.flatnonzero(ended)]
        if ended.any():
            seeds = [self._next_episode(i) if e else None for i, e in enumerate(ended)]
            with self._workers_alive():
                self.obs, _ = self.venv.reset(seed=seeds, options={"reset_mask": ended})
        else:
            self.obs = after
        return Transition(obs, np.asarray(action), np.asarray(reward, np.float32), term,
                          tr & ~te, after, first), finished

    @contextmanager
    def _workers_alive(self) -> Iterator[None]:
        """A pipe error of an `async` vector env whose worker process is gone becomes one
        `EnvWorkerDied`; any other error (an env's own, also under `sync`) passes unchanged."""
        try:
            yield
        except WORKER_GONE as e:
            processes = getattr(self.venv, "processes", [])  # async only
            for p in processes if all(p.exitcode is None for p in processes) else ():
                p.join(timeout=0.5)  # a dead worker's status may take a moment to arrive
            # a worker that reported its env's own error (EOFError from a simulator's socket)
            # ended with exit code 0 after the driver re-raised that error: not a death
            gone = [i for i, p in enumerate(processes) if p.exitcode not in (None, 0)]
            if not gone:
                raise
            self.worker_died = True
            raise EnvWorkerDied(f"env worker process {gone[0]} of run.vector=async died "
                                f"({e!r}: killed, or out of memory)") from None

    def close(self) -> None:
        """End the envs (an `async` vector env's worker processes with them; a step or replay
        that an interrupt left pending is waited for 5 s, then its workers are terminated)."""
        if not isinstance(self.venv, AsyncVectorEnv):
            self.venv.close()
            return
        if not self.worker_died:  # else it would wait on the dead worker's step
            try:
                self.venv.close(timeout=5)
                return
            except (EOFError, OSError):  # a worker is gone (pipe errors are OSErrors)
                pass
        for process in self.venv.processes:  # end the others without a word
            if process.is_alive():
                process.kill()
            process.join()
        self.venv.closed = True

    # -- exact resume ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        actions = []
        for acts in self.actions:
            shape, dtype = action_spec(self.action_space)
            actions.append(torch.from_numpy(np.asarray(acts, dtype=dtype).reshape(-1, *shape)))
        return {
            "started": self.started,
            "episode": torch.from_numpy(self.episode.copy()),
            "actions": actions,
            "returns": torch.from_numpy(self.returns.copy()),
            "lengths": torch.from_numpy(self.lengths.copy()),
            "first": torch.from_numpy(self.first.copy()),
            "obs": {k: torch.from_numpy(v.copy()) for k, v in self.obs.items()},
        }

    def load_state_dict(self, d: dict[str, Any]) -> list[str]:
        """Rebuild every env's current episode (each in its own process under `async`);
        returns notes (e.g. an env that replays differently, so the resumed run is not
        bit-exact)."""
        if len(d["actions"]) != self.n:
            raise UserError(f"the checkpoint holds {len(d['actions'])} envs but run.num_envs="
                            f"{self.n}; resume with the run's own config")
        self.started = int(d["started"])
        self.episode = d["episode"].numpy().copy()
        self.returns = d["returns"].numpy().copy()
        self.lengths = d["lengths"].numpy().copy()
        self.first = d["first"].numpy().copy()
        self.actions = [list(a.numpy()) for a in d["actions"]]
        # each env gets its own plan (not all of them, as `call`'s arguments would)
        self.venv.set_attr("plan", [(episode_seed(self.seed, int(k)), a.numpy())
                                    for k, a in zip(self.episode, d["actions"])])
        with self._workers_alive():
            replayed = self.venv.call("replay")
        if any(ended for _, ended in replayed):
            raise UserError(f"env '{self.env_id}' ended an episode early while its "
                            "steps were replayed on resume: it is not deterministic "
                            "given its seed; this run cannot be resumed exactly")
        saved = {k: v.numpy() for k, v in d["obs"].items()}
        self.obs = {k: v.astype(saved[k].dtype, copy=False)
                    for k, v in stack([obs for obs, _ in replayed]).items()}
        notes = []
        if any(not np.array_equal(saved[k], v) for k, v in self.obs.items()):
            notes.append(f"env '{self.env_id}' replayed to a different observation on "
                         "resume (not deterministic given its seed): the resumed run continues "
                         "from the replayed state and is not bit-exact")
        return notes
