"""FFM backbone: Fast and Forgetful Memory (Morad et al., NeurIPS 2023).

Each block is `y = x + FFM(LayerNorm(x))`. The FFM cell keeps a complex aggregator
`S ∈ ℂ^{m×c}` (m traces, c contexts) per row:

    γ_jk = exp(α_j + i ω_k),  α_j < 0 (decay),  ω_k (angular frequency)
    S_t  = γ ⊙ S_{t-1} + x̃_t 1_cᵀ,   x̃_t = ℓ_x(x_t) ⊙ σ(ℓ_in(x_t))
    y_t  = LN(ℓ_mix([Re S_t; Im S_t])) ⊙ σ(ℓ_out(x_t)) + ℓ_thru(x_t) ⊙ (1 − σ(ℓ_out(x_t)))

where ℓ_x, ℓ_in, ℓ_thru, ℓ_out are the four parts of one linear layer.

The paper's parallel form `γ^{-(L-1-t)} ⊙ cumsum(γ^{L-1-i} x̃_i)` overflows in float32
unless α is clamped to about −88/L. `aggregate` instead works in chunks of length L:
inside a chunk it multiplies by the decay matrix `γ^{t-i}` (i ≤ t), whose real exponents
are never positive, as one batched real matmul; between chunks it carries the state with
`γ^L`. Any finite α < 0 is therefore allowed (see docs/ffm_precision.md). Resets inside
a chunk are exact: the inputs of each episode segment of a chunk are multiplied by the
decay matrix separately, so terms from before a reset are exact zeros, not cancellations.

State per block: `{"s_re": [B, m, c], "s_im": [B, m, c]}` (real and imaginary parts of S).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.errors import suggest
from reverie.sequence.base import Backbone, Block, LayerState, host_int, positive_int


def decay_powers(alpha: Tensor, omega: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """γ^d for d = 0..n-1 as `[m, c, 2, n]` (real, imaginary), rounded once to `dtype`.

    alpha: [m] (< 0), omega: [c]. The phases d·ω are formed in float64: in float32 the
    product alone is off by ~d·ω·6e-8 rad, a relative error of 2e-5 at d = 64, ω = 2π.
    """
    wide = torch.float64 if alpha.device.type != "mps" else torch.float32
    d = torch.arange(n, device=alpha.device, dtype=wide)
    mag = torch.exp(alpha.to(wide)[:, None, None] * d)  # [m, 1, n], |γ^d| <= 1
    phase = omega.to(wide)[None, :, None] * d  # [1, c, n]
    return torch.stack([mag * torch.cos(phase), mag * torch.sin(phase)], dim=2).to(dtype)


def chunk_operator(P: Tensor, L: int) -> Tensor:
    """The map from a chunk's inputs and carried state to its states, `[m, 2cL, L + 2c]`.

    P: [m, c, 2, L+1] powers of γ. Row (k, r, t) (context, real/imag, step), column i < L:
    γ_jk^{t-i} for i <= t, else 0 (the intra-chunk decay matrix; its real exponents are
    never positive, so nothing overflows for any α < 0). Column L + (r', k'): the part
    r' of the carried state S_start of context k', entering as γ^{t+1} ⊙ S_start.
    """
    m, c = P.shape[:2]
    t = torch.arange(L, device=P.device)
    lag = t[:, None] - t[None, :]
    D = P[..., lag.clamp(min=0)] * (lag >= 0).to(P.dtype)  # [m, c, 2, L, L]
    g_re, g_im = P[:, :, 0, 1:], P[:, :, 1, 1:]  # γ^{t+1}: [m, c, L]
    # complex product as a 2x2 real block: [re; im] = [[g_re, -g_im], [g_im, g_re]] [s_re; s_im]
    blocks = torch.stack(
        [torch.stack([g_re, -g_im], -1), torch.stack([g_im, g_re], -1)], dim=2
    )  # [m, c, 2 (r), L, 2 (r')]
    eye = torch.eye(c, device=P.device, dtype=P.dtype)
    carry = blocks[..., None] * eye[None, :, None, None, None, :]  # [m, c, 2, L, 2, c]
    return torch.cat([D, carry.flatten(-2)], dim=-1).reshape(m, c * 2 * L, L + 2 * c)


def aggregate(
    u: Tensor,
    alpha: Tensor,
    omega: Tensor,
    s0: Tensor,
    reset: Tensor | None,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """S_t = γ ⊙ S_{t-1} + u_t 1_cᵀ for all t at once, restarting from 0 at resets.

    u: [B, T, m] real gated input; alpha: [m]; omega: [c]; s0: [B, m, c, 2] the state
    before step 0 (real, imaginary); reset: [B, T] bool or None (True: S_{t-1} -> 0).
    Returns the states in chunk layout `[m, c, 2, L, B, nc]` (step n·L + t of row b at
    [..., t, b, n]; see `unchunk`), L = min(chunk_size, T), and the last state
    S_{T-1}: [B, m, c, 2].
    """
    B, T, m = u.shape
    c = omega.shape[0]
    L = min(chunk_size, T)
    nc = -(-T // L)
    pad = nc * L - T
    if pad:
        # zeros at the end: the causal states at t < T do not see them
        u = F.pad(u, (0, 0, 0, pad))
        if reset is not None:
            reset = F.pad(reset, (0, pad))
    BN = B * nc
    P = decay_powers(alpha, omega, L + 1, u.dtype)  # [m, c, 2, L+1]
    X = u.view(B, nc, L, m).permute(3, 2, 0, 1).reshape(m, L, BN)  # [j, i, (b, n)]

    # Segment of each step inside its chunk: 0 up to the first reset after the chunk's
    # first step, then 1, ... A reset at the first step only drops the carried state.
    seg = None
    if reset is not None:
        r = reset.view(B, nc, L).permute(2, 0, 1).reshape(L, BN)  # [t, (b, n)]
        inner = r.clone()
        inner[0] = False
        seg = inner.long().cumsum(0)  # [L, BN]
        keep = (~r[0]).to(u.dtype)  # [BN]: does the carried state enter the chunk?

    # Intra-chunk end states S_intra[n, L-1] = Σ_i γ^{L-1-i} u_i over the last segment.
    W_end = P[..., :L].flip(-1).reshape(m, 2 * c, L)  # [j, (k, r), i]
    X_end = X if seg is None else X * (seg == seg[-1]).to(u.dtype)
    end = torch.bmm(W_end, X_end).view(m, c, 2, B, nc)
    # Carry across chunks, a loop over T/L chunks of [m, c, 2, B] tensors:
    # S_start[n+1] = γ^L ⊙ S_start[n] + S_intra[n, L-1]; a reset in chunk n drops γ^L ⊙ S_start[n].
    # The complex product is a 2x2 real matmul, so each chunk costs two small ops.
    g_re, g_im = P[:, :, 0, L], P[:, :, 1, L]  # γ^L: [m, c]
    G = torch.stack([torch.stack([g_re, -g_im], -1), torch.stack([g_im, g_re], -1)], -2)
    if reset is not None:
        clean = (reset.view(B, nc, L).sum(-1) == 0).to(u.dtype).t().unbind(0)  # nc x [B]
    s = s0.permute(1, 2, 3, 0)  # [m, c, 2, B]
    starts = [s]
    for n, e in enumerate(end.unbind(-1)[: nc - 1]):
        s = e + G @ s if reset is None else torch.addcmul(e, G @ s, clean[n])
        starts.append(s)
    start = torch.stack(starts, dim=-1).transpose(1, 2).reshape(m, 2 * c, BN)  # [j, (r, k), bn]

    A = chunk_operator(P, L)  # [m, 2cL, L + 2c]
    # segments per chunk; a compiled graph pads it to a power of two (the extra columns
    # are exact zeros), so few distinct counts are ever compiled
    K = 1 if seg is None else host_int(seg.max() + 1, round_up=torch.compiler.is_compiling())
    if seg is not None:
        start = start * keep
    if K == 1:
        S = torch.bmm(A, torch.cat([X, start], dim=1))
    else:
        # every segment of a chunk is its own column: columns of other segments hold exact
        # zeros, so nothing crosses a reset (no cancellation of large terms)
        onehot = F.one_hot(seg, K).to(u.dtype)  # [L, BN, K]
        Xs = X.unsqueeze(-1) * onehot
        starts_s = F.pad(start.unsqueeze(-1), (0, K - 1))  # the carry enters segment 0 only
        S = torch.bmm(A, torch.cat([Xs, starts_s], dim=1).reshape(m, L + 2 * c, BN * K))
        index = seg.view(1, 1, 1, L, BN, 1).expand(m, c, 2, L, BN, 1)
        S = S.view(m, c, 2, L, BN, K).gather(-1, index)
    S = S.view(m, c, 2, L, B, nc)
    t_last = T - 1 - (nc - 1) * L
    last = S[:, :, :, t_last, :, nc - 1].permute(3, 0, 1, 2)  # [B, m, c, 2]
    return S, last


def unchunk(S: Tensor, T: int) -> Tensor:
    """Chunk layout `[m, c, 2, L, B, nc]` -> `[B, T, m, c, 2]`."""
    m, c, _, L, B, nc = S.shape
    return S.permute(4, 5, 3, 0, 1, 2).reshape(B, nc * L, m, c, 2)[:, :T]


# The official torch FFM (proroklab/ffm, `FFA`) runs its aggregator in float64 over windows
# of max_len = 1024 steps and keeps exp(|α|·max_len) finite with a margin ("fudge") of 0.01:
# α >= −limit, limit = ln(float64 max)/1024 − 0.01 = ln 2 − 0.01 ≈ 0.6831.
REFERENCE_MAX_LEN = 1024
REFERENCE_FUDGE = 0.01
REFERENCE_LIMIT = math.log(torch.finfo(torch.float64).max) / REFERENCE_MAX_LEN - REFERENCE_FUDGE


def reference_alpha_init(memory_size: int, max_horizon: float = 1024.0) -> Tensor:
    """The reference's initial decays, float64 [m]: linear from −limit + 0.01 ≈ −0.673 (the
    fastest trace, one fudge inside its clamp) to ln(0.01)/max_horizon (the slowest keeps
    1% of an input after `max_horizon` steps; the reference calls it max_period)."""
    low = -REFERENCE_LIMIT + REFERENCE_FUDGE
    high = max(min(-1e-6, math.log(0.01) / max_horizon), low)
    return torch.linspace(low, high, memory_size, dtype=torch.float64)


class FFMBlock(Block):
    """x + FFM(LayerNorm(x)): one FFM cell with m traces and c contexts."""

    def __init__(
        self,
        d_model: int,
        memory_size: int,
        context_size: int,
        chunk_size: int,
        min_horizon: float,
        max_horizon: float,
        max_period: float,
        init: str = "reverie",
        norm_affine: bool = True,
    ) -> None:
        super().__init__()
        m, c = memory_size, context_size
        self.memory_size, self.context_size, self.chunk_size = m, c, chunk_size
        self.norm = nn.LayerNorm(d_model)
        # one linear layer: trace input x̃ (m), input gate (m), pass-through (D), output gate (D)
        self.pre = nn.Linear(d_model, 2 * m + 2 * d_model)
        self.mix = nn.Linear(2 * m * c, d_model)
        # the reference's output norm has no scale or bias (norm_affine=False)
        self.mix_norm = nn.LayerNorm(d_model, elementwise_affine=norm_affine)
        if init == "reference":
            rho = torch.log(-reference_alpha_init(m, max_horizon)).float()
        else:
            # Trace j keeps 1% of an input after τ_j steps, τ log-spaced over
            # [min_horizon, max_horizon]: every octave of memory length gets the same
            # number of traces. (The reference spaces α linearly from the clamp its
            # overflow forces; the chunked `aggregate` has no such limit.)
            tau = torch.logspace(math.log10(min_horizon), math.log10(max_horizon), m)
            rho = torch.log(math.log(100.0) / tau)
        # α = −exp(ρ) keeps α < 0 without clamping and moves log-timescales evenly
        self.log_neg_alpha = nn.Parameter(rho)
        # ω_k = 2π / period_k, periods linear in [1, max_period] as in the paper
        self.omega = nn.Parameter(2 * math.pi / torch.linspace(1.0, max_period, c))

    @property
    def alpha(self) -> Tensor:
        """Log-magnitude of the decay, α: [m], strictly negative."""
        return -torch.exp(self.log_neg_alpha)

    def initial_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> LayerState:
        shape = (batch_size, self.memory_size, self.context_size)
        z = torch.zeros(shape, device=device, dtype=dtype)
        return {"s_re": z, "s_im": z.clone()}

    def _gates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Gated trace input x̃ [..., m], pass-through [..., D], output gate [..., D]."""
        m = self.memory_size
        D = self.mix.out_features
        x_in, g_in, thru, g_out = self.pre(self.norm(x)).split([m, m, D, D], dim=-1)
        return x_in * torch.sigmoid(g_in), thru, torch.sigmoid(g_out)

    def _readout(self, S: Tensor, thru: Tensor, g_out: Tensor) -> Tensor:
        """S features [N, 2mc] (order trace, context, real/imag) -> cell output [N, D]."""
        z = self.mix_norm(self.mix(S.to(thru.dtype)))
        return thru + g_out * (z - thru)  # = z ⊙ g_out + thru ⊙ (1 − g_out)

    def forward(
        self, x: Tensor, state: LayerState, reset: Tensor | None
    ) -> tuple[Tensor, LayerState]:
        """x: [B, T, D], state {"s_re", "s_im": [B, m, c]}, reset: [B, T] bool or None."""
        B, T, D = x.shape
        if T == 0:
            return x, state
        u, thru, g_out = self._gates(x)
        # the aggregator always runs in (at least) float32, also under bf16 autocast
        dtype = torch.promote_types(u.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            s0 = torch.stack([state["s_re"], state["s_im"]], dim=-1).to(dtype)
            S, last = aggregate(u.to(dtype), self.alpha, self.omega, s0, reset, self.chunk_size)
        m, c, _, L, _, nc = S.shape
        # the mix reads S in its chunk layout (a transposed operand costs a GEMM nothing);
        # only its D-wide output rows are reordered from (t, b, n) to (b, n, t)
        z = F.linear(S.view(m * c * 2, L * B * nc).t().to(x.dtype), self.mix.weight,
                     self.mix.bias)
        z = self.mix_norm(z).view(L, B, nc, D).permute(1, 2, 0, 3).reshape(B, nc * L, D)
        y = thru + g_out * (z[:, :T] - thru)  # = LN(mix(S)) ⊙ g_out + thru ⊙ (1 − g_out)
        new_state = {"s_re": last[..., 0].to(state["s_re"].dtype),
                     "s_im": last[..., 1].to(state["s_im"].dtype)}
        return x + y, new_state

    def step(
        self, x: Tensor, state: LayerState, overwrite: bool = False
    ) -> tuple[Tensor, LayerState]:
        """x: [B, D], state {"s_re", "s_im": [B, m, c]} -> y: [B, D]; O(1)."""
        u, thru, g_out = self._gates(x)
        dtype = torch.promote_types(u.dtype, torch.float32)
        # γ itself needs no float64 phases (d = 1): a few ops, as imagination calls this a lot
        mag = torch.exp(self.alpha.to(dtype)).unsqueeze(-1)  # [m, 1]
        omega = self.omega.to(dtype)
        g_re, g_im = mag * torch.cos(omega), mag * torch.sin(omega)  # [m, c]
        s_re, s_im = state["s_re"].to(dtype), state["s_im"].to(dtype)
        # S_t = γ ⊙ S_{t-1} + x̃_t 1ᵀ: x̃ enters the real part of every context
        new_re = g_re * s_re - g_im * s_im + u.to(dtype).unsqueeze(-1)
        new_im = g_re * s_im + g_im * s_re
        S = torch.stack([new_re, new_im], dim=-1).flatten(1)  # [B, 2mc]
        new_state = {"s_re": new_re.to(state["s_re"].dtype),
                     "s_im": new_im.to(state["s_im"].dtype)}
        return x + self._readout(S, thru, g_out), new_state


class FFM(Backbone):
    name = "ffm"


DEFAULTS: dict[str, Any] = {
    "memory_size": 32,
    "context_size": 4,
    # 16 (bench/ffm_chunk.py): fastest at long sequences (T=1024, D=512: 887 ms forward +
    # backward vs 932 with 64), within 6% of 8 at short ones (PPO's 8 x 64 at D=64: 4.5 ms
    # vs 20 with 64)
    "chunk_size": 16,
    "min_horizon": 1.0,
    "max_horizon": 1024.0,
    "max_period": None,  # by init: PERIODS
    "init": "reverie",
    "norm_affine": True,
}
INITS = ("reverie", "reference")
# Longest oscillation period at init, by `init` (periods are spread linearly from 1 step to
# it). The paper's 1024 leaves, with its 4 contexts, one period-1 context (no rotation) and
# three that turn less than 1/85 of a cycle per step, so inputs a few steps apart look alike:
# FFM then learns lag-4 recall to 0.73 where every other memory reaches 1.00
# (bench/recall.py) and fails POPGym's RepeatPreviousEasy under PPO (MMER 0.21 vs the GRU's
# 1.00, bench/popgym_mmer.py). Spread over [1, 16] it recalls at 0.99 and solves
# RepeatPrevious (1.00), while the decays, and so how long the traces remember, are the same.
PERIODS = {"reverie": 16.0, "reference": 1024.0}


def build(d_model: int, n_layers: int, **kwargs: Any) -> Backbone:
    """A stack of `n_layers` pre-norm residual FFM blocks of width `d_model`.

    Options: memory_size m (traces, 32), context_size c (frequencies, 4), chunk_size
    (steps per parallel chunk, 16), min_horizon / max_horizon (steps after which the
    fastest / slowest trace keeps 1% of an input at init, 1 / 1024), max_period (longest
    oscillation period at init: 16 with init "reverie", the paper's 1024 with "reference";
    see PERIODS), init ("reverie": α log-spaced in time scale over
    [min_horizon, max_horizon]; "reference": the official code's linear spread of α from
    −0.673 to ln(0.01)/max_horizon, min_horizon unused), norm_affine (learned scale and
    bias in the output LayerNorm, True; the reference has none: False).
    """
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"ffm got unknown options {unknown}; valid options are {', '.join(DEFAULTS)}"
        )
    opt = {**DEFAULTS, **kwargs}
    if opt["max_period"] is None:  # (an unknown init is reported below)
        opt["max_period"] = PERIODS.get(opt["init"], PERIODS["reference"])
    for key in ("memory_size", "context_size", "chunk_size"):
        v = opt[key]
        if not positive_int(v):
            raise ValueError(f"ffm {key} must be a positive integer, got {v!r}")
    for key in ("min_horizon", "max_horizon", "max_period"):
        v = opt[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 1:
            raise ValueError(f"ffm {key} must be a number >= 1 (in steps), got {v!r}")
    if opt["init"] not in INITS:
        raise ValueError(f"ffm init must be one of {', '.join(INITS)}, got {opt['init']!r}"
                         f"{suggest(str(opt['init']), INITS)}")
    if not isinstance(opt["norm_affine"], bool):
        raise ValueError(f"ffm norm_affine must be true or false, got {opt['norm_affine']!r}")
    if opt["min_horizon"] > opt["max_horizon"]:
        raise ValueError(
            f"ffm min_horizon ({opt['min_horizon']}) must not exceed max_horizon "
            f"({opt['max_horizon']}); swap them"
        )
    blocks = [FFMBlock(d_model, **opt) for _ in range(n_layers)]
    return FFM(d_model, blocks)
