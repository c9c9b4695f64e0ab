"""N environments stepped together, with the bookkeeping an exact resume needs.

Every episode starts with `reset(seed=episode_seed(seed, k))`, where k counts the episodes
the run has started (envs take the next k in index order when they end), so one env gives
the same episodes as before vectorisation. Environments cannot be snapshotted in general, so
the collector keeps the actions of each env's current episode: a checkpoint can be taken at
any step, and `load_state_dict` rebuilds every env by resetting it with its episode's seed
and replaying those actions (Gymnasium envs are deterministic given the seed and actions).

Each `step` returns a `Transition` batched over the envs: the observation the action was
chosen at, the action, reward, both end flags and the observation after the action — for an
ended episode its final observation (needed to bootstrap a time limit), not the reset one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from reverie.envs import make_env
from reverie.envs.actions import action_spec
from reverie.errors import UserError

Obs = dict[str, np.ndarray]


class Transition(NamedTuple):
    """One vector step; every array has the env axis first, [N, ...]."""

    obs: Obs  # the observation the action was chosen at
    action: np.ndarray
    reward: np.ndarray  # float32
    terminated: np.ndarray  # bool: the MDP ended (no value after it)
    truncated: np.ndarray  # bool: a time limit cut the episode (bootstrap from next_obs)
    # (with env.life_loss_terminal, a lost life is `terminated` while the episode goes on)
    next_obs: Obs  # the observation after the action (an ended episode's final one)
    first: np.ndarray  # bool: `obs` starts an episode


def env_of(cfg, *, evaluation: bool = False, render: bool = False):
    """The env a run's config builds: the training env, or with `evaluation` the evaluation
    env (up to run.eval_noop_max random no-op starts on Atari). The one builder from a config,
    for the driver's evaluations, `reverie eval` and `reverie watch` alike."""
    noop = {"noop_max": int(cfg.run.eval_noop_max)} if evaluation else {}
    return make_env(cfg.env.id, cfg.env.image_size, render=render,
                    prev_reward=bool(cfg.env.get("prev_reward", False)), **noop)


def episode_seed(seed: int, episode: int, stream: int = 0) -> int:
    """Seed of the k-th episode of a stream (0: training, 1: evaluation)."""
    return int(np.random.SeedSequence([seed, stream, episode]).generate_state(1)[0])


def stack(rows: list[Obs]) -> Obs:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class Collector:
    """`num_envs` envs from one builder (`make`: the run's `env_of(cfg)`), stepped with a
    batch of actions; `name` (the env spec) is what its errors call the env."""

    def __init__(self, make: Callable[[], Any], num_envs: int, seed: int, name: str,
                 life_loss_terminal: bool = False) -> None:
        self.env_id = name
        self.life_loss_terminal = life_loss_terminal
        self.seed = seed
        self.n = num_envs
        self.envs = [make() for _ in range(num_envs)]
        if life_loss_terminal and not hasattr(self.envs[0].unwrapped, "ale"):
            raise UserError(f"env.life_loss_terminal needs an env with lives (ALE/<Game>-v5); "
                            f"'{name}' has none: set env.life_loss_terminal=false")
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self.started = 0  # episodes started so far (the next episode's k)
        self.episode = np.zeros(num_envs, np.int64)  # each env's current episode k
        self.actions: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)
        self.first = np.ones(num_envs, bool)
        self._obs: list[Obs] = []

    @property
    def obs(self) -> Obs:
        """The current observation of every env, [N, ...]."""
        return stack(self._obs)

    def _reset(self, i: int) -> Obs:
        k = self.started
        self.started += 1
        self.episode[i] = k
        self.actions[i] = []
        self.returns[i], self.lengths[i], self.first[i] = 0.0, 0, True
        obs, _ = self.envs[i].reset(seed=episode_seed(self.seed, k))
        return obs

    def start(self) -> None:
        """Begin the run: every env starts its first episode."""
        self._obs = [self._reset(i) for i in range(self.n)]

    def step(self, action: np.ndarray) -> tuple[Transition, list[tuple[float, int]]]:
        """Step every env with its action -> (the transition, (return, length) of each episode
        that ended, in env order). Ended envs are reset at once (their next obs is `first`)."""
        obs, first = self.obs, self.first.copy()
        rewards = np.zeros(self.n, np.float32)
        term = np.zeros(self.n, bool)
        trunc = np.zeros(self.n, bool)
        after: list[Obs] = []
        finished = []
        for i, env in enumerate(self.envs):
            a = action[i]
            nxt, r, te, tr, info = env.step(a)
            self.actions[i].append(np.asarray(a))
            # a lost life ends the value (terminal) but not the episode: no reset, no `first`
            lost = self.life_loss_terminal and bool(info.get("life_loss", False))
            rewards[i], term[i], trunc[i] = float(r), bool(te) or lost, bool(tr) and not te
            self.returns[i] += float(r)
            self.lengths[i] += 1
            self.first[i] = False
            after.append(nxt)
            if te or tr:
                finished.append((float(self.returns[i]), int(self.lengths[i])))
                self._obs[i] = self._reset(i)
            else:
                self._obs[i] = nxt
        return Transition(obs, np.asarray(action), rewards, term, trunc, stack(after),
                          first), finished

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
            "obs": {k: torch.from_numpy(v) for k, v in self.obs.items()},
        }

    def load_state_dict(self, d: dict[str, Any]) -> list[str]:
        """Rebuild every env's current episode; returns notes (e.g. an env that replays
        differently, so the resumed run is not bit-exact)."""
        if len(d["actions"]) != self.n:
            raise UserError(f"the checkpoint holds {len(d['actions'])} envs but run.num_envs="
                            f"{self.n}; resume with the run's own config")
        self.started = int(d["started"])
        self.episode = d["episode"].numpy().copy()
        self.returns = d["returns"].numpy().copy()
        self.lengths = d["lengths"].numpy().copy()
        self.first = d["first"].numpy().copy()
        notes, self._obs = [], []
        for i, env in enumerate(self.envs):
            obs, _ = env.reset(seed=episode_seed(self.seed, int(self.episode[i])))
            acts = list(d["actions"][i].numpy())
            for a in acts:
                obs, _, te, tr, _ = env.step(a)
                if te or tr:
                    raise UserError(f"env '{self.env_id}' ended an episode early while its "
                                    "steps were replayed on resume: it is not deterministic "
                                    "given its seed; this run cannot be resumed exactly")
            self.actions[i] = acts
            self._obs.append(obs)
        saved = {k: v.numpy() for k, v in d["obs"].items()}
        if any(not np.array_equal(saved[k], v) for k, v in self.obs.items()):
            notes.append(f"env '{self.env_id}' replayed to a different observation on "
                         "resume (not deterministic given its seed): the resumed run continues "
                         "from the replayed state and is not bit-exact")
        return notes
