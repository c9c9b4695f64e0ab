"""Mamba-1 numerics: the chunked selective scan and the block against slow Python loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reverie.sequence import make_backbone
from reverie.sequence import selective_scan as selective_scan_module
from reverie.sequence.selective_scan import selective_scan


def scan_reference(dt, dtx, A, Bm, Cm, h0, reset=None):
    """The recurrence one step at a time: h_t = exp(dt_t A) h_{t-1} + dtx_t B_t; y_t = h_t C_t."""
    h, ys = h0, []
    for t in range(dt.shape[1]):
        d = torch.exp(dt[:, t, :, None] * A)
        if reset is not None:
            d = d * (~reset[:, t]).to(d.dtype)[:, None, None]
        h = d * h + dtx[:, t, :, None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1))
    return torch.stack(ys, 1), h


def scan_inputs(B=2, T=13, C=3, N=4, seed=0, dtype=torch.float64, dt_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    dt = F.softplus(torch.randn(B, T, C, generator=g, dtype=dtype)) * dt_scale
    dtx = torch.randn(B, T, C, generator=g, dtype=dtype)
    A = -torch.rand(C, N, generator=g, dtype=dtype) * 3 - 0.1
    Bm = torch.randn(B, T, N, generator=g, dtype=dtype)
    Cm = torch.randn(B, T, N, generator=g, dtype=dtype)
    h0 = torch.randn(B, C, N, generator=g, dtype=dtype)
    reset = torch.rand(B, T, generator=g) < 0.2
    return dt, dtx, A, Bm, Cm, h0, reset


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 13, 64])
@pytest.mark.parametrize("with_reset", [False, True])
def test_scan_matches_loop(chunk_size, with_reset):
    dt, dtx, A, Bm, Cm, h0, reset = scan_inputs()
    reset = reset if with_reset else None
    y, h = selective_scan(dt, dtx, A, Bm, Cm, h0, reset, chunk_size)
    y_ref, h_ref = scan_reference(dt, dtx, A, Bm, Cm, h0, reset)
    assert torch.allclose(y, y_ref, atol=1e-10, rtol=0)
    assert torch.allclose(h, h_ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("chunk_size", [2, 5, 64])
def test_scan_gradients_match_autograd_through_loop(chunk_size):
    inputs = scan_inputs(T=11, seed=1)
    reset = inputs[-1]
    leaves = [t.clone().requires_grad_() for t in inputs[:-1]]
    g = torch.Generator().manual_seed(2)
    wy = torch.randn(2, 11, 3, generator=g, dtype=torch.float64)
    wh = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    grads = []
    for fn in (lambda *a: selective_scan(*a, chunk_size=chunk_size), scan_reference):
        y, h = fn(*leaves, reset)
        grads.append(torch.autograd.grad((y * wy).sum() + (h * wh).sum(), leaves))
    for name, a, b in zip(["dt", "dtx", "A", "B", "C", "h0"], *grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=0), name


def test_scan_low_memory_path_matches_loop(monkeypatch):
    # a tiny budget forces per-step decays and many chunk groups in the backward, the path
    # that long, wide sequences take
    monkeypatch.setattr(selective_scan_module, "GROUP_ELEMENTS", 64)
    test_scan_matches_loop(chunk_size=3, with_reset=True)
    test_scan_gradients_match_autograd_through_loop(chunk_size=2)


def test_scan_gradcheck():
    dt, dtx, A, Bm, Cm, h0, reset = scan_inputs(B=1, T=5, C=2, N=2, seed=3)
    leaves = [t.requires_grad_() for t in (dt, dtx, A, Bm, Cm, h0)]
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan(*a, reset=reset, chunk_size=3), leaves
    )


def test_scan_long_sequence_is_stable():
    # dt * |A| sums to thousands over T=1024: a cumsum/exp formulation would overflow
    dt, dtx, A, Bm, Cm, h0, reset = scan_inputs(B=1, T=1024, C=3, N=4, seed=4,
                                                dtype=torch.float32, dt_scale=5.0)
    A = A * 5
    leaves = [t.requires_grad_() for t in (dt, dtx, A, Bm, Cm, h0)]
    y, h = selective_scan(*leaves, reset=None, chunk_size=32)
    (y.square().sum() + h.sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    assert all(torch.isfinite(t.grad).all() for t in leaves)
    with torch.no_grad():
        y_ref, _ = scan_reference(dt, dtx, A, Bm, Cm, h0)
    assert torch.allclose(y, y_ref, atol=1e-4, rtol=1e-4)


def block_reference(blk, x, reset=None):
    """One Mamba-1 block from a zero state, written as a loop over time from its parameters."""
    B, T, _ = x.shape
    K = blk.d_conv
    xi, z = blk.in_proj(blk.norm(x)).chunk(2, dim=-1)
    A = -torch.exp(blk.A_log)
    h = torch.zeros(B, blk.d_inner, blk.d_state)
    start = torch.zeros(B, dtype=torch.long)  # first step of the current episode, per row
    out = []
    for t in range(T):
        if reset is not None:
            start = torch.where(reset[:, t], torch.full_like(start, t), start)
            h = h * (~reset[:, t]).float()[:, None, None]
        conv = blk.conv_bias.expand(B, -1).clone()
        for k in range(K):  # tap k reads input t - k, only within the episode
            seen = ((t - k) >= start).float()[:, None]
            if t - k >= 0:
                conv = conv + seen * xi[:, t - k] * blk.conv_weight[:, K - 1 - k]
        xc = F.silu(conv)
        dt_low, Bm, Cm = blk.x_proj(xc).split([blk.dt_rank, blk.d_state, blk.d_state], -1)
        dt = F.softplus(blk.dt_proj(dt_low))
        h = torch.exp(dt[..., None] * A) * h + (dt * xc)[..., None] * Bm[:, None, :]
        y = (h * Cm[:, None, :]).sum(-1) + blk.D * xc
        out.append(blk.out_proj(y * F.silu(z[:, t])))
    return x + torch.stack(out, 1), h


@pytest.mark.parametrize("with_reset", [False, True])
def test_block_matches_loop_reference(with_reset):
    torch.manual_seed(0)
    m = make_backbone("mamba1", d_model=8, n_layers=1, d_state=4, chunk_size=4)
    blk = m.blocks[0]
    with torch.no_grad():  # make dt and D matter more than at init
        blk.dt_proj.bias.add_(1.0)
        blk.D.mul_(0.5)
    x = torch.randn(3, 11, 8)
    reset = (torch.rand(3, 11) < 0.25) if with_reset else None
    with torch.no_grad():
        y, s = blk(x, blk.initial_state(3, x.device, x.dtype), reset)
        y_ref, h_ref = block_reference(blk, x, reset)
    assert (y - y_ref).abs().max().item() < 1e-5
    assert (s["ssm"] - h_ref).abs().max().item() < 1e-5


def test_chunk_size_does_not_change_outputs_or_gradients():
    x = torch.randn(2, 37, 16)
    reset = torch.zeros(2, 37, dtype=torch.bool)
    reset[0, 20] = True
    outs = []
    for chunk in (1, 8, 64):
        torch.manual_seed(0)
        m = make_backbone("mamba1", d_model=16, n_layers=2, d_state=4, chunk_size=chunk)
        y, _ = m(x, None, reset)
        y.square().mean().backward()
        outs.append((y.detach(), m.blocks[0].A_log.grad.clone()))
    for y, g in outs[1:]:
        assert torch.allclose(y, outs[0][0], atol=1e-5)
        assert torch.allclose(g, outs[0][1], atol=1e-5, rtol=1e-4)


def test_defaults_and_shapes():
    m = make_backbone("mamba1", d_model=40, n_layers=2)
    blk = m.blocks[0]
    assert m.name == "mamba1"
    assert (blk.d_inner, blk.d_state, blk.d_conv, blk.dt_rank) == (80, 16, 4, 3)
    # S4D-real init: A = -(1..N) in every channel
    assert torch.allclose(-torch.exp(blk.A_log), -torch.arange(1.0, 17).expand(80, 16))
    dt = F.softplus(blk.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    s = m.initial_state(5)
    assert s[0]["conv"].shape == (5, 3, 80) and s[0]["ssm"].shape == (5, 80, 16)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"d_state": 0}, "d_state must be a positive integer"),
        ({"expand": 1.5}, "expand must be a positive integer"),
        ({"chunk_size": -1}, "chunk_size must be a positive integer"),
        ({"dt_rank": "big"}, "dt_rank must be 'auto' or a positive integer"),
        ({"d_conv": 0}, "d_conv must be a positive integer"),
        ({"heads": 2}, "backbone .mamba1. has no option .heads."),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_backbone("mamba1", d_model=16, n_layers=1, **kwargs)


def test_compiled_graphs_leave_the_scan_eager():
    """torch.compile of code around the scan traces the rest and calls the scan eagerly
    (compiled, its unrolled chunk loops ran 7-14x slower than eager)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def fn(dt, dtx, A, B, C, h0):
        y, h = selective_scan(dt * 1.0, dtx, A, B, C, h0, None, 4)
        return y.sum() + h.sum()

    g = torch.Generator().manual_seed(0)
    args = (torch.rand(2, 8, 3, generator=g) + 0.1, torch.randn(2, 8, 3, generator=g),
            -torch.rand(3, 2, generator=g) - 0.1, torch.randn(2, 8, 2, generator=g),
            torch.randn(2, 8, 2, generator=g), torch.zeros(2, 3, 2))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(disable=False):  # conftest turns compile off
        out = torch.compile(fn, backend=backend)(*args)
    ops = [n for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert graphs and len(ops) <= 4  # dt * 1.0 and the two sums and their add, no scan
    assert torch.allclose(out, fn(*args))


def test_bf16_autocast_runs_the_fused_norm_without_a_warning():
    """Under run.precision=bf16 a block's input arrives in bf16: nn.RMSNorm's float32 gain
    sent it to torch's unfused path with a UserWarning on every call (train, eval, watch)."""
    import warnings

    m = make_backbone("mamba1", d_model=32, n_layers=2)
    x = torch.randn(2, 8, 32).to(torch.bfloat16)
    with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("error")
        y, state = m(x, m.initial_state(2), None)
        m.step(x[:, 0], state)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
