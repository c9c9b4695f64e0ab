"""FFM numerics: the chunked parallel aggregator against a float64 loop and a closed form.

The generic contract (forward == steps, resets, state hand-off) is in
test_backbone_contract.py; here the aggregator itself is checked where the paper's
parallel form would overflow (very fast and very slow traces, long sequences).
"""

from __future__ import annotations

import math

import pytest
import torch

from reverie.sequence import make_backbone
from reverie.sequence.ffm import aggregate, unchunk


def reference_aggregate(u, alpha, omega, s0, reset):
    """Obviously-correct loop in complex128: S_t = γ ⊙ S_{t-1} + u_t 1ᵀ, 0 at resets.

    u: [B, T, m]; alpha: [m]; omega: [c]; s0: [B, m, c, 2]; reset: [B, T] bool or None.
    Returns [B, T, m, c] complex128.
    """
    B, T, m = u.shape
    gamma = torch.exp(alpha.double()[:, None] + 1j * omega.double()[None, :])  # [m, c]
    s = torch.complex(s0[..., 0].double(), s0[..., 1].double())
    out = []
    for t in range(T):
        if reset is not None:
            s = s * (~reset[:, t]).double().view(B, 1, 1)
        s = gamma * s + u[:, t].double()[:, :, None]
        out.append(s)
    return torch.stack(out, dim=1)


def parallel(u, alpha, omega, s0, reset, chunk_size):
    """The module's chunked aggregator as [B, T, m, c] complex128, and its last state."""
    S, last = aggregate(u, alpha, omega, s0, reset, chunk_size)
    S = unchunk(S, u.shape[1])
    return torch.complex(S[..., 0].double(), S[..., 1].double()), last


def case(B, T, m, c, seed, p_reset=0.0, state=True):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, T, m, generator=g)
    s0 = torch.randn(B, m, c, 2, generator=g) if state else torch.zeros(B, m, c, 2)
    reset = torch.rand(B, T, generator=g) < p_reset if p_reset > 0 else None
    omega = 2 * math.pi / torch.linspace(1.0, 1024.0, c)
    omega = omega + 0.3 * torch.rand(c, generator=g)  # away from the init's exact values
    return u, s0, reset, omega


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 64])
@pytest.mark.parametrize("p_reset", [0.0, 0.1])
def test_aggregate_matches_float64_loop(chunk_size, p_reset):
    # one fast (α = −5: 0.7% kept per step) and slow traces (half-lives up to ~7000 steps)
    alpha = torch.tensor([-5.0, -1.0, -0.1, -1e-2, -1e-4])
    B, T, c = 3, 45, 3  # T is not a multiple of any chunk size above but 1
    u, s0, reset, omega = case(B, T, alpha.numel(), c, seed=chunk_size, p_reset=p_reset)
    if reset is not None:
        reset[0, 4] = True  # a reset at a chunk start for chunk sizes 1 and 4
        reset[1, 5] = True  # and one inside a chunk
    S, last = parallel(u, alpha, omega, s0, reset, chunk_size)
    ref = reference_aggregate(u, alpha, omega, s0, reset)
    assert S.shape == (B, T, alpha.numel(), c)
    scale = ref.abs().max().item()
    assert (S - ref).abs().max().item() <= 2e-6 * scale
    last_ref = torch.view_as_real(ref[:, -1])
    assert (last.double() - last_ref).abs().max().item() <= 2e-6 * scale


def test_resets_are_exact_zeros_not_cancellations():
    # inputs before a reset may be huge; after it the result must not depend on them at
    # all, neither inside the chunk of the reset nor through the carried state
    alpha = torch.tensor([-1e-4, -0.5])
    u, s0, _, omega = case(2, 40, 2, 4, seed=3)
    reset = torch.zeros(2, 40, dtype=torch.bool)
    reset[0, 13] = True  # inside the second chunk of 8
    reset[1, 16] = True  # at a chunk start
    u_big = u.clone()
    u_big[0, :13] = 1e6
    u_big[1, :16] = -1e6
    a, _ = parallel(u, alpha, omega, s0, reset, 8)
    b, _ = parallel(u_big, alpha, omega, 1e6 * s0, reset, 8)
    assert torch.equal(a[0, 13:], b[0, 13:])
    assert torch.equal(a[1, 16:], b[1, 16:])
    assert not torch.allclose(a[0, :13], b[0, :13])


@pytest.mark.parametrize("c", [1, 3])
def test_closed_form_constant_input(c):
    # single trace, constant input x from S_{-1} = 0: S_t = x (1 − γ^{t+1}) / (1 − γ)
    alpha = torch.tensor([-0.05])
    omega = torch.tensor([0.3, 2.0, -1.1][:c])
    x, T = 0.7, 150
    u = torch.full((1, T, 1), x)
    S, _ = parallel(u, alpha, omega, torch.zeros(1, 1, c, 2), None, 16)
    gamma = torch.exp(alpha.double()[:, None] + 1j * omega.double())  # [1, c]
    t = torch.arange(T, dtype=torch.float64).view(T, 1, 1)
    closed = x * (1 - gamma ** (t + 1)) / (1 - gamma)  # [T, 1, c]
    assert (S[0] - closed).abs().max().item() < 1e-5 * closed.abs().max().item()
    # the real-valued case by hand at t = 2: x (1 + e^α + e^{2α}) when ω = 0
    S0, _ = parallel(u[:, :3], alpha, torch.zeros(1), torch.zeros(1, 1, 1, 2), None, 2)
    a = math.exp(-0.05)
    assert S0[0, 2, 0, 0].real.item() == pytest.approx(x * (1 + a + a * a), rel=1e-6)
    assert S0[0, 2, 0, 0].imag.item() == 0.0


def test_long_sequence_any_decay_no_overflow():
    # the paper's form overflows in float32 for α < −88/1024 at T = 1024; here α spans
    # six orders of magnitude at T = 3000 with chunks of 64 (47 of them, the last partial)
    alpha = torch.tensor([-50.0, -5.0, -0.5, -0.05, -5e-3, -5e-4, -5e-5])
    u, s0, reset, omega = case(2, 3000, alpha.numel(), 2, seed=11, p_reset=0.002)
    S, _ = parallel(u, alpha, omega, s0, reset, 64)
    assert torch.isfinite(S).all()
    ref = reference_aggregate(u, alpha, omega, s0, reset)
    scale = ref.abs().amax(dim=(0, 1))  # [m, c]: per trace, as traces differ in size
    err = (S - ref).abs().amax(dim=(0, 1))
    assert (err <= 1e-5 * scale).all(), (err / scale).max()


def test_aggregate_gradcheck():
    # the backward of the chunked path (bmm, segment columns, gather, carry) in float64
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 9, 2, dtype=torch.float64, generator=g, requires_grad=True)
    s0 = torch.randn(2, 2, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    alpha = torch.tensor([-0.3, -2.0], dtype=torch.float64, requires_grad=True)
    omega = torch.tensor([0.5, 1.5, 3.0], dtype=torch.float64, requires_grad=True)
    reset = torch.zeros(2, 9, dtype=torch.bool)
    reset[0, 4] = True
    reset[1, 3] = True
    assert torch.autograd.gradcheck(
        lambda *a: aggregate(*a, reset, 3)[0], (u, alpha, omega, s0), eps=1e-6, atol=1e-6,
        fast_mode=True,
    )


def test_gradients_finite_long_sequence_default_sizes():
    torch.manual_seed(0)
    m = make_backbone("ffm", d_model=16, n_layers=2)  # default m = 32, c = 4, chunk 64
    with torch.no_grad():  # include a very fast and a very slow trace
        m.blocks[0].log_neg_alpha[0] = math.log(20.0)
        m.blocks[0].log_neg_alpha[1] = math.log(1e-6)
    x = torch.randn(2, 1024, 16, requires_grad=True)
    reset = torch.zeros(2, 1024, dtype=torch.bool)
    reset[1, 300] = True
    y, _ = m(x, None, reset)
    y[:, -1].pow(2).sum().backward()  # only the last output of each row
    for name, p in m.named_parameters():
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all()
    # the last output still depends on the first input 1023 steps (16 chunks) back ...
    assert x.grad[0, 0].abs().sum() > 1e-8
    # ... unless a reset lies between: then exactly not at all
    assert x.grad[1, :300].abs().max().item() == 0.0
    assert x.grad[1, 300].abs().sum() > 0


def test_default_init():
    m = make_backbone("ffm", d_model=16, n_layers=1, memory_size=5, context_size=4)
    blk = m.blocks[0]
    assert blk.pre.out_features == 2 * 5 + 2 * 16
    assert blk.mix.in_features == 2 * 5 * 4
    # fastest trace keeps 1% after 1 step, slowest after 1024 steps
    a = blk.alpha.detach()
    assert a[0].item() == pytest.approx(math.log(0.01), rel=1e-5)
    assert a[-1].item() == pytest.approx(math.log(0.01) / 1024, rel=1e-5)
    assert (a < 0).all()
    # reverie's periods span [1, 16] steps (bench/recall.py), the paper's [1, 1024]
    periods = 2 * math.pi / blk.omega.detach()
    assert torch.allclose(periods, torch.linspace(1.0, 16.0, 4), rtol=1e-5)
    paper = make_backbone("ffm", d_model=16, n_layers=1, context_size=4, max_period=1024)
    assert torch.allclose(2 * math.pi / paper.blocks[0].omega.detach(),
                          torch.linspace(1.0, 1024.0, 4), rtol=1e-5)


def test_bf16_autocast_keeps_aggregator_in_float32():
    torch.manual_seed(0)
    m = make_backbone("ffm", d_model=16, n_layers=2, memory_size=8, context_size=4).eval()
    x = torch.randn(2, 50, 16)
    with torch.no_grad():
        y32, s32 = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16, s16 = m(x)
    assert s16[0]["s_re"].dtype == torch.float32
    assert (y16.float() - y32).abs().max().item() < 0.1


@pytest.mark.parametrize(
    "bad",
    [
        {"memory_size": 0},
        {"context_size": -1},
        {"chunk_size": 2.5},
        {"min_horizon": 0.5},
        {"min_horizon": 10.0, "max_horizon": 5.0},
        {"max_period": "long"},
        {"trace_size": 8},
    ],
)
def test_bad_options_raise_value_error(bad):
    with pytest.raises(ValueError, match="ffm"):
        make_backbone("ffm", d_model=16, n_layers=1, **bad)


def test_forward_equals_steps_default_chunks():
    # default chunk of 64 at T = 70: a full chunk and a partial one, resets inside both
    torch.manual_seed(1)
    m = make_backbone("ffm", d_model=16, n_layers=1).eval()
    g = torch.Generator().manual_seed(1)
    T = 70
    x = torch.randn(2, T, 16, generator=g)
    reset = torch.zeros(2, T, dtype=torch.bool)
    reset[0, 64] = True  # at a chunk start
    reset[0, 30] = True
    reset[1, 66] = True
    with torch.no_grad():
        _, s = m(torch.randn(2, 5, 16, generator=g))  # a non-zero incoming state
        y_par, s_par = m(x, s, reset)
        ys = []
        for t in range(T):
            s = m.reset_state(s, reset[:, t])
            y, s = m.step(x[:, t], s)
            ys.append(y)
    assert (y_par - torch.stack(ys, 1)).abs().max().item() <= 1e-4
    for a, b in zip(s_par, s):
        assert (a["s_re"] - b["s_re"]).abs().max().item() <= 1e-4
        assert (a["s_im"] - b["s_im"]).abs().max().item() <= 1e-4
    y0, s0 = m(x[:, :0], s_par)  # an empty sequence is a no-op
    assert y0.shape == (2, 0, 16) and torch.equal(s0[0]["s_re"], s_par[0]["s_re"])


def test_reference_init_and_plain_output_norm():
    # proroklab/ffm FFA defaults: float64, max_len 1024, fudge 0.01, forgotten_at 0.01
    m = make_backbone("ffm", d_model=16, n_layers=1, memory_size=5, context_size=4,
                      init="reference", norm_affine=False)
    blk = m.blocks[0]
    limit = 709.782712893384 / 1024 - 0.01  # ln(float64 max) / max_len − fudge
    low, high = -limit + 0.01, math.log(0.01) / 1024
    assert low == pytest.approx(-0.673147, abs=1e-6)
    expected = [low + k * (high - low) / 4 for k in range(5)]
    assert blk.alpha.detach().tolist() == pytest.approx(expected, rel=1e-6)
    assert (blk.alpha > -limit).all()  # inside the reference's clamp
    periods = 2 * math.pi / blk.omega.detach()
    assert torch.allclose(periods, torch.linspace(1.0, 1024.0, 4), rtol=1e-5)
    # output LayerNorm without scale or bias: nothing learned, zero mean / unit variance
    assert blk.mix_norm.weight is None and blk.mix_norm.bias is None
    z = blk.mix_norm(torch.randn(3, 16) * 5 + 2)
    torch.testing.assert_close(z.mean(-1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(-1, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    # the default init is untouched: fastest trace keeps 1% after one step
    default = make_backbone("ffm", d_model=16, n_layers=1, memory_size=5).blocks[0]
    assert default.alpha[0].item() == pytest.approx(math.log(0.01), rel=1e-5)
    assert default.mix_norm.weight is not None


def test_reference_options_keep_forward_equal_to_steps():
    torch.manual_seed(2)
    m = make_backbone("ffm", d_model=16, n_layers=2, memory_size=8, context_size=4,
                      chunk_size=8, init="reference", norm_affine=False).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 21, 16, generator=g)
    reset = torch.zeros(2, 21, dtype=torch.bool)
    reset[0, 9] = True
    with torch.no_grad():
        y_par, _ = m(x, None, reset)
        s, ys = m.initial_state(2), []
        for t in range(21):
            s = m.reset_state(s, reset[:, t])
            y, s = m.step(x[:, t], s)
            ys.append(y)
    assert (y_par - torch.stack(ys, 1)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("bad", [{"init": "paper"}, {"norm_affine": "no"}])
def test_bad_reference_options(bad):
    with pytest.raises(ValueError, match="ffm (init|norm_affine)"):
        make_backbone("ffm", d_model=16, n_layers=1, **bad)
