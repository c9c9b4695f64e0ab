"""On-policy rollout storage of a recurrent agent: T steps of N envs plus the memory state at
the start of every training sequence.

Steps are appended one at a time as dicts of [N, ...] tensors and read back stacked as
[T, N, ...]. At t ≡ 0 (mod seq_len) the caller also hands over the memory state the policy
acted from at t (after any episode-start reset): the start state of the training sequence
t .. t+L−1 of each env, so a minibatch of sequences can be unrolled in parallel from
exactly the state acting had (`start_states`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reverie.behavior.ppo import SequenceBatch
from reverie.sequence import State


class Rollout:
    """Storage of one rollout of `length` steps cut into sequences of `seq_len` steps."""

    def __init__(self, length: int, seq_len: int) -> None:
        if seq_len < 1 or length % seq_len:
            raise ValueError(f"rollout length {length} must be a positive multiple of "
                             f"seq_len {seq_len}")
        self.length, self.seq_len = length, seq_len
        self.clear()

    def clear(self) -> None:
        self.steps: list[dict[str, Tensor]] = []
        self.start_memory: list[State] = []
        self.bootstrap: Tensor | None = None  # [N] V(o_T), set with the last step
        self._stacked: State | None = None  # start_memory as leaves [T/L, N, ...]

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def full(self) -> bool:
        return len(self.steps) >= self.length

    @property
    def needs_start_state(self) -> bool:
        """Whether the next step opens a training sequence (its start state is stored)."""
        return len(self.steps) % self.seq_len == 0

    def add(self, step: dict[str, Tensor], start_memory: State | None = None) -> None:
        """Append one step ({name: [N, ...]}); `start_memory` is required exactly when
        `needs_start_state`."""
        if self.full:
            raise RuntimeError(f"the rollout already holds {self.length} steps; update first")
        if (start_memory is not None) != self.needs_start_state:
            raise ValueError(f"step {len(self.steps)}: the memory state is stored at the "
                             f"start of every sequence (t ≡ 0 mod {self.seq_len}) and only "
                             "there")
        if start_memory is not None:
            self.start_memory.append(start_memory)
            self._stacked = None
        self.steps.append(step)

    def tensors(self) -> dict[str, Tensor]:
        """{name: [T, N, ...]} of the steps so far."""
        return {k: torch.stack([s[k] for s in self.steps]) for k in self.steps[0]}

    def start_states(self, batch: SequenceBatch) -> State:
        """The stored memory state before each sequence of `batch`, leaves [B, ...]."""
        if self._stacked is None:
            first = self.start_memory[0]
            self._stacked = tuple(
                {key: torch.stack([s[i][key] for s in self.start_memory]) for key in first[i]}
                for i in range(len(first))
            )
        device = next(iter(self._stacked[0].values())).device
        k = torch.as_tensor(batch.start // self.seq_len, device=device)
        env = torch.as_tensor(batch.env, device=device)
        return tuple({key: v[k, env] for key, v in layer.items()} for layer in self._stacked)

    # -- checkpointing (tensors, lists and dicts only: weights_only loads it) -------------
    def state_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "steps": [dict(s) for s in self.steps],
            "start_memory": [[dict(layer) for layer in s] for s in self.start_memory],
        }
        if self.bootstrap is not None:
            d["bootstrap"] = self.bootstrap
        return d

    def load_state_dict(self, d: dict[str, Any], device: torch.device) -> None:
        self.clear()
        self.steps = [{k: v.to(device) for k, v in s.items()} for s in d["steps"]]
        self.start_memory = [tuple({k: v.to(device) for k, v in layer.items()} for layer in s)
                             for s in d["start_memory"]]
        if "bootstrap" in d:
            self.bootstrap = d["bootstrap"].to(device)
