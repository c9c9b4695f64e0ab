"""A replay of several env streams (a vector run): one ring per stream, windows that never mix
two envs, one sampling law over every stream's valid starts, resume and growth per stream."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from reverie.replay import Replay
from reverie.replay.buffer import grow
from reverie.replay.dfs import DFSSampler, dfs_weights

SPEC = {"vector": ((2,), "float32"), "action": ((), "int64")}


def row(stream: int, t: int) -> dict:
    """Row t of env `stream`: 1000·stream + t in "vector"[0], so a sample names its rows."""
    v = 1000 * stream + t
    return {"vector": np.array([v, -v], np.float32), "action": v, "reward": float(v),
            "terminal": False, "first": t == 0}


def feed(replay: Replay, streams: int, ts) -> None:
    for t in ts:
        for i in range(streams):
            replay.add(row(i, t), stream=i)


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("sampler", ["uniform", "dfs"])
def test_windows_hold_consecutive_rows_of_one_stream(sampler):
    replay = Replay(60, SPEC, streams=3, sampler=sampler, seed=1)
    feed(replay, 3, range(33))  # 20 rows per ring: each stream wrapped, holds rows 13..32
    assert len(replay) == 60 and replay.total_added == 99
    for _ in range(20):
        v = replay.sample(16, 6)["vector"][..., 0].long()
        stream, t = v // 1000, v % 1000
        assert (stream == stream[:, :1]).all()  # one env per window
        np.testing.assert_array_equal(t - t[:, :1], torch.arange(6).expand(16, 6))
        assert t.min() >= 13 and t.max() <= 32  # never across a stream's write head


def test_uniform_draws_every_valid_start_of_every_stream_alike():
    replay = Replay(40, SPEC, streams=2, seed=0)
    feed(replay, 1, range(20))  # stream 0: 20 rows, 17 starts of 4 rows
    for t in range(5):  # stream 1: 5 rows, 2 starts
        replay.add(row(1, t), stream=1)
    starts = np.concatenate([replay.sample(500, 4)["vector"][:, 0, 0].numpy()
                             for _ in range(40)])
    share = np.mean(starts >= 1000)
    assert abs(share - 2 / 19) < 0.02  # 20,000 draws: the standard error is 0.002
    assert set(np.unique(starts[starts >= 1000])) == {1000.0, 1001.0}


def test_dfs_weighs_all_streams_starts_together():
    """choose_from over two streams' starts: the first draw follows DFS's weights over the
    union (not a stream first, then a start within it)."""
    sampler = DFSSampler(20, tau=1.0)
    slots = np.array([0, 1, 2, 3, 10, 11], dtype=np.int64)  # stream 0: 4 starts, stream 1: 2
    n = np.array([3, 0, 1, 2, 0, 5], dtype=np.int64)
    rng, counts = np.random.default_rng(0), np.zeros(6)
    for _ in range(20_000):
        sampler.n[:] = 0
        sampler.n[slots] = n
        counts[np.searchsorted(slots, sampler.choose_from(slots, 1, "train", rng)[0])] += 1
    np.testing.assert_allclose(counts / counts.sum(), dfs_weights(n, n, 1.0, "train"),
                               atol=0.012)


@pytest.mark.parametrize("sampler", ["uniform", "dfs"])
def test_one_stream_samples_as_the_window_form(sampler):
    """choose_from over a ring's window == choose(oldest, count): the one-stream replay's
    samples are those of the window form, draw for draw."""
    make = {"uniform": lambda: Replay(16, SPEC, sampler="uniform").sampler,
            "dfs": lambda: DFSSampler(16, tau=2.0)}[sampler]
    a, b = make(), make()
    ra, rb = np.random.default_rng(4), np.random.default_rng(4)
    window = (11 + np.arange(9)) % 16
    for purpose in ("train", "imagine", "train"):
        np.testing.assert_array_equal(a.choose(11, 9, 5, purpose, ra),
                                      b.choose_from(window, 5, purpose, rb))


@pytest.mark.parametrize("sampler", ["uniform", "dfs"])
def test_resume_of_streams_continues_exactly(tmp_path, sampler):
    original = Replay(30, SPEC, directory=tmp_path, streams=3, sampler=sampler, seed=2)
    feed(original, 3, range(14))  # rings of 10 rows: wrapped
    for _ in range(3):
        original.sample(4, 5, "train")
        original.sample(8, 3, "imagine")
    state = roundtrip(original.state_dict())
    assert state["streams"] == 3 and state["total_added"] == [14, 14, 14]
    expected = [original.sample(4, 5, "train"), original.sample(8, 3, "imagine")]
    feed(original, 3, range(14, 16))  # written after the checkpoint: rolled back on resume
    original.flush()
    resumed = Replay.open(tmp_path, 30, SPEC, streams=3, sampler=sampler, seed=99)
    resumed.load_state_dict(state)
    assert resumed.dropped_on_resume == 6 and len(resumed) == 24  # 2 slots per ring overwritten
    v = resumed.sample(64, 8)["vector"][..., 0].long() % 1000
    assert v.min() >= 6 and v.max() <= 13  # rows 4, 5 of each ring are gone
    again = Replay(30, SPEC, directory=tmp_path / "b", streams=3, sampler=sampler, seed=2)
    feed(again, 3, range(14))
    for _ in range(3):
        again.sample(4, 5, "train")
        again.sample(8, 3, "imagine")
    got = [again.sample(4, 5, "train"), again.sample(8, 3, "imagine")]
    for e, g in zip(expected, got):  # the same seed gives the same samples (determinism)
        assert all(torch.equal(e[k], g[k]) for k in e)


def test_resume_with_another_number_of_streams_names_the_fix(tmp_path):
    replay = Replay(20, SPEC, directory=tmp_path, streams=2)
    feed(replay, 2, range(5))
    state = roundtrip(replay.state_dict())
    replay.flush()
    with pytest.raises(ValueError, match="run.num_envs the run was created with"):
        Replay.open(tmp_path, 20, SPEC, streams=4).load_state_dict(state)
    bad = dict(state, size=[5, 11])  # more rows than a ring of 10 holds
    with pytest.raises(ValueError, match="do not fit 2 stream"):
        Replay.open(tmp_path, 20, SPEC, streams=2).load_state_dict(bad)


@pytest.mark.parametrize("sampler", ["uniform", "dfs"])
def test_grown_streams_sample_as_a_replay_created_that_large(tmp_path, sampler):
    def use(replay, ts):
        feed(replay, 2, ts)
        replay.sample(3, 4, "train")
        replay.sample(5, 2, "imagine")

    small = Replay(20, SPEC, directory=tmp_path / "a", streams=2, sampler=sampler, seed=5)
    large = Replay(48, SPEC, directory=tmp_path / "b", streams=2, sampler=sampler, seed=5)
    for replay in (small, large):
        use(replay, range(10))
    state = grow(tmp_path / "a", SPEC, roundtrip(small.state_dict()), 48)
    del small
    grown = Replay.open(tmp_path / "a", 48, SPEC, streams=2, sampler=sampler, seed=0)
    grown.load_state_dict(state)
    for replay in (grown, large):
        use(replay, range(10, 20))
    for key in grown.data:
        np.testing.assert_array_equal(grown.data[key], large.data[key], err_msg=key)
    a, b = grown.sample(6, 5, "train"), large.sample(6, 5, "train")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stream_bad_input():
    with pytest.raises(ValueError, match="dividing the capacity"):
        Replay(10, SPEC, streams=3)
    replay = Replay(20, SPEC, streams=2)
    with pytest.raises(ValueError, match="stream 2 of a replay of 2"):
        replay.add(row(2, 0), stream=2)
    with pytest.raises(ValueError, match=r"capacity / streams=10"):
        replay.sample(1, 11)
    feed(replay, 2, range(3))
    with pytest.raises(ValueError, match="each env stream of the replay holds at most 3 rows"):
        replay.sample(1, 4)


def test_a_one_stream_checkpoint_of_before_streams_still_loads(tmp_path):
    """Checkpoints written before streams existed: no "streams" key, ints for the counts."""
    replay = Replay(16, SPEC, directory=tmp_path, sampler="dfs", seed=3)
    feed(replay, 1, range(20))
    state = roundtrip(replay.state_dict())
    assert state["total_added"] == 20 and state["size"] == 16  # ints, as before
    del state["streams"]
    expected = replay.sample(4, 5)
    replay.flush()
    resumed = Replay.open(tmp_path, 16, SPEC, sampler="dfs", seed=0)
    resumed.load_state_dict(state)
    got = resumed.sample(4, 5)
    assert resumed.total_added == 20 and all(torch.equal(expected[k], got[k]) for k in got)
