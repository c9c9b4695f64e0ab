"""Facts about the action spaces reverie supports: Discrete, MultiDiscrete and [-1, 1] Box."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces


def random_actions(space: spaces.Space, n: int, rng: np.random.Generator) -> np.ndarray:
    """n uniform actions of a Discrete, MultiDiscrete or [-1, 1] Box space."""
    if isinstance(space, spaces.Discrete):
        return rng.integers(space.n, size=n)
    if isinstance(space, spaces.MultiDiscrete):
        return rng.integers(0, space.nvec, size=(n, *space.nvec.shape)).astype(np.int64)
    return rng.uniform(-1.0, 1.0, (n, *space.shape)).astype(np.float32)


def action_spec(space: spaces.Space) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) one action is stored with."""
    if isinstance(space, spaces.Discrete):
        return (), "int64"
    if isinstance(space, spaces.MultiDiscrete):
        return tuple(space.shape), "int64"
    return tuple(space.shape), "float32"


def check_unit_box(space: spaces.Space, agent: str) -> None:
    """A Box action space must be [-1, 1] (`make_env` rescales every Box to it); ValueError
    naming the fix otherwise. Other spaces pass."""
    if isinstance(space, spaces.Box) and not (np.all(space.low == -1.0)
                                              and np.all(space.high == 1.0)):
        raise ValueError(f"{agent} needs continuous actions in [-1, 1], got [{space.low.min()}, "
                         f"{space.high.max()}]; make the env with reverie.envs.make_env (it "
                         "rescales Box actions) or wrap it in gymnasium.wrappers.RescaleAction("
                         "env, -1.0, 1.0)")
