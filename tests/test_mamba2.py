"""Mamba-2 numerics: the chunked SSD against a slow, obviously-correct loop over time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reverie.sequence import make_backbone
from reverie.sequence.base import causal_conv
from reverie.sequence.mamba2 import Mamba2Block, build
from reverie.sequence.ssd import reset_masks, segsum, ssd_chunked


def reference_block(blk: Mamba2Block, x, state, reset):
    """One residual block, written as the paper's recurrence, one time step at a time.

    x: [B, T, D]; state: {"conv": [B, K-1, C], "ssm": [B, H, P, N]}; reset: [B, T] bool.
    """
    B, T, D = x.shape
    H, P, N, K = blk.n_heads, blk.head_dim, blk.d_state, blk.d_conv
    d_in = blk.d_inner
    conv_buf = state["conv"].clone()  # the last K-1 conv inputs
    h = state["ssm"].clone()
    A = -torch.exp(blk.A_log)
    ys = []
    for t in range(T):
        xt = x[:, t]
        if reset is not None:
            keep = (~reset[:, t]).to(x.dtype)
            conv_buf = conv_buf * keep[:, None, None]
            h = h * keep[:, None, None, None]
        u = xt / torch.sqrt(xt.pow(2).mean(-1, keepdim=True) + 1e-5) * blk.norm_weight
        proj = u @ blk.in_proj.weight.T
        z, xbc, dt_raw = proj[:, :d_in], proj[:, d_in:-H], proj[:, -H:]
        window = torch.cat([conv_buf, xbc[:, None]], 1)  # [B, K, C]
        conv_buf = window[:, 1:]
        c = F.silu(sum(window[:, k] * blk.conv_weight[:, k] for k in range(K)) + blk.conv_bias)
        xs, Bt, Ct = c[:, :d_in].view(B, H, P), c[:, d_in : d_in + N], c[:, d_in + N :]
        dt = F.softplus(dt_raw + blk.dt_bias)  # [B, H]
        a = torch.exp(dt * A)
        for hd in range(H):
            h[:, hd] = a[:, hd, None, None] * h[:, hd] + (
                dt[:, hd, None, None] * xs[:, hd, :, None] * Bt[:, None, :]
            )
        y = torch.einsum("bhpn,bn->bhp", h, Ct) + blk.D[:, None] * xs
        g = y.reshape(B, d_in) * F.silu(z)
        g = g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5) * blk.out_norm_weight
        ys.append(xt + g @ blk.out_proj.weight.T)
    return torch.stack(ys, 1), {"conv": conv_buf, "ssm": h}


def make_block(chunk_size: int, seed: int = 0) -> Mamba2Block:
    torch.manual_seed(seed)
    m = build(12, 1, d_state=5, expand=2, head_dim=6, chunk_size=chunk_size, d_conv=4)
    blk = m.blocks[0].double()
    with torch.no_grad():  # non-trivial gains so a dropped parameter would show
        for p in (blk.norm_weight, blk.out_norm_weight, blk.D):
            p.uniform_(0.5, 1.5)
    return blk


@pytest.mark.parametrize("chunk_size", [1, 3, 8])
@pytest.mark.parametrize("with_reset", [False, True])
def test_chunked_forward_matches_time_loop(chunk_size, with_reset):
    blk = make_block(chunk_size)
    g = torch.Generator().manual_seed(chunk_size)
    B, T = 3, 19  # T is not a multiple of any chunk size above 1
    x = torch.randn(B, T, 12, generator=g, dtype=torch.float64)
    state = {k: torch.randn(v.shape, generator=g, dtype=torch.float64)
             for k, v in blk.initial_state(B, x.device, x.dtype).items()}
    reset = None
    if with_reset:
        reset = torch.zeros(B, T, dtype=torch.bool)
        reset[0, [0, 7, 8]] = True  # reset at t=0 and two in a row
        reset[1, chunk_size * 2 % T] = True  # at a chunk boundary
        reset[2, 18] = True  # last step
    with torch.no_grad():
        y, s = blk(x, state, reset)
        y_ref, s_ref = reference_block(blk, x, state, reset)
    assert (y - y_ref).abs().max().item() < 1e-10
    for k in s_ref:
        assert (s[k] - s_ref[k]).abs().max().item() < 1e-10, k


def test_step_matches_time_loop():
    blk = make_block(4)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, 12, generator=g, dtype=torch.float64)
    state = {k: torch.randn(v.shape, generator=g, dtype=torch.float64)
             for k, v in blk.initial_state(2, x.device, x.dtype).items()}
    with torch.no_grad():
        y_ref, s_ref = reference_block(blk, x, state, None)
        s, ys = state, []
        for t in range(7):
            y, s = blk.step(x[:, t], s)
            ys.append(y)
    assert (torch.stack(ys, 1) - y_ref).abs().max().item() < 1e-10
    assert (s["ssm"] - s_ref["ssm"]).abs().max().item() < 1e-10


def test_state_influences_output_and_reset_cuts_it():
    blk = make_block(4)
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    zero = blk.initial_state(2, x.device, x.dtype)
    warm = {k: torch.randn_like(v) for k, v in zero.items()}
    reset = torch.zeros(2, 9, dtype=torch.bool)
    reset[:, 5] = True
    with torch.no_grad():
        y0, _ = blk(x, zero, reset)
        y1, _ = blk(x, warm, reset)
    assert (y0[:, :5] - y1[:, :5]).abs().max() > 1e-3
    assert (y0[:, 5:] - y1[:, 5:]).abs().max() < 1e-12


def test_segsum_by_hand():
    dA = torch.tensor([-1.0, -2.0, -3.0])
    s = segsum(dA.cumsum(0))
    expected = torch.tensor([[0.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [-5.0, -3.0, 0.0]])
    assert torch.equal(s, expected)
    # exp(segsum) is the decay from j to i: a_{j+1} ... a_i
    assert torch.allclose(torch.exp(s)[2, 0], torch.exp(torch.tensor(-5.0)))


def test_reset_masks_by_hand():
    reset = torch.tensor([[False, True, False, False, False, False, True, False]])
    same, tail, head = reset_masks(reset, 4)
    # chunk 0: segments {0}, {1, 2, 3}; chunk 1: {4, 5}, {6, 7}
    assert same[0, 0].tolist() == [[1, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]]
    assert same[0, 1].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert tail[0].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1]]
    assert head[0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0]]


def test_ssd_core_matches_recurrence_with_strong_decay():
    """Decays that underflow to exactly 0 (dt·A << -100) still give exact, finite results."""
    g = torch.Generator().manual_seed(3)
    Bt, T, H, P, N = 2, 11, 3, 4, 5
    x = torch.randn(Bt, T, H, P, generator=g, dtype=torch.float64)
    dt = torch.rand(Bt, T, H, generator=g, dtype=torch.float64) * 0.5
    dt[0, 4] = 300.0  # exp(300 * A) == 0 in float64 for A <= -3
    A = -torch.tensor([3.0, 1.0, 0.1], dtype=torch.float64)
    B = torch.randn(Bt, T, N, generator=g, dtype=torch.float64)
    C = torch.randn(Bt, T, N, generator=g, dtype=torch.float64)
    h0 = torch.randn(Bt, H, P, N, generator=g, dtype=torch.float64)
    reset = torch.zeros(Bt, T, dtype=torch.bool)
    reset[1, 6] = True
    y, hT = ssd_chunked(x, dt, A, B, C, 4, h0, reset)
    h, ys = h0.clone(), []
    for t in range(T):
        h = h * (~reset[:, t]).to(h.dtype)[:, None, None, None]
        a = torch.exp(dt[:, t] * A)[:, :, None, None]
        h = a * h + dt[:, t, :, None, None] * x[:, t, :, :, None] * B[:, t, None, None, :]
        ys.append(torch.einsum("bhpn,bn->bhp", h, C[:, t]))
    assert torch.allclose(y, torch.stack(ys, 1), atol=1e-10)
    assert torch.allclose(hT, h, atol=1e-10)


def test_gradients_finite_with_resets_and_underflowing_decay():
    m = make_backbone("mamba2", d_model=16, n_layers=2, d_state=8, head_dim=8, chunk_size=8)
    with torch.no_grad():
        m.blocks[0].A_log.fill_(6.0)  # A = -403: decays underflow to 0 within a step
    x = torch.randn(3, 37, 16, requires_grad=True)
    reset = torch.zeros(3, 37, dtype=torch.bool)
    reset[0, [0, 8, 9, 36]] = True
    reset[2, 13] = True
    y, _ = m(x, None, reset)
    y.pow(2).mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_causal_conv_with_prefix_and_resets_matches_loop():
    g = torch.Generator().manual_seed(1)
    B, T, C, K = 2, 6, 3, 4
    x, w = torch.randn(B, T, C, generator=g), torch.randn(C, K, generator=g)
    bias, prefix = torch.randn(C, generator=g), torch.randn(B, K - 1, C, generator=g)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[1, 2] = True
    y, tail = causal_conv(x, w, bias, prefix, reset)
    buf, ys = prefix.clone(), []
    for t in range(T):
        buf = buf * (~reset[:, t]).float()[:, None, None]
        win = torch.cat([buf, x[:, t, None]], 1)
        ys.append((win * w.T).sum(1) + bias)
        buf = win[:, 1:]
    assert torch.allclose(y, torch.stack(ys, 1), atol=1e-6)
    assert torch.allclose(tail, buf, atol=1e-6)



def test_tap_gradients_match_the_double_sum():
    """The conv's weight gradient in cache-sized blocks (a short last block included) is
    out[c, k] = sum over b, t of g[b, t, c] xp[b, t + k, c]."""
    from reverie.sequence.base import tap_gradients

    g = torch.Generator().manual_seed(2)
    for B, T, C, K, rows in [(3, 7, 5, 4, 64), (1, 1, 2, 4, 64), (16, 37, 6, 4, 64),
                             (2, 9, 3, 2, 4)]:
        grad = torch.randn(B, T, C, generator=g, dtype=torch.float64)
        xp = torch.randn(B, T + K - 1, C, generator=g, dtype=torch.float64)
        want = torch.zeros(C, K, dtype=torch.float64)
        for b in range(B):
            for t in range(T):
                for k in range(K):
                    want[:, k] += grad[b, t] * xp[b, t + k]
        got = tap_gradients(grad, xp, rows)
        assert torch.allclose(got, want, atol=1e-12), (B, T, C, K)
        assert got.stride() == (1, C)  # column-major like the conv weights


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (1, 1, 4, 4), (20, 9, 3, 2)])
def test_causal_conv_gradients_without_resets(shape):
    """The reset-free path's own backward (oneDNN's input gradient, `tap_gradients` for the
    weights) passes gradcheck for x, the prefix, the weights and the bias, and in float32
    gives what autograd through the plain conv gives."""
    from reverie.sequence.base import _depthwise

    B, T, C, K = shape
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(B, T, C, generator=g), torch.randn(B, K - 1, C, generator=g),
            torch.randn(C, K, generator=g).t().contiguous().t(), torch.randn(C, generator=g)]
    f64 = [a.double().requires_grad_() for a in args]
    assert torch.autograd.gradcheck(
        lambda x, pre, w, b: causal_conv(x, w, b, pre, None)[0], tuple(f64))
    f32 = [a.clone().requires_grad_() for a in args]
    x, pre, w, b = f32
    y = causal_conv(x, w, b, pre, None)[0]
    assert y.grad_fn.name().endswith("_DepthwiseConvBackward")  # the path under test
    bf16 = [a.to(torch.bfloat16).requires_grad_() for a in args]
    y16 = causal_conv(bf16[0], bf16[2], bf16[3], bf16[1], None)[0]
    assert not y16.grad_fn.name().endswith("_DepthwiseConvBackward")  # sums would round
    cot = torch.randn(y.shape, generator=g)
    got = torch.autograd.grad(y, f32, cot)
    want = torch.autograd.grad(_depthwise(torch.cat([pre, x], 1), w, b), f32, cot)
    for a, c in zip(got, want):
        assert torch.allclose(a, c, atol=1e-5, rtol=1e-5)

@pytest.mark.parametrize("gated", [False, True])
def test_fused_rms_norm_matches_the_composite_and_passes_gradcheck(gated):
    """`rms_normalize`'s hand-written backward (eager float32/float64) against the closed
    form mean-square norm by autograd, in float64 by gradcheck and in float32 on a
    block-sized tensor; bf16 and compiled graphs take the composite form."""
    from reverie.sequence.mamba2 import rms_normalize

    g = torch.Generator().manual_seed(7)

    def reference(y, z):
        v = y if z is None else F.silu(z) * y
        return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5)

    def inputs(shape, dtype):
        y = torch.randn(shape, generator=g).to(dtype).requires_grad_()
        z = torch.randn(shape, generator=g).to(dtype).requires_grad_() if gated else None
        return y, z

    y, z = inputs((3, 5, 7), torch.float64)
    assert torch.autograd.gradcheck(lambda y, z: rms_normalize(y, z), (y, z))
    y, z = inputs((4, 33, 96), torch.float32)
    out = rms_normalize(y, z)
    assert out.grad_fn.name().endswith("_FusedRMSNormBackward")  # the path under test
    want = reference(y, z)
    assert torch.allclose(out, want, atol=1e-5, rtol=1e-5)
    leaves = (y,) if z is None else (y, z)
    cot = torch.randn(out.shape, generator=g)
    for a, c in zip(torch.autograd.grad(out, leaves, cot), torch.autograd.grad(want, leaves, cot)):
        assert torch.allclose(a, c, atol=1e-4, rtol=1e-4)
    if gated:  # the gate alone needing a gradient
        y2, z2 = y.detach(), z.detach().requires_grad_()
        got = torch.autograd.grad(rms_normalize(y2, z2), z2, cot)[0]
        assert torch.allclose(got, torch.autograd.grad(reference(y2, z2), z2, cot)[0],
                              atol=1e-4, rtol=1e-4)
    y16, z16 = inputs((2, 3, 8), torch.bfloat16)
    assert not rms_normalize(y16, z16).grad_fn.name().endswith("_FusedRMSNormBackward")


def test_bad_options_name_the_fix():
    with pytest.raises(ValueError, match=r"head_dim.*use one of \[1, 2, 4, 8, 16, 32\]"):
        make_backbone("mamba2", d_model=16, head_dim=12)
    with pytest.raises(ValueError, match="chunk_size"):
        make_backbone("mamba2", d_model=16, head_dim=8, chunk_size=0)
    with pytest.raises(ValueError, match="d_state"):
        make_backbone("mamba2", d_model=16, head_dim=8, d_state=-1)


def test_defaults_and_name():
    m = make_backbone("mamba2", d_model=64, n_layers=1)
    blk = m.blocks[0]
    assert m.name == "mamba2"
    assert (blk.d_state, blk.d_inner, blk.head_dim, blk.n_heads, blk.d_conv) == (16, 128, 64, 2, 4)
    s = m.initial_state(3)[0]
    assert s["conv"].shape == (3, 3, 128 + 32) and s["ssm"].shape == (3, 2, 64, 16)


@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_conv_weight_is_column_major_and_stays_so(name):
    """The conv weight is stored column-major (each tap's weights contiguous, for the
    compiled step; bench/conv_layout.py); it computes what a row-major copy does, and keeps
    its layout through an optimiser step and a state-dict round trip."""
    import copy
    import io

    torch.manual_seed(0)
    kwargs = {"head_dim": 8} if name == "mamba2" else {}
    model = make_backbone(name, d_model=16, n_layers=1, **kwargs)
    (block,) = [m for m in model.modules() if hasattr(m, "conv_weight")]
    C, K = block.conv_weight.shape
    assert block.conv_weight.stride() == (1, C)
    row = copy.deepcopy(model)
    (row_block,) = [m for m in row.modules() if hasattr(m, "conv_weight")]
    row_block.conv_weight = torch.nn.Parameter(row_block.conv_weight.detach().contiguous())
    x = torch.randn(3, 5, 16)
    reset = torch.zeros(3, 5, dtype=torch.bool)
    reset[1, 2] = True
    outs = [(m(x, m.initial_state(3), reset)[0], m.step(x[:, 0], m.initial_state(3))[0])
            for m in (model, row)]  # the same function, value for value, in both paths
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(x, model.initial_state(3), reset)[0].square().mean().backward()
    opt.step()
    assert block.conv_weight.stride() == (1, C)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_backbone(name, d_model=16, n_layers=1, **kwargs)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    (fresh_block,) = [m for m in fresh.modules() if hasattr(m, "conv_weight")]
    assert fresh_block.conv_weight.stride() == (1, C)
    assert torch.equal(fresh_block.conv_weight, block.conv_weight)


def _ssd_operands(T: int, h0: bool = True, D: bool = True, reset: bool = True, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    Bt, H, P, N = 2, 3, 4, 5
    f64 = dict(generator=g, dtype=torch.float64)
    ops = [torch.randn(Bt, T, H, P, **f64), torch.rand(Bt, T, H, **f64) * 0.5,
           -torch.rand(H, **f64) - 0.2, torch.randn(Bt, T, N, **f64),
           torch.randn(Bt, T, N, **f64), torch.randn(Bt, H, P, N, **f64) if h0 else None,
           torch.rand(H, **f64) + 0.5 if D else None]
    resets = None
    if reset:
        resets = torch.zeros(Bt, T, dtype=torch.bool)
        resets[0, [t for t in (0, 5, 6) if t < T]] = True
        resets[1, min(9, T - 1)] = True
    return [t if t is None else t.requires_grad_() for t in ops], resets


@pytest.mark.parametrize("T,h0,D,reset", [(13, True, True, True), (13, True, True, False),
                                          (16, False, True, True), (8, True, False, False),
                                          (3, False, False, True)])
def test_ssd_hand_written_backward_matches_autograd_of_its_forward(T, h0, D, reset):
    """`_SSD`'s backward (eager float) against autograd through the same forward
    (`_forward`, the composite form that compiled graphs and autocast run): the gradient of
    every operand, padding (T not a multiple of Q = 4), resets, h0 and D each on and off, and
    a loss on both y and the final state."""
    from reverie.sequence import ssd

    (x, dt, A, B, C, h, Dv), resets = _ssd_operands(T, h0, D, reset)
    g = torch.Generator().manual_seed(2)
    gy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    gh = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    inputs = [t for t in (x, dt, A, B, C, h, Dv) if t is not None]

    y, hT = ssd_chunked(x, dt, A, B, C, 4, h, resets, Dv)
    # the hand-written backward ran (y is its output, sliced back to T)
    assert "_SSDBackward" in {type(f).__name__ for f, _ in y.grad_fn.next_functions if f}
    grads = torch.autograd.grad((y * gy).sum() + (hT * gh).sum(), inputs)

    pad = (-T) % 4
    px = [F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad)), A,
          F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))]
    masks = (None,) * 3 if resets is None else reset_masks(F.pad(resets, (0, pad)), 4,
                                                             torch.float64)
    y_ref, h_ref, _ = ssd._forward(*px, h, Dv, *masks, 4)
    # (the no-grad forward adds the two terms of y in one rounding, autograd's in two)
    assert torch.allclose(y, y_ref[:, :T], atol=1e-12) and torch.equal(hT, h_ref)
    ref = torch.autograd.grad((y_ref[:, :T] * gy).sum() + (h_ref * gh).sum(), inputs)
    for got, want in zip(grads, ref):
        assert torch.allclose(got, want, atol=1e-12, rtol=1e-10)


def test_ssd_hand_written_backward_passes_gradcheck():
    """Finite differences, independent of either backward: a loss on y only (the final
    state's gradient is None) and one on the final state only (y's is None)."""
    (x, dt, A, B, C, h, Dv), resets = _ssd_operands(7)
    ops = (x, dt, A, B, C, h, Dv)
    assert torch.autograd.gradcheck(lambda *o: ssd_chunked(*o[:5], 4, o[5], resets, o[6])[0],
                                    ops)
    assert torch.autograd.gradcheck(lambda *o: ssd_chunked(*o[:5], 4, o[5], resets, o[6])[1],
                                    ops)
