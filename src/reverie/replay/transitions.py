"""A ring of flat transitions (s, a, r, s', terminal) kept as tensors, for Dyna-style agents.

MBPO keeps two of them: the real transitions and the model's branched rollouts. Sampling is
uniform with replacement over the `size` newest rows, so shrinking `size` (`keep_newest`)
forgets the oldest rows without moving any data — how the model buffer drops rollouts older
than its retention window. Rows are addressed relative to the write pointer ("the k-th newest
row"), so a buffer rebuilt from `state_dict` samples exactly the rows the original would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

Fields = dict[str, tuple[tuple[int, ...], torch.dtype]]


class TransitionRing:
    """`capacity` rows of named fields, each `[capacity, *shape]`, on one device."""

    def __init__(self, capacity: int, fields: Fields, device: torch.device | str = "cpu") -> None:
        if capacity < 1:
            raise ValueError(f"a transition buffer needs capacity >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.device = torch.device(device)
        # torch.empty reserves address space only: pages are touched as rows are written
        self.data = {k: torch.empty((self.capacity, *shape), dtype=dtype, device=self.device)
                     for k, (shape, dtype) in fields.items()}
        self.ptr = 0  # the next row written
        self.size = 0  # how many of the newest rows are valid

    def __len__(self) -> int:
        return self.size

    def add(self, rows: dict[str, Tensor]) -> None:
        """Append `rows: {field: [n, *shape]}` (every field); the oldest rows are overwritten."""
        if set(rows) != set(self.data):
            raise ValueError(f"transition fields {sorted(rows)} != buffer fields "
                             f"{sorted(self.data)}")
        n = next(iter(rows.values())).shape[0]
        if n > self.capacity:  # only the newest `capacity` rows can survive
            rows = {k: v[-self.capacity:] for k, v in rows.items()}
            n = self.capacity
        idx = (self.ptr + torch.arange(n, device=self.device)) % self.capacity
        for k, v in rows.items():
            self.data[k][idx] = v.to(self.device, self.data[k].dtype)
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def keep_newest(self, n: int) -> None:
        """Forget all but the `n` newest rows."""
        self.size = min(self.size, max(0, int(n)))

    def newest_indices(self, k: Tensor) -> Tensor:
        """Storage rows of the k-th newest transitions (k = 0: the last one written): [n]."""
        return (self.ptr - 1 - k) % self.capacity

    def sample(self, n: int, generator: torch.Generator,
               keys: list[str] | None = None) -> dict[str, Tensor]:
        """`n` rows drawn uniformly with replacement: {field: [n, *shape]}."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty transition buffer")
        k = torch.randint(self.size, (n,), generator=generator, device=generator.device)
        idx = self.newest_indices(k.to(self.device))
        return {key: self.data[key][idx] for key in (keys or self.data)}

    def rows(self) -> dict[str, Tensor]:
        """Every valid row, oldest first: {field: [size, *shape]} (a copy)."""
        order = self.newest_indices(torch.arange(self.size - 1, -1, -1, device=self.device))
        return {k: v[order] for k, v in self.data.items()}

    def state_dict(self) -> dict[str, Any]:
        """The valid rows, oldest first (CPU tensors): a checkpoint holds no dead capacity."""
        return {"rows": {k: v.cpu() for k, v in self.rows().items()}, "size": self.size}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        size = int(d["size"])
        if size > self.capacity:
            raise ValueError(f"the saved buffer holds {size} rows but capacity is "
                             f"{self.capacity}; resume with the run's own config")
        self.ptr = self.size = 0
        if size:
            self.add(d["rows"])
