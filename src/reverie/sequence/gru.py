"""GRU backbone: pre-norm residual blocks `y = x + GRU(LayerNorm(x))`.

The parallel path is one fused `nn.GRU` call (oneDNN on CPU, cuDNN on GPU). Episode
resets are handled without a per-step Python loop: every episode segment of every row
becomes its own row of a padded batch, which one `nn.GRU` call runs from the right
initial state (the carried state for a row's first segment, zero for every segment that
starts at a reset). Right padding is harmless because a GRU is causal. `step` calls the
same weights through `torch.gru_cell`, so both paths compute the same function.

State per block: `{"h": [B, D]}`, zero = "no history" (the `nn.GRU` default h0).

Under torch.compile (run.compile=on) a block runs eagerly: dynamo does not trace `nn.GRU`
(its experimental `allow_rnn` unrolled the recurrence and took 150 s to compile a 2-layer
model on this CPU), and the segment packing depends on the data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reverie.sequence.base import Backbone, Block, LayerState, host_int


def pack_segments(reset: Tensor) -> tuple[Tensor, Tensor, int, int]:
    """Map every step to (segment row, position in segment) of a padded segment batch.

    reset: [B, T] bool. Returns `seg: [B, T]` (global segment index, row-major, so the
    first segment of row b is `seg[b, 0]`), `pos: [B, T]`, the number of segments N and
    the longest segment length L.
    """
    B, T = reset.shape
    start = reset.clone()
    start[:, 0] = True
    seg = start.flatten().long().cumsum(0).view(B, T) - 1
    idx = torch.arange(T, device=reset.device).expand(B, T)
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values
    pos = idx - first
    return seg, pos, host_int(seg[-1, -1]) + 1, host_int(pos.max()) + 1


class GRUBlock(Block):
    """x + GRU(LayerNorm(x)) with a single-layer `nn.GRU` of width d_model."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.norm = nn.LayerNorm(d_model)
        self.gru = nn.GRU(d_model, d_model, num_layers=1, batch_first=True)

    def initial_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> LayerState:
        return {"h": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype)}

    @torch.compiler.disable
    def forward(
        self, x: Tensor, state: LayerState, reset: Tensor | None
    ) -> tuple[Tensor, LayerState]:
        """x: [B, T, D], state {"h": [B, D]}, reset: [B, T] bool or None."""
        u = self.norm(x)
        h0 = state["h"]
        if reset is None:
            out, _ = self.gru(u, h0.unsqueeze(0).contiguous())
            return x + out, {"h": out[:, -1]}
        B, T, D = x.shape
        seg, pos, n_seg, max_len = pack_segments(reset)
        packed = u.new_zeros(n_seg, max_len, D).index_put((seg, pos), u)
        # only a row's first segment continues the carried state, and only if it is not
        # itself a reset
        keep = (~reset[:, 0]).to(h0.dtype).unsqueeze(1)
        h0_seg = h0.new_zeros(n_seg, D).index_copy(0, seg[:, 0], h0 * keep)
        out_seg, _ = self.gru(packed, h0_seg.unsqueeze(0))
        out = out_seg[seg, pos]  # [B, T, D]
        return x + out, {"h": out[:, -1]}

    @torch.compiler.disable
    def step(
        self, x: Tensor, state: LayerState, overwrite: bool = False
    ) -> tuple[Tensor, LayerState]:
        """x: [B, D], state {"h": [B, D]} -> y: [B, D]."""
        g = self.gru
        h = torch.gru_cell(
            self.norm(x), state["h"], g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0
        )
        return x + h, {"h": h}


class GRU(Backbone):
    name = "gru"


def build(d_model: int, n_layers: int, **kwargs: Any) -> Backbone:
    """A stack of `n_layers` pre-norm residual GRU blocks of width `d_model` (no options)."""
    if kwargs:
        raise ValueError(
            f"gru takes no options, got {sorted(kwargs)}; remove them "
            "(only d_model and n_layers apply)"
        )
    return GRU(d_model, [GRUBlock(d_model) for _ in range(n_layers)])
