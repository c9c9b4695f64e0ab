"""A test agent that uses every optional driver hook (no replay, `observe`, `updates_due`)
and records what the driver hands it, so driver tests can check the hooks' contracts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reverie.envs.actions import random_actions
from reverie.rng import generator_state, numpy_generator, set_generator_state


@dataclass
class RecordingConfig:
    update_every: int = 8  # env steps (summed over envs) per update


class RecordingAgent:
    uses_replay = False

    def __init__(self, obs_spec, action_space, cfg: RecordingConfig, device, seed: int) -> None:
        self.action_space = action_space
        self.cfg = cfg
        self.rng = numpy_generator(seed)
        self.transitions = []  # every Transition observed (kept in memory for the test)
        self.steps_seen = 0
        self.updated_at = 0
        self.total = 0.0  # a running sum the checkpoint must carry for an exact resume

    def initial_state(self, n: int) -> torch.Tensor:
        return torch.zeros(n)

    def act(self, obs, first, state, explore: bool):
        state = torch.where(torch.as_tensor(first), torch.zeros_like(state), state + 1)
        return random_actions(self.action_space, len(first), self.rng), state

    def observe(self, t) -> None:
        self.transitions.append(t)
        self.steps_seen += len(t.reward)
        self.total += float(np.sum(t.reward))

    def updates_due(self, env_steps: int) -> int:
        due = (env_steps - self.updated_at) // self.cfg.update_every
        self.updated_at += due * self.cfg.update_every
        return due

    def update(self, replay) -> dict[str, float]:
        assert replay is None
        return {"rec/total": self.total, "rec/steps_seen": float(self.steps_seen)}

    def state_dict(self) -> dict:
        return {"rng": generator_state(self.rng), "steps_seen": self.steps_seen,
                "updated_at": self.updated_at, "total": self.total}

    def load_state_dict(self, d: dict) -> None:
        set_generator_state(self.rng, d["rng"])
        self.steps_seen, self.updated_at = int(d["steps_seen"]), int(d["updated_at"])
        self.total = float(d["total"])
