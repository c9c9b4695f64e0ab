"""DFS (Drama's dynamic frequency-based sampling): weights, draws, counters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reverie.replay import DFSSampler, Replay, dfs_logits, dfs_weights, draw_without_replacement
from reverie.replay.dfs import window_slots

N_HAND = np.array([0, 1, 2, 10])
M_HAND = np.array([0, 3, 1, 0])


def test_train_weights_hand_computed():
    w = [math.exp(-0 / 10), math.exp(-1 / 10), math.exp(-2 / 10), math.exp(-10 / 10)]
    expected = np.array(w) / sum(w)
    got = dfs_weights(N_HAND, M_HAND, 10.0, "train")
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_imagine_weights_hand_computed():
    # n − m̃ = [0, −2, 1, 10]; n − m̃ − max(0, n − m̃) = [0, −2, 0, 0]
    w = [1.0, math.exp(-2 / 10), 1.0, 1.0]
    expected = np.array(w) / sum(w)
    got = dfs_weights(N_HAND, M_HAND.astype(float), 10.0, "imagine")
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # with the batch rescaling m̃ = m · 16 / 64: n − m̃ = [0, 0.25, 1.75, 10] -> all 0
    np.testing.assert_allclose(
        dfs_weights(N_HAND, M_HAND * 16 / 64, 10.0, "imagine"), np.full(4, 0.25), rtol=1e-12
    )


def test_weights_stable_for_huge_counters():
    w = dfs_weights(np.array([100_000, 100_010]), np.zeros(2), 10.0, "train")
    np.testing.assert_allclose(w, [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))])


def test_unknown_purpose():
    with pytest.raises(ValueError, match="purpose"):
        dfs_logits(N_HAND, M_HAND, 10.0, "dream")


def test_without_replacement_distinct():
    rng = np.random.Generator(np.random.PCG64(0))
    logits = dfs_logits(np.arange(50) % 7, None, 10.0, "train")
    for k in (1, 10, 49, 50):
        idx = draw_without_replacement(logits, k, rng)
        assert idx.shape == (k,) and len(np.unique(idx)) == k
        assert idx.min() >= 0 and idx.max() < 50


def test_single_draw_frequencies_match_weights():
    rng = np.random.Generator(np.random.PCG64(1))
    p = dfs_weights(N_HAND, M_HAND, 10.0, "train")
    logits = dfs_logits(N_HAND, M_HAND, 10.0, "train")
    draws = 20_000
    counts = np.bincount(
        [draw_without_replacement(logits, 1, rng)[0] for _ in range(draws)], minlength=4
    )
    chi2 = float((((counts - draws * p) ** 2) / (draws * p)).sum())
    assert chi2 < 16.3  # 99.9% quantile of chi-square with 3 degrees of freedom


def test_pair_inclusion_matches_successive_sampling():
    # Drawing 2 without replacement one at a time from the renormalised rest gives
    # P(i in S) = p_i + sum_{j != i} p_j p_i / (1 − p_j), not 2 p_i.
    p = np.array([0.4, 0.3, 0.2, 0.1])
    inclusion = np.array(
        [p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i) for i in range(4)]
    )
    rng = np.random.Generator(np.random.PCG64(2))
    draws = 20_000
    hits = np.zeros(4)
    for _ in range(draws):
        hits[draw_without_replacement(np.log(p), 2, rng)] += 1
    freq = hits / draws
    tol = 4 * np.sqrt(inclusion * (1 - inclusion) / draws)
    assert np.all(np.abs(freq - inclusion) < tol), (freq, inclusion)


def test_sampler_draws_what_the_formula_says_across_wrap():
    """choose() == Gumbel-top-k over the DFS logits of the valid window, then counts update."""
    cap = 12
    sampler = DFSSampler(cap)
    sampler.n[:] = np.arange(cap) % 5
    sampler.m[:] = (np.arange(cap) * 7) % 11
    oldest, count = 9, 8  # the valid window wraps: slots 9, 10, 11, 0, ..., 4
    slots = window_slots(oldest, count, cap)
    np.testing.assert_array_equal(slots, [9, 10, 11, 0, 1, 2, 3, 4])

    sampler.choose(oldest, count, 4, "train", np.random.Generator(np.random.PCG64(9)))
    n0, m0 = sampler.n.copy(), sampler.m.copy()
    assert n0.sum() == (np.arange(cap) % 5).sum() + 4

    rng = np.random.Generator(np.random.PCG64(3))
    got = sampler.choose(oldest, count, 5, "imagine", rng)
    assert sampler.m_scale() == 4 / 5  # m̃ = m · train_batch / imagine_batch of the calls
    ref_rng = np.random.Generator(np.random.PCG64(3))
    logits = dfs_logits(n0[slots], m0[slots] * 4 / 5, 10.0, "imagine")
    expected = slots[draw_without_replacement(logits, 5, ref_rng)]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(sampler.m - m0, np.bincount(got, minlength=cap))
    np.testing.assert_array_equal(sampler.n, n0)  # imagine draws leave n alone

    # batch 16 > 8 valid starts: every valid start exactly twice, no randomness used
    m1, rng_state = sampler.m.copy(), rng.bit_generator.state
    got = sampler.choose(oldest, count, 16, "imagine", rng)
    np.testing.assert_array_equal(np.bincount(got, minlength=cap)[slots], np.full(count, 2))
    np.testing.assert_array_equal(sampler.m - m1, np.bincount(got, minlength=cap))
    assert rng.bit_generator.state == rng_state


def test_train_counts_and_without_replacement_through_replay():
    cap = 40
    replay = Replay(cap, {"action": ((), "int64")}, sampler="dfs", seed=0)
    for t in range(cap):
        replay.add({"action": t, "reward": 0.0, "terminal": False, "first": t == 0})
    valid = cap - 8 + 1
    seen = np.zeros(cap, dtype=np.int64)
    for _ in range(10):
        starts = replay.sample(16, 8, purpose="train")["start"].numpy()
        assert len(np.unique(starts)) == 16  # without replacement within a batch
        np.add.at(seen, starts, 1)
    np.testing.assert_array_equal(replay.sampler.n, seen)
    assert seen[valid:].sum() == 0  # never a start whose window crosses the write head


def test_counters_reset_when_slot_overwritten():
    cap = 10
    replay = Replay(cap, {"action": ((), "int64")}, sampler="dfs", seed=0)
    for t in range(cap):
        replay.add({"action": t, "reward": 0.0, "terminal": False, "first": False})
    for _ in range(5):
        replay.sample(4, 3, purpose="train")
        replay.sample(8, 3, purpose="imagine")
    n, m = replay.sampler.n.copy(), replay.sampler.m.copy()
    assert n[0] > 0 and m[0] > 0 and n[1] > 0
    replay.add({"action": 99, "reward": 0.0, "terminal": False, "first": False})  # slot 0
    assert replay.sampler.n[0] == 0 and replay.sampler.m[0] == 0
    np.testing.assert_array_equal(replay.sampler.n[1:], n[1:])
    np.testing.assert_array_equal(replay.sampler.m[1:], m[1:])


def test_bad_tau():
    with pytest.raises(ValueError, match="tau"):
        Replay(10, {"action": ((), "int64")}, sampler="dfs", tau=0.0)
