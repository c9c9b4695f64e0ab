"""The uniform-random policy: the 'random' score of human-normalised scores, and the cheapest
agent for exercising the driver, replay and run folder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces

from reverie.envs.actions import random_actions
from reverie.rng import generator_state, numpy_generator, set_generator_state


@dataclass
class RandomConfig:
    batch_size: int = 16
    seq_len: int = 16


class RandomAgent:
    """Acts uniformly at random; `update` samples a replay batch and learns nothing."""

    def __init__(self, obs_spec, action_space: spaces.Space, cfg: RandomConfig,
                 device: torch.device, seed: int) -> None:
        self.action_space = action_space
        self.cfg = cfg
        self.rng = numpy_generator(seed)

    def initial_state(self, n: int) -> None:
        return None

    def act(self, obs: dict[str, np.ndarray], first: np.ndarray, state, explore: bool):
        return random_actions(self.action_space, len(first), self.rng), state

    def update(self, replay) -> dict[str, float]:
        batch = replay.sample(self.cfg.batch_size, self.cfg.seq_len, purpose="train")
        return {"random/batch_reward": float(batch["reward"].mean())}

    def state_dict(self) -> dict:
        return {"rng": generator_state(self.rng)}

    def load_state_dict(self, d: dict) -> None:
        set_generator_state(self.rng, d["rng"])
