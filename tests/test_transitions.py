"""The flat-transition ring: overwrite order, forgetting the oldest rows, exact round trip."""

from __future__ import annotations

import torch

from reverie.replay.transitions import TransitionRing

FIELDS = {"x": ((2,), torch.float32), "r": ((), torch.float32)}


def rows(values) -> dict[str, torch.Tensor]:
    v = torch.as_tensor(values, dtype=torch.float32)
    return {"x": v[:, None].repeat(1, 2), "r": v}


def test_wraps_around_keeping_the_newest_rows():
    ring = TransitionRing(5, FIELDS)
    ring.add(rows([0, 1, 2]))
    ring.add(rows([3, 4, 5, 6]))  # overwrites 0 and 1
    assert len(ring) == 5
    assert ring.rows()["r"].tolist() == [2, 3, 4, 5, 6]  # oldest first
    ring.add(rows(range(10, 17)))  # more rows than capacity: the last 5 survive
    assert ring.rows()["r"].tolist() == [12, 13, 14, 15, 16]


def test_keep_newest_forgets_old_rows_for_sampling():
    ring = TransitionRing(8, FIELDS)
    ring.add(rows([0, 1, 2, 3, 4]))
    ring.keep_newest(2)
    g = torch.Generator().manual_seed(0)
    assert set(ring.sample(200, g)["r"].tolist()) == {3.0, 4.0}
    ring.add(rows([5]))
    assert ring.rows()["r"].tolist() == [3, 4, 5]


def test_state_dict_round_trip_samples_the_same_rows():
    a = TransitionRing(6, FIELDS)
    a.add(rows(range(9)))  # wrapped: ptr is mid-buffer
    a.keep_newest(4)
    b = TransitionRing(6, FIELDS)
    b.load_state_dict(a.state_dict())
    ga, gb = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(a.sample(50, ga)["x"], b.sample(50, gb)["x"])
    a.add(rows([100, 101, 102]))
    b.add(rows([100, 101, 102]))
    assert torch.equal(a.rows()["r"], b.rows()["r"])
    assert torch.equal(a.sample(50, ga)["r"], b.sample(50, gb)["r"])
