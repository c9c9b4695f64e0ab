"""Sequence replay: contiguous windows, reset flags, wrap-around, memmap persistence, resume."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from reverie.replay import Replay

# Row t stores t in "vector"[0], "action" and "reward", so every sample says which rows it read.
SPEC = {"vector": ((2,), "float32"), "action": ((), "int64")}
IMAGE_SPEC = {"image": ((8, 8, 3), "uint8"), "action": ((3,), "float32")}


def row(t: int, episode: int = 7) -> dict:
    return {
        "vector": np.array([t, -t], dtype=np.float32),
        "action": t,
        "reward": float(t),
        "terminal": t % episode == episode - 1,
        "first": t % episode == 0,
    }


def image_row(t: int) -> dict:
    rng = np.random.default_rng(t)
    return {
        "image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
        "action": np.full(3, t / 100, dtype=np.float32),
        "reward": 0.5,
        "terminal": False,
        "first": t == 0,
    }


def filled(n: int, capacity: int, **kwargs) -> Replay:
    replay = Replay(capacity, SPEC, **kwargs)
    for t in range(n):
        replay.add(row(t))
    return replay


def roundtrip(state: dict) -> dict:
    """What a checkpoint gives back: torch.save then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_sequences_are_contiguous_and_correct():
    replay = filled(50, 100)
    batch = replay.sample(32, 10)
    t = batch["vector"][..., 0].long()
    assert batch["vector"].shape == (32, 10, 2) and batch["action"].shape == (32, 10)
    assert batch["vector"].dtype == torch.float32 and batch["action"].dtype == torch.int64
    # before any wrap, slot s holds row s
    np.testing.assert_array_equal(t[:, 0], batch["start"])
    np.testing.assert_array_equal(t, batch["start"][:, None] + torch.arange(10))
    np.testing.assert_array_equal(batch["action"], t)
    np.testing.assert_array_equal(batch["reward"], t.float())
    np.testing.assert_array_equal(batch["vector"][..., 1], -t.float())
    assert batch["start"].dtype == torch.int64 and t.max() <= 49


def test_reset_and_terminal_flags_mark_episodes():
    replay = filled(60, 64)
    batch = replay.sample(64, 16)
    t = batch["vector"][..., 0].long()
    assert batch["reset"].dtype == torch.bool and batch["terminal"].dtype == torch.bool
    np.testing.assert_array_equal(batch["reset"], t % 7 == 0)
    np.testing.assert_array_equal(batch["terminal"], t % 7 == 6)
    assert batch["reset"][:, 1:].any()  # windows do cross episode boundaries


@pytest.mark.parametrize("sampler", ["uniform", "dfs"])
def test_never_crosses_write_head_after_wrap(sampler):
    capacity, seq_len = 10, 4
    replay = filled(23, capacity, sampler=sampler)  # rows 13..22 live; head at slot 3
    assert len(replay) == 10 and replay.total_added == 23
    starts = set()
    for _ in range(50):
        batch = replay.sample(5, seq_len, purpose="train")
        t = batch["vector"][..., 0].long()
        assert t.min() >= 13 and t.max() <= 22
        np.testing.assert_array_equal(t, t[:, :1] + torch.arange(seq_len))
        np.testing.assert_array_equal(
            t % capacity, (batch["start"][:, None] + torch.arange(4)) % 10
        )
        starts.update(batch["start"].tolist())
    # the 7 valid starts are the slots of rows 13..19, and all of them get drawn
    assert starts == {(13 + k) % capacity for k in range(capacity - seq_len + 1)}


def test_uint8_images_preserved():
    replay = Replay(20, IMAGE_SPEC)
    for t in range(20):
        replay.add(image_row(t))
    batch = replay.sample(6, 5)
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (6, 5, 8, 8, 3)
    for b, s in enumerate(batch["start"].tolist()):
        for k in range(5):
            np.testing.assert_array_equal(batch["image"][b, k].numpy(), image_row(s + k)["image"])
    np.testing.assert_allclose(
        batch["action"][..., 0], (batch["start"][:, None] + torch.arange(5)) / 100
    )


def test_same_seed_same_samples_and_seed_matters():
    a, b, c = filled(40, 40, seed=5), filled(40, 40, seed=5), filled(40, 40, seed=6)
    sa, sb, sc = a.sample(8, 4), b.sample(8, 4), c.sample(8, 4)
    assert torch.equal(sa["start"], sb["start"]) and not torch.equal(sa["start"], sc["start"])


@pytest.mark.parametrize("sampler", ["uniform", "dfs"])
def test_memmap_resume_continues_exactly(tmp_path, sampler):
    capacity = 16
    original = Replay(capacity, IMAGE_SPEC, directory=tmp_path, sampler=sampler, seed=3)
    for t in range(21):  # wraps once
        original.add(image_row(t))
    for _ in range(3):
        original.sample(4, 5, purpose="train")
        original.sample(8, 3, purpose="imagine")
    state = roundtrip(original.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "_stamp.npy",
        "action.npy",
        "first.npy",
        "image.npy",
        "reward.npy",
        "terminal.npy",
        "truncated.npy",
    ]
    expected = [original.sample(4, 5, "train"), original.sample(8, 3, "imagine")]
    original.flush()

    resumed = Replay.open(tmp_path, capacity, IMAGE_SPEC, sampler=sampler, seed=999)
    resumed.load_state_dict(state)
    assert len(resumed) == 16 and resumed.total_added == 21 and resumed.dropped_on_resume == 0
    got = [resumed.sample(4, 5, "train"), resumed.sample(8, 3, "imagine")]
    for e, g in zip(expected, got):
        assert e.keys() == g.keys()
        for key in e:
            assert torch.equal(e[key], g[key]), key
    if sampler == "dfs":
        np.testing.assert_array_equal(resumed.sampler.n, original.sampler.n)
        np.testing.assert_array_equal(resumed.sampler.m, original.sampler.m)


def test_resume_rolls_back_rows_written_after_checkpoint(tmp_path):
    capacity = 10
    original = filled(25, capacity, directory=tmp_path)  # rows 15..24, head at slot 5
    state = roundtrip(original.state_dict())
    for t in range(25, 28):  # after the checkpoint: rows 25..27 overwrite slots 5, 6, 7
        original.add(row(t))
    original.flush()

    resumed = Replay.open(tmp_path, capacity, SPEC)
    resumed.load_state_dict(state)
    # slots 5..7 no longer hold rows 15..17, so only rows 18..24 are sampled
    assert resumed.dropped_on_resume == 3 and len(resumed) == 7 and resumed.pos == 5
    t = resumed.sample(64, 3)["vector"][..., 0]
    assert t.min() >= 18 and t.max() <= 24
    for k in range(25, 30):  # the resumed run writes rows 25.. again at slots 5..
        resumed.add(row(k))
    assert len(resumed) == 10 and resumed.total_added == 30
    t = resumed.sample(64, 10)["vector"][..., 0].long()
    np.testing.assert_array_equal(t, torch.arange(20, 30).expand(64, 10))


def test_state_dict_loads_with_weights_only():
    state = roundtrip(filled(30, 20, sampler="dfs").state_dict())
    assert isinstance(state["sampler"]["n"], torch.Tensor) and len(state["rng"]) == 10


def test_mismatched_or_damaged_files(tmp_path):
    filled(12, 10, directory=tmp_path).flush()
    with pytest.raises(ValueError, match="holds float32 \\(10, 2\\) but the replay needs"):
        Replay.open(tmp_path, 10, {"vector": ((3,), "float32"), "action": ((), "int64")})
    with pytest.raises(ValueError, match="holds int64 \\(10,\\) but the replay needs float32"):
        Replay.open(tmp_path, 10, {"vector": ((2,), "float32"), "action": ((), "float32")})
    with pytest.raises(ValueError, match="needs float32 \\(20, 2\\)"):
        Replay.open(tmp_path, 20, SPEC)
    with pytest.raises(ValueError, match="already holds replay files"):
        Replay(10, SPEC, directory=tmp_path)
    path = tmp_path / "reward.npy"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        Replay.open(tmp_path, 10, SPEC)
    path.unlink()
    with pytest.raises(ValueError, match="reward.npy is missing"):
        Replay.open(tmp_path, 10, SPEC)


def test_checkpoint_not_matching_storage():
    state = filled(12, 10).state_dict()
    with pytest.raises(ValueError, match="in-memory replay cannot restore"):
        Replay(10, SPEC).load_state_dict(state)
    with pytest.raises(ValueError, match="capacity"):
        Replay(11, SPEC).load_state_dict(state)
    with pytest.raises(ValueError, match="sampler"):
        Replay(10, SPEC, sampler="dfs").load_state_dict(state)


def test_almost_empty_buffer():
    replay = filled(3, 10)
    with pytest.raises(ValueError, match="seq_len=8 needs at least 8"):
        replay.sample(4, 8)
    assert replay.sample(4, 3)["vector"].shape == (4, 3, 2)  # exactly one valid start
    with pytest.raises(ValueError, match="purpose"):
        replay.sample(4, 3, purpose="eval")


def test_bad_input():
    with pytest.raises(ValueError, match="did you mean 'dfs'"):
        Replay(10, SPEC, sampler="dsf")
    with pytest.raises(ValueError, match="reserved"):
        Replay(10, {**SPEC, "reward": ((), "float32")})
    with pytest.raises(ValueError, match="'action' entry"):
        Replay(10, {"vector": ((2,), "float32")})
    replay = Replay(10, IMAGE_SPEC)
    with pytest.raises(ValueError, match="lacks \\['first'\\]"):
        replay.add({k: v for k, v in image_row(0).items() if k != "first"})
    with pytest.raises(ValueError, match="uint8"):
        replay.add({**image_row(0), "image": np.zeros((8, 8, 3), np.float32)})
    with pytest.raises(ValueError, match="shape"):
        replay.add({**image_row(0), "action": np.zeros(2, np.float32)})
    assert len(replay) == 0


@pytest.mark.parametrize("sampler", ["uniform", "dfs"])
def test_grown_replay_samples_as_one_created_that_large(tmp_path, sampler):
    """grow(): 12 rows in a replay of 12, grown to 32, then 8 more rows: the same rows,
    counters and samples as a replay created with 32 rows."""
    from reverie.replay.buffer import grow

    def feed(replay, ts):
        for t in ts:
            replay.add(image_row(t))
            if t >= 4 and t % 3 == 2:
                replay.sample(2, 4, purpose="train")
                replay.sample(3, 2, purpose="imagine")

    small = Replay(12, IMAGE_SPEC, directory=tmp_path / "a", sampler=sampler, seed=5)
    large = Replay(32, IMAGE_SPEC, directory=tmp_path / "b", sampler=sampler, seed=5)
    feed(small, range(12))
    feed(large, range(12))
    state = grow(tmp_path / "a", IMAGE_SPEC, roundtrip(small.state_dict()), 32)
    del small
    grown = Replay.open(tmp_path / "a", 32, IMAGE_SPEC, sampler=sampler, seed=0)
    grown.load_state_dict(state)
    feed(grown, range(12, 20))
    feed(large, range(12, 20))
    for key in grown.data:
        np.testing.assert_array_equal(grown.data[key], large.data[key], err_msg=key)
    a, b = grown.sample(6, 5, "train"), large.sample(6, 5, "train")
    assert all(torch.equal(a[k], b[k]) for k in a)
    if sampler == "dfs":
        np.testing.assert_array_equal(grown.sampler.n, large.sampler.n)


def test_growing_a_wrapped_replay_keeps_its_newest_rows_in_order(tmp_path):
    from reverie.replay.buffer import grow

    small = filled(13, 5, directory=tmp_path, sampler="dfs")  # rows 8..12, head at slot 3
    state = grow(tmp_path, SPEC, roundtrip(small.state_dict()), 12)
    del small
    grown = Replay.open(tmp_path, 12, SPEC, sampler="dfs")
    grown.load_state_dict(state)
    assert len(grown) == 5 and grown.total_added == 13 and grown.pos == 1
    stamps = np.asarray(grown.data["_stamp"])
    assert stamps.tolist() == [12, -1, -1, -1, -1, -1, -1, -1, 8, 9, 10, 11]
    t = grown.sample(32, 5)["vector"][..., 0].long()  # the one window: rows 8..12
    np.testing.assert_array_equal(t, torch.arange(8, 13).expand(32, 5))


def test_an_interrupted_growth_is_finished_by_the_next(tmp_path, monkeypatch):
    """Each field file is replaced whole; a growth that dies between files leaves some at
    the new size, and growing again from the same checkpoint completes it identically."""
    import os

    from reverie.replay import buffer
    from reverie.replay.buffer import grow

    for d in ("a", "b"):
        filled(9, 9, directory=tmp_path / d).flush()
    state = roundtrip(filled(9, 9).state_dict())
    real, calls = os.replace, []

    def dies_on_the_third(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("killed")
        real(src, dst)

    monkeypatch.setattr(buffer.os, "replace", dies_on_the_third)
    with pytest.raises(OSError):
        grow(tmp_path / "a", SPEC, state, 20)
    monkeypatch.undo()
    assert {buffer.file_rows(p) for p in (tmp_path / "a").glob("*.npy")} == {9, 20}
    grow(tmp_path / "a", SPEC, state, 20)
    grow(tmp_path / "b", SPEC, state, 20)
    for p in sorted((tmp_path / "b").glob("*.npy")):
        np.testing.assert_array_equal(np.load(p), np.load(tmp_path / "a" / p.name), p.name)
