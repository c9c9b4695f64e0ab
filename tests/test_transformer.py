"""Transformer backbone numerics: windowed causal attention, resets, the KV ring buffer."""

from __future__ import annotations

import math

import pytest
import torch

from reverie.sequence import make_backbone
from reverie.sequence.transformer import roll_into_cache, rotary, unroll_cache


def block_reference(block, x, reset):
    """Slow per-token softmax attention of one block from the episode starts.

    x: [B, T, D], reset: [B, T] bool. Token t of row b attends to tokens s with
    max(episode start, t - context + 1) <= s <= t; positions count from the episode start.
    """
    B, T, D = x.shape
    H, dh, C = block.n_heads, block.head_dim, block.context
    start = torch.zeros(B, T, dtype=torch.long)  # episode start of every token
    for b in range(B):
        for t in range(1, T):
            start[b, t] = t if reset[b, t] else start[b, t - 1]
    p = torch.arange(T) - start
    u = block.norm_attn(x)
    if block.positions == "learned":
        u = u + block.pos_emb[p % C]
    q, k, v = block.qkv(u).view(B, T, 3, H, dh).unbind(2)
    if block.positions == "rotary":
        q, k = rotary(q, p), rotary(k, p)
    o = torch.empty(B, T, H, dh)
    for b in range(B):
        for t in range(T):
            lo = max(int(start[b, t]), t - C + 1)
            scores = torch.einsum("hd,shd->hs", q[b, t], k[b, lo : t + 1]) / math.sqrt(dh)
            o[b, t] = torch.einsum("hs,shd->hd", torch.softmax(scores, -1), v[b, lo : t + 1])
    h = x + block.out(o.reshape(B, T, D))
    return h + block.mlp(block.norm_mlp(h))


def model_reference(m, x, reset):
    for block in m.blocks:
        x = block_reference(block, x, reset)
    return m.norm(x)


def steps(m, x, reset=None, state=None):
    state = m.initial_state(x.shape[0]) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        if reset is not None:
            state = m.reset_state(state, reset[:, t])
        y, state = m.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("positions", ["rotary", "learned"])
@pytest.mark.parametrize("context", [3, 8, 40])
def test_forward_equals_slow_reference_with_window_resets_and_handoff(positions, context):
    torch.manual_seed(0)
    m = make_backbone(
        "transformer", d_model=8, n_layers=2, n_heads=2, context=context, positions=positions
    ).eval()
    B, T = 3, 29
    x = torch.randn(B, T, 8)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, 4] = reset[0, 5] = reset[0, 20] = True
    reset[1, 11] = True  # right after the hand-off point below
    reset[2, 0] = True
    with torch.no_grad():
        y_ref = model_reference(m, x, reset)
        y_par, _ = m(x, None, reset)
        # hand-off in the middle: the second call attends to the first call's cache,
        # and with context 3 it runs the chunked path (T + cached > 2 * context)
        y1, s = m(x[:, :11], None, reset[:, :11])
        y2, _ = m(x[:, 11:], s, reset[:, 11:])
    assert (y_par - y_ref).abs().max() < 1e-5
    assert (torch.cat([y1, y2], 1) - y_ref).abs().max() < 1e-5


def test_window_limits_attention():
    """With context c, changing token t changes outputs t..t+c-1 of layer one only."""
    torch.manual_seed(1)
    c = 4
    m = make_backbone("transformer", d_model=8, n_layers=1, n_heads=2, context=c).eval()
    x = torch.randn(1, 20, 8)
    x2 = x.clone()
    x2[0, 6] += torch.randn(8)  # not a constant shift, which LayerNorm ignores
    with torch.no_grad():
        d = (m(x)[0] - m(x2)[0]).abs().amax(-1)[0]
    assert d[:6].max() == 0
    assert (d[6 : 6 + c] > 1e-4).all()
    assert d[6 + c :].max() == 0


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_cache_wraparound_parity_with_step(positions):
    torch.manual_seed(2)
    C = 5
    m = make_backbone(
        "transformer", d_model=8, n_layers=2, n_heads=2, context=C, positions=positions
    ).eval()
    B, T = 2, 3 * C + 2
    x = torch.randn(B, T, 8)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[1, 9] = True
    with torch.no_grad():
        y_par, s_par = m(x, None, reset)
        y_seq, s_seq = steps(m, x, reset)
        # the ring buffers agree slot by slot, not just in outputs
        for a, b in zip(s_par, s_seq):
            assert torch.equal(a["pos"], b["pos"])
            assert (a["k"] - b["k"]).abs().max() < 1e-5
            assert (a["v"] - b["v"]).abs().max() < 1e-5
        # and continue identically, in step and in forward form, past another wrap
        x_more = torch.randn(B, C + 3, 8)
        y_a, _ = steps(m, x_more, state=s_par)
        y_b, _ = m(x_more, s_seq)
    assert s_par[0]["pos"].tolist() == [T, T - 9]
    assert (y_par - y_seq).abs().max() < 1e-5
    assert (y_a - y_b).abs().max() < 1e-5


def test_ring_buffer_roll_unroll_roundtrip():
    C = 4
    chrono = torch.arange(2 * C).view(2, C).float()  # times pos-C .. pos-1 per row
    pos = torch.tensor([6, 9])
    ring = roll_into_cache(chrono, pos)
    # position p sits in slot p % C: row 0 holds positions 2..5 -> slots 2,3,0,1
    assert ring[0].tolist() == [2.0, 3.0, 0.0, 1.0]
    assert torch.equal(unroll_cache(ring, pos, C), chrono)
    assert unroll_cache(ring, pos, 2).tolist() == [[2.0, 3.0], [6.0, 7.0]]


def test_rotary_scores_depend_only_on_relative_offset():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 16, generator=g)  # [H, dh]
    k = torch.randn(2, 16, generator=g)

    def score(pq, pk):
        return (rotary(q, torch.tensor(pq)) * rotary(k, torch.tensor(pk))).sum(-1)

    base = score(7, 3)
    for shift in (1, 50, 12_345, 1_000_000):
        assert (score(7 + shift, 3 + shift) - base).abs().max() < 1e-4
    assert (score(8, 3) - base).abs().max() > 1e-2  # a different offset changes scores
    # and it is a rotation: norms are kept; dh = 2 is multiplication by e^{i p}
    assert torch.allclose(rotary(q, torch.tensor(9)).norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    z = rotary(torch.tensor([[1.0, 0.0]]), torch.tensor(2))
    assert torch.allclose(z, torch.tensor([[math.cos(2), math.sin(2)]]), atol=1e-6)


def test_long_sequence_chunked_path_gradients_are_finite():
    torch.manual_seed(4)
    m = make_backbone("transformer", d_model=8, n_layers=1, n_heads=2, context=4)
    x = torch.randn(2, 30, 8, requires_grad=True)  # 30 is not a multiple of the chunk
    reset = torch.zeros(2, 30, dtype=torch.bool)
    reset[0, 13] = True
    y, _ = m(x, None, reset)
    (y[:, -1] * torch.randn(2, 8)).sum().backward()  # a plain sum is LayerNorm-invariant
    assert torch.isfinite(x.grad).all()
    # the last output reaches back exactly context - 1 tokens in one layer
    assert x.grad[:, :26].abs().max() == 0
    assert (x.grad[:, 26:].abs().amax(-1) > 0).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_heads": 3}, "divisor"),
        ({"context": 0}, "context"),
        ({"positions": "sinusoid"}, "rotary"),
        ({"n_heads": 8}, "even head size"),
        ({"n_heads": 2, "dropout": 1.5}, "dropout"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_backbone("transformer", d_model=8, n_layers=1, **kwargs)
