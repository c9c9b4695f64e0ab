"""Known termination rules of Gymnasium's MuJoCo tasks, as functions of the observation.

MBPO ends its model rollouts with each task's termination rule applied to the predicted next
state (its per-env "static" functions), not with a learned classifier: a rule sees the state
the rollout goes on from, is exact where the task's rule reads only the observation, and
needs no data of the rare terminal steps. `mbpo.termination` names the rule (the presets of
those tasks set it); `learned` keeps the ensemble's termination head for any other env.

Each rule takes observations `[N, O]` in the layout of Gymnasium's v4/v5 tasks with their
default options (the x position, and Ant's and Humanoid's y, left out: observation 0 is the
torso's height) and returns `[N]` bool, True where the task ends the episode. Hopper's
check of |state| < 100 reads the observation, whose velocities Gymnasium clips to ±10, so it
cannot see a velocity past 100 that the env itself would.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _finite(obs: Tensor) -> Tensor:
    return torch.isfinite(obs).all(dim=-1)


def hopper(obs: Tensor) -> Tensor:
    z, angle = obs[:, 0], obs[:, 1]
    healthy = (_finite(obs) & (obs[:, 1:].abs() < 100).all(dim=-1) & (z > 0.7)
               & (angle.abs() < 0.2))
    return ~healthy


def walker2d(obs: Tensor) -> Tensor:
    z, angle = obs[:, 0], obs[:, 1]
    return ~((z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0))


def ant(obs: Tensor) -> Tensor:
    z = obs[:, 0]
    return ~(_finite(obs) & (z >= 0.2) & (z <= 1.0))


def humanoid(obs: Tensor) -> Tensor:
    z = obs[:, 0]
    return ~((z > 1.0) & (z < 2.0))


def inverted_pendulum(obs: Tensor) -> Tensor:
    return ~_finite(obs) | (obs[:, 1].abs() > 0.2)


# rule name -> (the rule, the Gymnasium ids it is the rule of, without the version)
RULES: dict[str, tuple[Callable[[Tensor], Tensor], str]] = {
    "hopper": (hopper, "Hopper"),
    "walker2d": (walker2d, "Walker2d"),
    "ant": (ant, "Ant"),
    "humanoid": (humanoid, "Humanoid"),
    "inverted_pendulum": (inverted_pendulum, "InvertedPendulum"),
}
LEARNED = "learned"
CHOICES = (LEARNED, *RULES)


def rule_of_env(env_id: str) -> str | None:
    """The rule of a Gymnasium MuJoCo id (`Hopper-v5` -> `hopper`), None for other envs."""
    name = env_id.rsplit("-v", 1)[0]
    return next((rule for rule, (_, task) in RULES.items() if task == name), None)
