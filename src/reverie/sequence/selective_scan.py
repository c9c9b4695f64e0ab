"""Mamba-1's selective scan (Gu & Dao 2023, Alg. 2) as a chunked parallel scan, pure PyTorch.

Per channel c and state index n the recurrence is diagonal:

    h_t = d_t * h_{t-1} + u_t,   d_t = exp(dt_t[c] A[c, n]) * keep_t,   u_t = (dt_t x_t)[c] B_t[n]
    y_t[c] = sum_n C_t[n] h_t[c, n]

`keep_t = 0` at an episode reset, which cuts every path from before t.

Parallel form: a blocked (two-level) scan. Time is cut into chunks of length L; all chunks
run the recurrence from a zero state at once (a loop of L steps over [B, n_chunks, C, N]),
the chunk-end states are chained by an n_chunks-step scan, and a second pass over the chunk
positions reads out y from the true chunk-start states. Python iterations: about 2L +
T/L instead of T. Only multiplications by decays <= 1 occur, so it is stable at any T
(no exp of a positive cumulative sum, as a cumprod/cumsum formulation would need).

The backward is hand-written (`SelectiveScan`) with the same blocked structure: the
adjoint g_t = C_t dy_t + d_{t+1} g_{t+1} is a reverse scan, and the states are recomputed
per group of chunks, so the [B, T, C, N] tensor of all states is never held at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reverie.sequence.base import matvec

# Upper bound on the elements of the per-group state buffer in the backward (64 MiB fp32).
GROUP_ELEMENTS = 1 << 24


class _Decays:
    """d = exp(dt A) at chunk position i for chunks k0:k1, as [B, k1-k0, N, C].

    Small problems get all decays from one exp call (a per-step exp on a tiny tensor costs
    more in dispatch and thread wake-ups than in arithmetic); large ones recompute each step
    into a reused buffer so that [B, T, N, C] is never held.
    """

    def __init__(self, dt: Tensor, A: Tensor) -> None:
        self.dt, self.A = dt, A  # dt: [B, K, L, C], A: [N, C]
        self.all = None
        if dt.numel() * A.shape[0] <= GROUP_ELEMENTS:
            self.all = torch.exp(dt.permute(2, 0, 1, 3).unsqueeze(-2) * A)  # [L, B, K, N, C]
        self.out: Tensor | None = None

    def at(self, i: int, k0: int = 0, k1: int | None = None) -> Tensor:
        if self.all is not None:
            return self.all[i, :, k0:k1]
        dt_i = self.dt[:, k0:k1, i]
        shape = (*dt_i.shape[:2], *self.A.shape)
        if self.out is None or self.out.shape != shape:
            self.out = dt_i.new_empty(shape)
        return torch.mul(dt_i.unsqueeze(-2), self.A, out=self.out).exp_()


def _add_input(h: Tensor, dtx_i: Tensor, B_i: Tensor) -> Tensor:
    """h += B_i (dt x)_i^T in place: h: [B, K, N, C], dtx_i: [B, K, C], B_i: [B, K, N]."""
    return h.addcmul_(dtx_i.unsqueeze(-2), B_i.unsqueeze(-1))


def _chunk(t: Tensor, L: int) -> Tensor:
    """[B, T', ...] -> [B, T'/L, L, ...] (T' already a multiple of L)."""
    return t.reshape(t.shape[0], t.shape[1] // L, L, *t.shape[2:])


def _chunk_decay(dt: Tensor, A: Tensor) -> Tensor:
    """Product of the decays over each chunk, exp(A * sum dt): dt [B, K, L, C] -> [B, K, N, C]."""
    return torch.exp(dt.sum(2).unsqueeze(-2) * A)


def _forward(dt, dtx, A, Bm, Cm, h0, L):
    """Chunked forward on chunked inputs [B, K, L, ...]; A: [N, C], h0: [B, N, C].

    Returns y [B, K, L, C], h_T [B, N, C] and the true state before each chunk [B, K, N, C].
    """
    B, K, _, C = dt.shape
    dec = _Decays(dt, A)
    if K == 1:
        H0 = h0.unsqueeze(1)
    else:
        h = dt.new_zeros(B, K, *A.shape)  # every chunk from a zero state, all chunks at once
        for i in range(L):
            _add_input(h.mul_(dec.at(i)), dtx[:, :, i], Bm[:, :, i])
        D = _chunk_decay(dt, A)
        starts = [h0]
        for k in range(K - 1):
            starts.append(torch.addcmul(h[:, k], D[:, k], starts[-1]))
        H0 = torch.stack(starts, 1)
    y = dt.new_empty(L, B, K, C)
    h = H0.clone()
    for i in range(L):
        _add_input(h.mul_(dec.at(i)), dtx[:, :, i], Bm[:, :, i])
        y[i] = (Cm[:, :, i].unsqueeze(-2) @ h).squeeze(-2)
    return y.permute(1, 2, 0, 3), h[:, -1], H0


def _backward(dt, dtx, A, Bm, Cm, H0, dy, dh_last, L):
    """Gradients of the chunked scan w.r.t. dt, dtx, A, B, C, h0 (shapes as in `_forward`).

    With g_t the adjoint of h_t and d_t the decay: d(dt x)_t = g_t B_t, dB_t = g_t^T (dt x)_t,
    dC_t = h_t^T dy_t, and the log-decay dt_t A gets g_t * d_t * h_{t-1}.
    """
    B, K, _, C = dt.shape
    N = A.shape[0]
    dec = _Decays(dt, A)

    # 1. the adjoint flowing into each chunk's last state from the future: G_in [B, K, N, C]
    if K == 1:
        G_in = dh_last.unsqueeze(1)
    else:
        g = dt.new_zeros(B, K, N, C)  # every chunk from a zero end adjoint, all at once
        for i in reversed(range(L)):
            g.addcmul_(dy[:, :, i].unsqueeze(-2), Cm[:, :, i].unsqueeze(-1))
            g.mul_(dec.at(i))
        D = _chunk_decay(dt, A)
        ins = [dh_last]
        for k in reversed(range(1, K)):
            ins.append(torch.addcmul(g[:, k], D[:, k], ins[-1]))
        G_in = torch.stack(ins[::-1], 1)

    d_dt = torch.empty_like(dt)
    d_dtx = torch.empty_like(dtx)
    dB = torch.empty_like(Bm)
    dC = torch.empty_like(Cm)
    dA = torch.zeros_like(A)
    dh0 = G_in[:, 0]
    # 2. per group of chunks: recompute the states forward, then run the adjoint backward
    group = max(1, GROUP_ELEMENTS // max(1, B * L * C * N))
    for k0 in range(0, K, group):
        k1 = min(K, k0 + group)
        dts, dtxs, Bs, Cs, dys = (t[:, k0:k1] for t in (dt, dtx, Bm, Cm, dy))
        prev = dt.new_empty(L + 1, B, k1 - k0, N, C)  # prev[i] = h_{t-1} at chunk position i
        prev[0] = H0[:, k0:k1]
        for i in range(L):
            torch.mul(prev[i], dec.at(i, k0, k1), out=prev[i + 1])
            _add_input(prev[i + 1], dtxs[:, :, i], Bs[:, :, i])
            dC[:, k0:k1, i] = matvec(prev[i + 1], dys[:, :, i])
        g = G_in[:, k0:k1].clone()
        for i in reversed(range(L)):
            g.addcmul_(dys[:, :, i].unsqueeze(-2), Cs[:, :, i].unsqueeze(-1))  # g_t
            d_dtx[:, k0:k1, i] = (Bs[:, :, i].unsqueeze(-2) @ g).squeeze(-2)
            dB[:, k0:k1, i] = matvec(g, dtxs[:, :, i])
            g.mul_(dec.at(i, k0, k1))  # now d_t g_t, the adjoint of h_{t-1}
            prev[i].mul_(g)  # d(log decay)_t = g_t d_t h_{t-1}
        if k0 == 0:
            dh0 = g[:, 0]
        da = prev[:L]  # [L, B, k, N, C]
        dA += (da * dts.permute(2, 0, 1, 3).unsqueeze(-2)).sum((0, 1, 2))
        d_dt[:, k0:k1] = da.mul_(A).sum(-2).permute(1, 2, 0, 3)
    return d_dt, d_dtx, dA, dB, dC, dh0


class SelectiveScan(torch.autograd.Function):
    """Chunked selective scan with a recomputing backward; see the module docstring."""

    @staticmethod
    def forward(ctx, dt, dtx, A, Bm, Cm, h0, L):  # type: ignore[override]
        y, h_last, H0 = _forward(dt, dtx, A, Bm, Cm, h0, L)
        ctx.save_for_backward(dt, dtx, A, Bm, Cm, H0)
        ctx.L = L
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):  # type: ignore[override]
        dt, dtx, A, Bm, Cm, H0 = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros(*dt.shape, dtype=dt.dtype, device=dt.device)
        if dh_last is None:
            dh_last = torch.zeros_like(H0[:, 0])
        grads = _backward(dt, dtx, A, Bm, Cm, H0, dy.contiguous(), dh_last, ctx.L)
        return (*grads, None)


# Eager even inside a compiled graph (run.compile=on): dynamo unrolls the scan's loops over
# the chunk into one large graph whose kernels ran its forward+backward 7x slower than eager
# at the cartpole preset's sizes (54 vs 395 ms, B=16, T=32, D=128, 1 thread) after a 3-minute
# compile, and 14x at T=256 (bench/compile.py's matmul-share profile); the code around the
# scan still compiles.
@torch.compiler.disable
def selective_scan(
    dt: Tensor,
    dtx: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor,
    reset: Tensor | None = None,
    chunk_size: int = 32,
) -> tuple[Tensor, Tensor]:
    """Run the selective SSM over a sequence in parallel.

    dt: [B, T, C] (> 0, after softplus); dtx: [B, T, C] (dt * x); A: [C, N] (< 0);
    B, C: [B, T, N]; h0: [B, C, N]; reset: [B, T] bool or None (True: decay 0 at t).
    Returns y: [B, T, C] (without the D skip) and the final state h_T: [B, C, N].
    """
    Bsz, T, Ch = dt.shape
    if reset is not None:
        # a reset makes the decay exactly 0: exp(A * huge) underflows to 0 for any A < 0, and
        # the decay's gradient g * d * h then vanishes there too (no NaN: nothing is inf * 0)
        dt = dt.masked_fill(reset.unsqueeze(-1), torch.finfo(dt.dtype).max)
    L = max(1, min(chunk_size, T))
    pad = (-T) % L
    if pad:
        # padding with dt = 0 and dtx = 0 leaves the state unchanged, so h_T stays exact
        dt, dtx, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (dt, dtx, B, C))
    dt, dtx, B, C = (_chunk(t.contiguous(), L) for t in (dt, dtx, B, C))
    # the scan keeps states as [.., N, C]: the long channel axis innermost vectorises best
    A_nc, h0_nc = A.T.contiguous(), h0.transpose(1, 2).contiguous()
    y, h_last = SelectiveScan.apply(dt, dtx, A_nc, B, C, h0_nc, L)
    return y.reshape(Bsz, T + pad, Ch)[:, :T], h_last.transpose(1, 2)
