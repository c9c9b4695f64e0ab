"""State-space duality (SSD): the chunked scan of Mamba-2 (Dao & Gu, 2024, Sec. 6).

The recurrence, per head h (scalar decay, one group so B and C are shared by all heads):

    h_t = a_t h_{t-1} + dt_t x_t B_tᵀ        h_t: [P, N], a_t = exp(dt_t A_h)
    y_t = C_t h_t                            (the skip term D x_t is added by the caller)

`ssd_chunked` evaluates it exactly by splitting time into chunks of Q steps: inside a chunk
the map x -> y is the masked "attention" (C Bᵀ ⊙ L) x with L[i, j] = exp(sum_{j<k<=i} dA_k);
between chunks only the [P, N] state travels. Everything heavy is a matmul; the Python loop
runs over chunks (T/Q iterations of a small elementwise update), never over time.

Episode resets never enter the exponent (a log-decay of -inf would make NaN in exp and in
its gradient); instead they cut the sums through masks that depend on the row only, so
they are shared by all heads and folded into C Bᵀ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reverie.sequence.base import eager_float, matvec


def segsum(a_cum: Tensor) -> Tensor:
    """Log of the decay from step j to step i inside a chunk, for i >= j.

    a_cum: [..., Q] inclusive cumulative sum of log-decays (all <= 0).
    Returns [..., Q, Q] with out[i, j] = a_cum[i] - a_cum[j] (= sum_{j<k<=i} dA_k) for
    i >= j and 0 above the diagonal. The upper triangle is clamped rather than set to -inf
    so that exp() and its gradient stay finite; callers mask it out multiplicatively.
    """
    return (a_cum.unsqueeze(-1) - a_cum.unsqueeze(-2)).clamp(max=0.0)


def reset_masks(
    reset: Tensor, chunk_size: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor]:
    """Which sums a reset cuts, chunk by chunk. reset: [B, T] bool with T a multiple of Q.

    Returns (as float 0/1 masks):
      same:  [B, c, Q, Q]  no reset in (j, i]      (input j reaches output i in-chunk)
      tail:  [B, c, Q]     no reset in (j, Q-1]    (input j reaches the chunk-end state)
      head:  [B, c, Q]     no reset in [0, i]      (the incoming state reaches output i)
    """
    B, T = reset.shape
    seg = reset.view(B, T // chunk_size, chunk_size).to(torch.int32).cumsum(-1)
    same = seg.unsqueeze(-1) == seg.unsqueeze(-2)
    tail = seg == seg[..., -1:]
    head = seg == 0
    return same.to(dtype), tail.to(dtype), head.to(dtype)


def _within_segments(t: Tensor, same: Tensor | None) -> Tensor:
    """t [..., Q, Q] with its entries (i, j) zeroed unless j <= i and no reset falls in
    (j, i] (`same`, from `reset_masks`): the pairs an input reaches an output in-chunk."""
    Q = t.shape[-1]
    causal = torch.ones(Q, Q, dtype=torch.bool, device=t.device).tril()
    return t * (same * causal) if same is not None else t.masked_fill(~causal, 0.0)


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    h0: Tensor | None = None,
    reset: Tensor | None = None,
    D: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked SSD scan.

    x: [Bt, T, H, P] (may be a strided view); dt: [Bt, T, H] (> 0); A: [H] (< 0);
    B, C: [Bt, T, N]; h0: [Bt, H, P, N] state before step 0 (None = zeros);
    reset: [Bt, T] bool or None (True at t: the state is zeroed before step t's input);
    D: [H] skip weight or None (y_t += D x_t).
    Returns y: [Bt, T, H, P] and the final state h_T: [Bt, H, P, N].

    Eager float32/float64 on CPU runs `_SSD`, whose backward is written by hand (first order
    only: no double backward or forward-mode AD); compiled graphs, autocast and other
    devices differentiate the same forward (`_forward`) by autograd.
    """
    T = x.shape[1]
    Q = min(chunk_size, T)  # short sequences (imagination contexts) need no padding
    pad = (-T) % Q
    if pad:
        # dt = 0 on padding: decay 1 and no input, so the final state passes through intact
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, pad))
        if reset is not None:
            reset = F.pad(reset, (0, pad))
    masks = (None, None, None) if reset is None else reset_masks(reset, Q, x.dtype)
    operands = (x, dt, A, B, C, h0, D)
    if eager_float(*operands, cpu=True):
        y, h = _SSD.apply(*operands, *masks, Q)
    else:
        y, h, _ = _forward(*operands, *masks, Q)
    return y[:, :T], h


def _forward(x, dt, A, B, C, h0, D, same, tail, head, Q: int):
    """The chunked scan over T a multiple of Q, and what its backward (`_SSD`) reuses.

    Heads-first chunk layout [Bt, nc, H, Q, .]: the only big copy is x_h (one pass); dt and
    the decays are folded into the small [Q, Q] / [Q, N] operands instead of x."""
    Bt, T, H, P = x.shape
    N = B.shape[-1]
    nc = T // Q
    x_h = x.reshape(Bt, nc, Q, H, P).transpose(2, 3).contiguous()  # [Bt, nc, H, Q, P]
    dt_h = dt.reshape(Bt, nc, Q, H).transpose(2, 3)  # [Bt, nc, H, Q]
    a_cum = (dt_h * A[:, None]).cumsum(-1)  # inclusive log-decay from chunk start, <= 0
    Bc = B.reshape(Bt, nc, Q, N)
    Cc = C.reshape(Bt, nc, Q, N)

    # -- intra-chunk: y_i = sum_{j<=i} (C_i·B_j) L[i, j] dt_j x_j, C·Bᵀ shared by heads
    CB = _within_segments(Cc @ Bc.transpose(-1, -2), same)  # [Bt, nc, Q, Q]
    if D is None:
        CBdt = CB.unsqueeze(2) * dt_h.unsqueeze(-2)  # [Bt, nc, H, Q, Q]
    else:
        # the skip term D x_i rides on the diagonal (L[i, i] = 1): no extra passes over y
        diag = D[:, None, None] * torch.eye(Q, dtype=x.dtype, device=x.device)  # [H, Q, Q]
        CBdt = torch.addcmul(diag, CB.unsqueeze(2), dt_h.unsqueeze(-2))
    L = torch.exp(segsum(a_cum))
    M = L * CBdt

    # -- chunk-end states from each chunk's own inputs: S_c = sum_j decay(j->end) dt_j x_j B_jᵀ
    e_tail = torch.exp(a_cum[..., -1:] - a_cum)  # [Bt, nc, H, Q]
    if tail is not None:
        e_tail = e_tail * tail.unsqueeze(2)
    w_tail = e_tail * dt_h
    Bw = Bc.unsqueeze(2) * w_tail.unsqueeze(-1)  # [Bt, nc, H, Q, N]
    S = x_h.transpose(-1, -2) @ Bw  # [Bt, nc, H, P, N]

    # -- pass states between chunks: h_c = decay_c h_{c-1} + S_c (T/Q small updates)
    chunk_decay = torch.exp(a_cum[..., -1])  # [Bt, nc, H]
    if head is not None:
        chunk_decay = chunk_decay * head[..., -1:]
    h = x.new_zeros(Bt, H, P, N) if h0 is None else h0
    h_in = []
    for decay_c, S_c in zip(chunk_decay.unbind(1), S.unbind(1)):
        h_in.append(h)
        h = torch.addcmul(S_c, decay_c[:, :, None, None], h)
    h_in = torch.stack(h_in, 1)  # [Bt, nc, H, P, N]

    # -- incoming state's contribution exp(a_cum_i) C_i h_inᵀ: one GEMM per chunk over all
    # heads ([Q, N] @ [N, H*P]); the per-head decay is applied to its output afterwards
    y_state = (Cc @ h_in.view(Bt, nc, H * P, N).transpose(-1, -2)).view(Bt, nc, Q, H, P)
    w_head = torch.exp(a_cum)  # [Bt, nc, H, Q]
    if head is not None:
        w_head = w_head * head.unsqueeze(2)
    w_head_t = w_head.transpose(2, 3).unsqueeze(-1)
    # autograd (the composite form) and dynamo take no out=
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        y = y_state * w_head_t  # [Bt, nc, Q, H, P], contiguous
        y.add_((M @ x_h).transpose(2, 3))
    else:  # one pass, written over y_state (which nothing else reads)
        y = torch.addcmul((M @ x_h).transpose(2, 3), y_state, w_head_t, out=y_state)
    saved = (x_h, dt_h, CB, L, M, e_tail, w_tail, Bw, chunk_decay, h_in, w_head)
    return y.reshape(Bt, nc * Q, H, P), h, saved


class _SSD(torch.autograd.Function):
    """`_forward` with a hand-written backward (eager CPU float; see `ssd_chunked`).

    Autograd of the composite makes a dozen passes over the [Bt, nc, H, Q, Q] decay
    products (clamp and exp gradients, two products per factor) and adds the two gradients
    of x_h in a pass of its own. Here, with M = L ⊙ G (L = exp(segsum), G = C·Bᵀ dt + D):
    the log-decay gradient is dM ⊙ M (dL ⊙ L), G's is dM ⊙ L, written over dM, and x's
    second gradient accumulates into its first in the GEMM (baddbmm). Every term is the
    chain rule of `_forward`, checked against its autograd in float64 (tests/test_mamba2.py).
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, D, same, tail, head, Q):
        with torch.no_grad():
            y, h, saved = _forward(x, dt, A, B, C, h0, D, same, tail, head, Q)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(A, B, C, same, *saved)
        ctx.shape, ctx.Q, ctx.has_D, ctx.has_h0 = x.shape, Q, D is not None, h0 is not None
        return y, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dhT):
        A, B, C, same, x_h, dt_h, CB, L, M, e_tail, w_tail, Bw, decay, h_in, w_head = \
            ctx.saved_tensors
        Bt, T, H, P = ctx.shape
        Q, N = ctx.Q, B.shape[-1]
        nc = T // Q
        Bc, Cc = B.reshape(Bt, nc, Q, N), C.reshape(Bt, nc, Q, N)
        if dy is None:  # only the final state is used
            dy = x_h.new_zeros(Bt, T, H, P)
        dy_h = dy.reshape(Bt, nc, Q, H, P).transpose(2, 3).contiguous()  # [Bt, nc, H, Q, P]

        # -- the incoming states' term: y_state[i] = w_head[i] C_i h_inᵀ
        E = dy_h @ h_in  # [Bt, nc, H, Q, N]
        dC = (E * w_head.unsqueeze(-1)).sum(2)  # [Bt, nc, Q, N]
        dh_in = dy_h.transpose(-1, -2) @ (Cc.unsqueeze(2) * w_head.unsqueeze(-1))
        da_cum = torch.linalg.vecdot(E, Cc.unsqueeze(2)).mul_(w_head)  # w_head = exp(a_cum)
        del E

        # -- intra-chunk: y = M x_h with M = L ⊙ G
        dM = dy_h @ x_h.transpose(-1, -2)  # [Bt, nc, H, Q, Q]
        dx_h = M.transpose(-1, -2) @ dy_h  # [Bt, nc, H, Q, P]
        dseg = dM * M  # the gradient of segsum (dL ⊙ L); zero above the diagonal, as M is
        da_cum += dseg.sum(-1)
        da_cum -= dseg.sum(-2)
        del dseg
        dG = dM.mul_(L)
        dD = dG.diagonal(0, -2, -1).sum((0, 1, 3)) if ctx.has_D else None  # L[i, i] = 1
        ddt_h = (dG * CB.unsqueeze(2)).sum(-2)  # [Bt, nc, H, Q]: G = C·Bᵀ dt_j (+ D)
        dCB = (dG * dt_h.unsqueeze(-2)).sum(2)  # [Bt, nc, Q, Q]
        del dM, dG  # one buffer
        dCB = _within_segments(dCB, same)
        dC += dCB @ Bc
        dB = dCB.transpose(-1, -2) @ Cc

        # -- the states between chunks, backwards: g is the gradient of the state after
        # chunk c (h_c = decay_c h_{c-1} + S_c, and h_{c-1} is chunk c's h_in)
        g = torch.zeros_like(h_in[:, 0]) if dhT is None else dhT
        dS, ddecay = [], []
        for c in range(nc - 1, -1, -1):
            dS.append(g)
            ddecay.append(torch.linalg.vecdot(g.flatten(-2), h_in[:, c].flatten(-2)))
            g = torch.addcmul(dh_in[:, c], decay[:, c, :, None, None], g)
        dh0 = g if ctx.has_h0 else None
        dS = torch.stack(dS[::-1], 1)  # [Bt, nc, H, P, N]

        # -- chunk-end states S = x_hᵀ Bw, Bw = B w_tail: x's second gradient accumulates
        # into its first in the GEMM
        dx_h.view(-1, Q, P).baddbmm_(Bw.view(-1, Q, N), dS.view(-1, P, N).transpose(1, 2))
        dBw = x_h @ dS  # [Bt, nc, H, Q, N]
        dB += (dBw * w_tail.unsqueeze(-1)).sum(2)
        dw_tail = torch.linalg.vecdot(dBw, Bc.unsqueeze(2))  # [Bt, nc, H, Q]
        del dBw
        ddt_h += dw_tail * e_tail  # w_tail = e_tail dt, e_tail = exp(a_cum[-1] - a_cum)
        t = dw_tail.mul_(w_tail)
        da_cum -= t
        # a_cum[-1] moves every tail decay of its chunk and the chunk's decay
        da_cum[..., -1] += t.sum(-1) + torch.stack(ddecay[::-1], 1) * decay

        # -- a_cum = cumsum(dt A): the gradient of a cumulative sum is a reversed one
        da = da_cum.flip(-1).cumsum(-1).flip(-1)
        ddt_h += da * A[:, None]
        dA = (da * dt_h).sum((0, 1, 3))
        dx = dx_h.transpose(2, 3).reshape(Bt, T, H, P)
        ddt = ddt_h.transpose(2, 3).reshape(Bt, T, H)
        return (dx, ddt, dA, dB.reshape(Bt, T, N), dC.reshape(Bt, T, N), dh0, dD,
                None, None, None, None)


def ssd_step(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h: Tensor
) -> tuple[Tensor, Tensor]:
    """One step of the recurrence. x: [Bt, H, P]; dt: [Bt, H]; A: [H]; B, C: [Bt, N];
    h: [Bt, H, P, N]. Returns y: [Bt, H, P] and the new state."""
    Bt, H, P, N = h.shape
    a = torch.exp(dt * A)  # [Bt, H]
    xdt = x * dt.unsqueeze(-1)  # [Bt, H, P]
    # y = C·h_new = a (h C) + (dt x)(B·C): both terms read the old state once, as one
    # [H·P, N] x [N] matvec per row (a batch of Bt, not Bt·H tiny ones), instead of a
    # third pass over the freshly written [Bt, H, P, N] state; `matvec` as a row vector
    # times the transposed state (bmm with a one-column result was 4x slower here)
    hC = matvec(h.reshape(Bt, H * P, N), C).view(Bt, H, P)
    y = torch.addcmul(xdt * (B * C).sum(-1)[:, None, None], a[:, :, None], hC)
    # one new state tensor, updated in place: a second fresh [Bt, H, P, N] buffer per
    # step costs more than the arithmetic (page faults on every large allocation)
    h = h * a[:, :, None, None]
    h.addcmul_(xdt.unsqueeze(-1), B[:, None, None, :])
    return y, h
