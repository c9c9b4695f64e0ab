"""Uniform sampling of replay starts (DreamerV3/STORM style), with replacement."""

from __future__ import annotations

from typing import Any

import numpy as np


class UniformSampler:
    """Every valid start slot equally likely, for world-model and imagination batches alike."""

    name = "uniform"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity

    def choose(
        self, oldest: int, count: int, batch_size: int, purpose: str, rng: np.random.Generator
    ) -> np.ndarray:
        """Pick `batch_size` start slots among the `count` valid ones from `oldest`: [B]."""
        return (oldest + rng.integers(0, count, size=batch_size)) % self.capacity

    def choose_from(
        self, slots: np.ndarray, batch_size: int, purpose: str, rng: np.random.Generator
    ) -> np.ndarray:
        """Pick `batch_size` start slots among the valid ones `slots` [N]: [B]."""
        return slots[rng.integers(0, slots.shape[0], size=batch_size)]

    def on_write(self, slot: int) -> None:
        """Uniform sampling keeps no per-slot history."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        pass
