"""Transformer backbone in the STORM style, with a bounded KV cache.

Each block is pre-norm: `x = x + Attn(LN(x)); x = x + MLP(LN(x))`, causal multi-head
self-attention over a sliding window of `context` tokens (the current token included)
and a 4x GELU MLP.

`forward` and `step` compute the same function. The window is the KV cache: `step` keeps
the last `context` keys and values of the current episode in a ring buffer, and `forward`
attends to that incoming cache, limits every query to its window and never lets a query
see a key from before an episode reset (a reset empties the cache).

Positions count tokens since the episode start. `positions="rotary"` (default) rotates
queries and keys by that count, so scores depend only on relative offsets and the cache
stores rotated keys. `positions="learned"` adds a learned embedding of
`position % context` to the block input: the positions *wrap* rather than clamp, so
every token of a full window carries a distinct embedding (a ring index; the current
token's own index tells where the ring starts), where clamping would give every token
after the first `context` the same one.

State per block (batch first, all zeros = empty cache):
  k: [B, context, H, dh] keys (rotated for rotary), slot `p % context` holds position p
  v: [B, context, H, dh]
  pos: [B] long, tokens seen since the episode start; `min(pos, context)` slots are valid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.sequence.base import Backbone, Block, LayerState, host_int, positive_int

ROPE_BASE = 10_000.0


def rotary(x: Tensor, pos: Tensor, base: float = ROPE_BASE) -> Tensor:
    """Rotate pairs (x_i, x_{i+dh/2}) by angle pos * base^(-2i/dh) (RoFormer eq. 34).

    x: [..., H, dh]; pos: long, broadcastable to x.shape[:-2]. Angles are formed in float64
    so that long episodes keep exact phases before the cast back to x's dtype.
    """
    dh = x.shape[-1]
    half = dh // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float64) * 2 / dh)
    angle = pos.to(torch.float64).unsqueeze(-1) * inv_freq  # [..., half]
    cos = angle.cos().to(x.dtype).unsqueeze(-2)  # [..., 1, half]
    sin = angle.sin().to(x.dtype).unsqueeze(-2)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def unroll_cache(cache: Tensor, pos: Tensor, n: int) -> Tensor:
    """The last `n` cached entries in time order: cache [B, C, ...], pos [B] -> [B, n, ...].

    Entry j of the result holds position `pos - n + j` (slot `(pos - n + j) % C`).
    """
    C = cache.shape[1]
    j = torch.arange(n, device=cache.device)
    slot = (pos.unsqueeze(1) - n + j) % C  # [B, n]
    idx = slot.view(*slot.shape, *([1] * (cache.dim() - 2))).expand(-1, -1, *cache.shape[2:])
    return cache.gather(1, idx)


def roll_into_cache(chrono: Tensor, pos: Tensor) -> Tensor:
    """Inverse of `unroll_cache` for n = C: chrono [B, C, ...] in time order ending at
    position pos - 1 -> ring layout where slot s holds position p with p % C == s."""
    C = chrono.shape[1]
    s = torch.arange(C, device=chrono.device)
    src = (s - pos.unsqueeze(1)) % C  # ring slot s <- chrono index (s - pos) mod C
    idx = src.view(*src.shape, *([1] * (chrono.dim() - 2))).expand(-1, -1, *chrono.shape[2:])
    return chrono.gather(1, idx)


class TransformerBlock(Block):
    """Pre-norm causal self-attention (windowed, cached) + MLP, both residual."""

    def __init__(
        self, d_model: int, n_heads: int, context: int, positions: str, dropout: float
    ) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.context = d_model, n_heads, context
        self.head_dim = d_model // n_heads
        self.positions = positions
        self.norm_attn = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )
        self.drop = nn.Dropout(dropout)
        if positions == "learned":
            self.pos_emb = nn.Parameter(torch.randn(context, d_model) * 0.02)

    def initial_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> LayerState:
        shape = (batch_size, self.context, self.n_heads, self.head_dim)
        return {
            "k": torch.zeros(shape, device=device, dtype=dtype),
            "v": torch.zeros(shape, device=device, dtype=dtype),
            "pos": torch.zeros(batch_size, device=device, dtype=torch.long),
        }

    def _qkv(self, x: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: [..., D], pos: long [...] -> q, k, v: [..., H, dh] with positions applied."""
        u = self.norm_attn(x)
        if self.positions == "learned":
            u = u + self.pos_emb[pos % self.context]
        q, k, v = self.qkv(u).unflatten(-1, (3, self.n_heads, self.head_dim)).unbind(-3)
        if self.positions == "rotary":
            q, k = rotary(q, pos), rotary(k, pos)
        return q, k, v

    def _mlp(self, x: Tensor) -> Tensor:
        return x + self.drop(self.mlp(self.norm_mlp(x)))

    # -- parallel path ----------------------------------------------------------------
    def forward(
        self, x: Tensor, state: LayerState, reset: Tensor | None
    ) -> tuple[Tensor, LayerState]:
        """x: [B, T, D], state (k, v, pos), reset: [B, T] bool or None."""
        B, T, D = x.shape
        C, H, dh = self.context, self.n_heads, self.head_dim
        dev = x.device
        t = torch.arange(T, device=dev)
        pos0 = state["pos"]
        # segment id of each step: 0 until the first reset in this call; the incoming
        # cache belongs to segment 0
        if reset is None:
            seg = torch.zeros(B, T, dtype=torch.long, device=dev)
            pos = pos0.unsqueeze(1) + t
        else:
            seg = reset.long().cumsum(1)
            last = torch.where(reset, t, torch.full_like(t, -1)).cummax(1).values
            pos = torch.where(last >= 0, t - last, pos0.unsqueeze(1) + t)
        q, k, v = self._qkv(x, pos)  # [B, T, H, dh]

        # at most C-1 past tokens fit in any query's window; fewer if the cache is short
        P = min(C - 1, host_int(pos0.clamp(max=C).max()))
        k_past, v_past = unroll_cache(state["k"], pos0, P), unroll_cache(state["v"], pos0, P)
        past_ok = (pos0.unsqueeze(1) - P + torch.arange(P, device=dev)) >= 0  # [B, P]

        # queries in chunks of Q, each against the keys of its window [start-W, end):
        # one chunk when the whole call fits, else chunks of C so that cost is O(T * C)
        if T + P <= 2 * C:
            Q, W = T, P
        else:
            Q, W = C, C - 1
        n = -(-T // Q)
        pad_l, pad_r = W - P, n * Q - T
        def framed(past: Tensor, new: Tensor) -> Tensor:  # [B, W + n*Q, H, dh]
            return torch.cat(
                [new.new_zeros(B, pad_l, H, dh), past, new, new.new_zeros(B, pad_r, H, dh)], 1
            )

        k_all, v_all = framed(k_past, k), framed(v_past, v)
        # per-key validity and segment; right-pad keys are valid so that the (discarded)
        # right-pad queries never face a fully masked row, which would give NaN gradients
        ok_all = torch.cat([
            past_ok.new_zeros(B, pad_l), past_ok,
            past_ok.new_ones(B, T + pad_r),
        ], 1)
        seg_all = torch.cat([seg.new_zeros(B, W), seg, seg[:, -1:].expand(B, pad_r)], 1)
        time_all = torch.arange(-W, T + pad_r, device=dev)
        seg_q = torch.cat([seg, seg[:, -1:].expand(B, pad_r)], 1).view(B, n, Q, 1)
        time_q = torch.arange(n * Q, device=dev).view(1, n, Q, 1)

        L = Q + W  # keys per chunk
        time_k = time_all.unfold(0, L, Q).view(1, n, 1, L)
        mask = (
            (time_k <= time_q)
            & (time_k > time_q - C)
            & ok_all.unfold(1, L, Q).unsqueeze(2)
            & (seg_all.unfold(1, L, Q).unsqueeze(2) == seg_q)
        )  # [B, n, Q, L]

        def chunks(z: Tensor) -> Tensor:  # [B, S, H, dh] -> [B*n, H, L, dh]
            return z.unfold(1, L, Q).permute(0, 1, 2, 4, 3).reshape(B * n, H, L, dh)

        qc = F.pad(q, (0, 0, 0, 0, 0, pad_r)).view(B, n, Q, H, dh).transpose(2, 3)
        o = F.scaled_dot_product_attention(
            qc.reshape(B * n, H, Q, dh), chunks(k_all), chunks(v_all),
            attn_mask=mask.view(B * n, 1, Q, L),
        )  # [B*n, H, Q, dh]
        o = o.view(B, n, H, Q, dh).transpose(2, 3).reshape(B, n * Q, D)[:, :T]
        y = self._mlp(x + self.drop(self.out(o)))

        # new cache: the last C keys in time order, emptied where they are not of the
        # current episode (their position since the episode start would be negative)
        pos_end = pos[:, -1] + 1
        k_hist = torch.cat([unroll_cache(state["k"], pos0, C), k], 1)[:, -C:]
        v_hist = torch.cat([unroll_cache(state["v"], pos0, C), v], 1)[:, -C:]
        keep = (pos_end.unsqueeze(1) - C + torch.arange(C, device=dev)) >= 0
        keep = keep.to(x.dtype).view(B, C, 1, 1)
        new_state = {
            "k": roll_into_cache(k_hist * keep, pos_end),
            "v": roll_into_cache(v_hist * keep, pos_end),
            "pos": pos_end,
        }
        return y, new_state

    # -- recurrent path ---------------------------------------------------------------
    def step(
        self, x: Tensor, state: LayerState, overwrite: bool = False
    ) -> tuple[Tensor, LayerState]:
        """x: [B, D], state (k, v, pos) -> y: [B, D]; writes one slot of the ring buffer."""
        B, D = x.shape
        C = self.context
        pos = state["pos"]
        q, k, v = self._qkv(x, pos)  # [B, H, dh]
        slot = torch.arange(C, device=x.device) == (pos % C).unsqueeze(1)  # [B, C]
        write = slot.view(B, C, 1, 1)
        # out of place: a state may be reused (several candidates from one start state)
        k_cache = torch.where(write, k.unsqueeze(1), state["k"])
        v_cache = torch.where(write, v.unsqueeze(1), state["v"])
        valid = torch.arange(C, device=x.device) <= pos.clamp(max=C - 1).unsqueeze(1)
        o = F.scaled_dot_product_attention(
            q.unsqueeze(2),  # [B, H, 1, dh]
            k_cache.transpose(1, 2),
            v_cache.transpose(1, 2),
            attn_mask=valid.view(B, 1, 1, C),
        )  # [B, H, 1, dh]
        y = self._mlp(x + self.drop(self.out(o.reshape(B, D))))
        return y, {"k": k_cache, "v": v_cache, "pos": pos + 1}


class Transformer(Backbone):
    name = "transformer"


def build(
    d_model: int,
    n_layers: int,
    n_heads: int = 8,
    context: int = 64,
    positions: str = "rotary",
    dropout: float = 0.0,
) -> Backbone:
    """STORM-style Transformer: `n_layers` pre-norm blocks, `n_heads` heads, a window and
    KV cache of `context` tokens (current one included), rotary or learned positions."""
    if not positive_int(n_heads) or d_model % n_heads:
        raise ValueError(
            f"n_heads={n_heads!r} must be a positive divisor of d_model={d_model}; "
            "pick e.g. n_heads=8 with d_model a multiple of 8"
        )
    if not positive_int(context):
        raise ValueError(f"context must be a positive integer (e.g. 64), got {context!r}")
    if positions not in ("rotary", "learned"):
        raise ValueError(f"positions must be 'rotary' or 'learned', got {positions!r}")
    if positions == "rotary" and (d_model // n_heads) % 2:
        raise ValueError(
            f"rotary positions need an even head size, got d_model/n_heads = "
            f"{d_model // n_heads}; change n_heads or use positions='learned'"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
            or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    blocks = [TransformerBlock(d_model, n_heads, context, positions, dropout)
              for _ in range(n_layers)]
    return Transformer(d_model, blocks)

