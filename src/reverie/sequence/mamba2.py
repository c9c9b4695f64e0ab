"""Mamba-2 backbone (Dao & Gu, "Transformers are SSMs", ICML 2024), pure PyTorch.

One block: x + out_proj(gated_rmsnorm(SSD(conv(in_proj(rmsnorm(x)))), z)). The sequence
mixer is the chunked SSD scan of `ssd.py` (matmuls); `step` is the O(1) recurrence.

    m = build(d_model=512, n_layers=2)          # Drama's world-model backbone
    y, state = m(x, m.initial_state(B), reset)  # x: [B, T, 512]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.sequence import ssd_kernel
from reverie.sequence.base import (
    Backbone,
    Block,
    LayerState,
    causal_conv,
    causal_conv_step,
    column_major,
    eager_float,
    full,
    low_precision,
    positive_int,
    scan_operands,
)
from reverie.sequence.ssd import ssd_chunked, ssd_step


def _rms_scale(g: Tensor, eps: float) -> Tensor:
    """1 / sqrt(mean(g²) + eps) over the last dim, [..., 1]: one read of g (vector_norm),
    where the pow/mean/rsqrt chain of `torch.rms_norm` makes passes of its own on CPU."""
    n = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
    return torch.rsqrt(n.square() / g.shape[-1] + eps)


class _FusedRMSNorm(torch.autograd.Function):
    """`rms_normalize` with a hand-written backward that works in place.

    out = g r with g = silu(z) y (or g = y without a gate) and r = rms_scale(g). Autograd
    of the composite form saves silu(z), g and the norm and makes about a dozen passes over
    [B, T, d] in backward, most into fresh buffers; this saves z, y, out and r, and its
    backward is a row dot product and five in-place passes:

        dg = r (dout - out mean(dout out))     (the mean over the last dim)
        dy = dg silu(z),   dz = dg y silu'(z)
    """

    @staticmethod
    def forward(ctx, y: Tensor, z: Tensor | None, eps: float) -> Tensor:
        if z is None:
            r = _rms_scale(y, eps)
            out = y * r
            ctx.save_for_backward(None, None, out, r)
            return out
        g = F.silu(z).mul_(y)
        r = _rms_scale(g, eps)
        out = g.mul_(r)
        ctx.save_for_backward(y, z, out, r)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        y, z, out, r = ctx.saved_tensors
        c = torch.linalg.vecdot(dout, out).unsqueeze(-1).mul_(r / out.shape[-1])
        dg = (dout * r).addcmul_(out, c, value=-1.0)
        if z is None:
            return dg, None, None
        need_y, need_z, _ = ctx.needs_input_grad
        dy = F.silu(z).mul_(dg) if need_y else None
        dz = None
        if need_z:  # silu'(z) times dg y, in dg's buffer
            dz = torch.ops.aten.silu_backward.grad_input(dg.mul_(y), z, grad_input=dg)
        return dy, dz, None


def rms_normalize(y: Tensor, gate: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """RMSNorm of y (of silu(gate) y when a gate is given, Mamba-2's gated norm) over the
    last dim, without gain: the gain is folded into the next Linear.

    Eager float32/float64 with a gate of y's shape runs `_FusedRMSNorm`, which is
    first-order only (no double backward or forward-mode AD; its output is saved, so it must
    not be modified in place); compiled graphs (inductor fuses the composite itself),
    autocast, bf16 and a broadcast gate run the composite form.
    """
    if not eager_float(y, gate) or (gate is not None and gate.shape != y.shape):
        g = y if gate is None else F.silu(gate) * y
        return g * _rms_scale(g, eps)
    return _FusedRMSNorm.apply(y, gate, eps)


class Mamba2Block(Block):
    """Residual Mamba-2 block. State: conv [B, K-1, d_inner + 2N], ssm [B, H, P, N]."""

    def __init__(
        self,
        d_model: int,
        d_state: int,
        expand: int,
        head_dim: int,
        chunk_size: int,
        d_conv: int,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        self.d_inner, self.d_state, self.head_dim = d_inner, d_state, head_dim
        self.n_heads = d_inner // head_dim
        self.chunk_size, self.d_conv = chunk_size, d_conv
        self.conv_dim = d_inner + 2 * d_state
        H = self.n_heads

        self.norm_weight = nn.Parameter(torch.ones(d_model))  # RMSNorm gain before in_proj
        # order of the projection: [z (d_inner), x (d_inner), B (N), C (N), dt (H)]
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * d_state + H, bias=False)
        bound = 1.0 / math.sqrt(d_conv)  # nn.Conv1d's default for a depthwise kernel
        self.conv_weight = nn.Parameter(column_major(
            torch.empty(self.conv_dim, d_conv).uniform_(-bound, bound)))
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim).uniform_(-bound, bound))
        # dt = softplus(dt_raw + dt_bias) starts log-uniform in [dt_min, dt_max] (paper init)
        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(H))
        self.out_norm_weight = nn.Parameter(torch.ones(d_inner))  # gated-RMSNorm gain
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        # `step(overwrite=True)` by reverie.sequence.ssd_kernel (run.compile=on sets it)
        self.step_kernel = False

    def initial_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> LayerState:
        return {
            "conv": torch.zeros(batch_size, self.d_conv - 1, self.conv_dim, device=device,
                                dtype=dtype),
            "ssm": torch.zeros(batch_size, self.n_heads, self.head_dim, self.d_state,
                               device=device, dtype=dtype),
        }

    def _input(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """RMSNorm + in_proj: x [..., D] -> z [..., d_inner], xBC [..., conv_dim], dt [..., H]."""
        w = self.in_proj.weight * self.norm_weight  # the norm's gain, folded into the GEMM
        zxbcdt = F.linear(rms_normalize(x), w)
        z, xBC, dt = zxbcdt.split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        return z, xBC, F.softplus(full(dt) + self.dt_bias)  # dt in float32 under bf16 too

    def _output(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """Gated RMSNorm (norm of y·silu(z), Mamba-2's default) then out_proj, plus residual."""
        w = self.out_proj.weight * self.out_norm_weight
        if low_precision(self.A_log):  # a bf16 block: its float32 scan output back to bf16
            y = y.to(x.dtype)
        g = rms_normalize(y, gate=z)
        if torch.is_autocast_enabled(x.device.type):
            # autocast would run addmm's residual add in bf16 too: the residual stream stays
            # in x's dtype, as every other backbone's does
            return x + F.linear(g, w)
        return torch.addmm(x.flatten(0, -2), g.flatten(0, -2), w.t()).view_as(x)

    def forward(
        self, x: Tensor, state: LayerState, reset: Tensor | None
    ) -> tuple[Tensor, LayerState]:
        """x: [B, T, D] -> [B, T, D]; reset: [B, T] bool or None."""
        return self._forward(x, state, reset, last=False)

    def forward_last(
        self, x: Tensor, state: LayerState, reset: Tensor | None
    ) -> tuple[Tensor, LayerState]:
        """`forward` with the gated norm and out_proj at the last position only."""
        return self._forward(x, state, reset, last=True)

    def _forward(
        self, x: Tensor, state: LayerState, reset: Tensor | None, last: bool
    ) -> tuple[Tensor, LayerState]:
        Bt, T, _ = x.shape
        H, P, N = self.n_heads, self.head_dim, self.d_state
        z, xBC, dt = self._input(x)
        conv, new_conv = causal_conv(xBC, self.conv_weight, self.conv_bias, state["conv"], reset)
        xs, B, C = F.silu(conv).split([self.d_inner, N, N], dim=-1)
        xs, A, B, C, D, h = scan_operands(self.A_log, xs.reshape(Bt, T, H, P),
                                          -torch.exp(self.A_log), B, C, self.D, state["ssm"])
        y, h = ssd_chunked(xs, dt, A, B, C, self.chunk_size, h, reset, D)
        y = y.reshape(Bt, T, self.d_inner)
        if last:
            x, y, z = x[:, -1:], y[:, -1:], z[:, -1:]
        out = self._output(x, y, z)
        return out, {"conv": new_conv, "ssm": h.to(state["ssm"].dtype)}

    def step(
        self, x: Tensor, state: LayerState, overwrite: bool = False
    ) -> tuple[Tensor, LayerState]:
        """x: [B, D] -> [B, D], one token. With `overwrite` and `step_kernel` (run.compile=on)
        and without autograd, the new SSM state and conv prefix are written over the old ones'
        tensors by reverie.sequence.ssd_kernel (one pass over each instead of two or three)."""
        Bt = x.shape[0]
        H, P, N = self.n_heads, self.head_dim, self.d_state
        z, xBC, dt = self._input(x)
        kernels = overwrite and self.step_kernel and not torch.is_grad_enabled()
        prefix = state["conv"]
        if kernels and ssd_kernel.conv_serves(xBC, self.conv_weight, self.conv_bias, prefix):
            conv, new_conv = ssd_kernel.conv_step_(xBC, self.conv_weight, self.conv_bias,
                                                   prefix), prefix
        else:
            conv, new_conv = causal_conv_step(xBC, self.conv_weight, self.conv_bias, prefix)
        xs, B, C = F.silu(conv).split([self.d_inner, N, N], dim=-1)
        xs, A, B, C, D, h = scan_operands(self.A_log, xs.reshape(Bt, H, P),
                                          -torch.exp(self.A_log), B, C, self.D, state["ssm"])
        if kernels and ssd_kernel.serves(xs, dt, A, B, C, D, h):
            y = ssd_kernel.ssd_step_(xs, dt, A, B, C, D, h)
        else:
            y, h = ssd_step(xs, dt, A, B, C, h)
            y = y + xs * D[:, None]
        out = self._output(x, y.reshape(Bt, self.d_inner), z)
        return out, {"conv": new_conv, "ssm": h.to(state["ssm"].dtype)}


class Mamba2(Backbone):
    """A stack of Mamba-2 blocks with a final LayerNorm."""

    name = "mamba2"


def build(
    d_model: int,
    n_layers: int,
    *,
    d_state: int = 16,
    expand: int = 2,
    head_dim: int = 64,
    chunk_size: int = 32,
    d_conv: int = 4,
) -> Mamba2:
    """Mamba-2 backbone; defaults are Drama's (d_state 16, expand 2, head_dim 64).

    chunk_size 32 was the fastest on a 2-core CPU at D=512 (T=256 and 1024): smaller chunks
    shrink the [Q, Q] decay tensors, larger ones the per-chunk [P, N] states.
    """
    for key, val in (("d_state", d_state), ("expand", expand), ("head_dim", head_dim),
                     ("chunk_size", chunk_size), ("d_conv", d_conv)):
        if not positive_int(val):
            raise ValueError(f"mamba2 {key} must be a positive integer, got {val!r}")
    d_inner = expand * d_model
    if d_inner % head_dim:
        ok = [p for p in range(1, d_inner + 1) if d_inner % p == 0]
        raise ValueError(
            f"mamba2 needs head_dim to divide d_inner = expand*d_model = {d_inner}; got "
            f"head_dim={head_dim}, use one of {ok}"
        )
    blocks = [
        Mamba2Block(d_model, d_state, expand, head_dim, chunk_size, d_conv)
        for _ in range(n_layers)
    ]
    return Mamba2(d_model, blocks)
