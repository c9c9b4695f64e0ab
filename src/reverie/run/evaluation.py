"""Greedy evaluation episodes of an agent, several side by side as one batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from reverie.run.collector import episode_seed

# evaluation episodes run side by side, one batched `act` per step for all of them: at the
# batch sizes of acting, a call costs about the same for 1 row as for 16
EVAL_PARALLEL = 16


def evaluate(agent, make: Callable[[], Any], episodes: int, seed: int, round_: int = 0,
             parallel: int = EVAL_PARALLEL,
             on_step: Callable[[int, int], None] | None = None) -> list[float]:
    """Greedy returns of `episodes` episodes, in episode order, from envs that `make()` builds.

    Episode i is seeded by (seed, round_, i) whatever `parallel` is; up to `parallel` of them
    run at once as one batch of the agent (a finished row waits, its actions unused, until
    the last of its wave ends). The agent's rows are independent, so the returns are those
    of one episode at a time, up to the float rounding of batched matmuls. `on_step(env steps
    played, episodes ended)` is called after each batched step (progress for a long one).
    """
    if episodes <= 0:
        return []
    n_envs = max(1, min(int(parallel), episodes))
    envs = [make() for _ in range(n_envs)]
    returns: list[float] = []
    played = [0, 0]  # env steps, ended episodes: over all waves
    try:
        for start in range(0, episodes, n_envs):
            wave = envs[:min(n_envs, episodes - start)]
            returns += _episodes(agent, wave, seed, round_, start, played, on_step)
    finally:
        for env in envs:
            env.close()
    return returns


def _episodes(agent, envs: list, seed: int, round_: int, start: int, played: list[int],
              on_step: Callable[[int, int], None] | None) -> list[float]:
    """One episode in each env (episode numbers start, start+1, ...), acting as one batch."""
    n = len(envs)
    obs = [env.reset(seed=episode_seed(seed, round_ * 1000 + start + i, stream=1))[0]
           for i, env in enumerate(envs)]
    state = agent.initial_state(n)
    first = np.ones(n, dtype=bool)
    done = np.zeros(n, dtype=bool)
    totals = [0.0] * n
    while not done.all():
        batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
        with torch.no_grad():
            action, state = agent.act(batch, first.copy(), state, False)
        first[:] = False
        for i in np.flatnonzero(~done):
            obs[i], reward, term, trunc, _ = envs[i].step(action[i])
            totals[i] += float(reward)
            done[i] = term or trunc
            played[0] += 1
            played[1] += int(done[i])
        if on_step is not None:
            on_step(*played)
    return totals
