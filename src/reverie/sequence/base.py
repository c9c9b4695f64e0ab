"""The sequence-backbone contract shared by every backbone of the zoo.

A backbone is a stack of `n_layers` residual blocks mapping `[B, T, D] -> [B, T, D]`.
Each block owns its recurrent state as a dict of batch-first tensors; the stack's state is
the tuple of its blocks' states. Two conventions make the rest of reverie generic:

* every tensor of a state has the batch on dim 0, so states can be indexed, detached and
  checked without knowing the backbone;
* the initial state is all zeros, so resetting rows of a state is a multiplication by a
  mask (`reset_state`).

`reset[b, t] = True` means an episode starts at step t of row b: nothing from before t
may influence any output at or after t.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LayerState = dict[str, Tensor]
State = tuple[LayerState, ...]


@runtime_checkable
class SequenceModel(Protocol):
    """What agents rely on: parallel `forward` over a sequence and O(1) `step`."""

    d_model: int

    def initial_state(self, batch_size: int) -> State: ...

    def __call__(
        self, x: Tensor, state: State | None = None, reset: Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[Tensor, State]: ...

    def step(self, x: Tensor, state: State, overwrite: bool = False) -> tuple[Tensor, State]: ...

    def reset_state(self, state: State, mask: Tensor) -> State: ...

    def num_params(self) -> int: ...


class Block(nn.Module):
    """One residual block of a backbone; subclasses implement the three verbs.

    `forward(x: [B, T, D], state, reset: [B, T] bool | None) -> (y: [B, T, D], state)`
    `step(x: [B, D], state, overwrite=False) -> (y: [B, D], state)`; `overwrite`: the
    caller's promise that nothing else holds `state`, so the block may write its new state
    over the old one's tensors (Mamba-2's step kernel, run.compile=on) or return new ones
    `initial_state(batch_size, device, dtype) -> LayerState` (all zeros)
    """

    def initial_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> LayerState:
        raise NotImplementedError

    def forward(
        self, x: Tensor, state: LayerState, reset: Tensor | None
    ) -> tuple[Tensor, LayerState]:
        raise NotImplementedError

    def step(
        self, x: Tensor, state: LayerState, overwrite: bool = False
    ) -> tuple[Tensor, LayerState]:
        raise NotImplementedError

    def forward_last(
        self, x: Tensor, state: LayerState, reset: Tensor | None
    ) -> tuple[Tensor, LayerState]:
        """`forward`'s output at the last position only, [B, 1, D], and its state: a block
        may skip the other positions' output work (Mamba-2's output projection)."""
        y, state = self(x, state, reset)
        return y[:, -1:], state


class Backbone(nn.Module):
    """A stack of residual blocks with a final norm; the public face of every backbone."""

    name: str = "backbone"

    def __init__(self, d_model: int, blocks: list[Block]) -> None:
        super().__init__()
        if d_model <= 0:
            raise ValueError(f"d_model must be a positive integer, got {d_model}")
        if not blocks:
            raise ValueError("n_layers must be >= 1")
        self.d_model = d_model
        self.n_layers = len(blocks)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(d_model)

    # -- state helpers ---------------------------------------------------------------
    def _param(self) -> Tensor:
        return next(self.parameters())

    def initial_state(self, batch_size: int) -> State:
        """All-zero state for `batch_size` rows, on the module's device and dtype."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        p = self._param()
        return tuple(b.initial_state(batch_size, p.device, p.dtype) for b in self.blocks)

    def reset_state(self, state: State, mask: Tensor) -> State:
        """Rows where `mask: [B] bool` is True return to the initial (zero) state."""
        mask = torch.as_tensor(mask)
        batch = next(v.shape[0] for layer in state for v in layer.values())
        if mask.shape != (batch,):  # a [1] mask broadcast and reset every row in silence
            raise ValueError(f"reset_state needs a mask of shape [B] = ({batch},) for this "
                             f"state, got shape {tuple(mask.shape)}")
        keep = (~mask.bool()).to(self._param().device)
        out = []
        for layer in state:
            new = {}
            for k, v in layer.items():
                m = keep.view(-1, *([1] * (v.dim() - 1)))
                new[k] = v * m.to(v.dtype)
            out.append(new)
        return tuple(out)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- validation ------------------------------------------------------------------
    def _check_input(self, x: Tensor, rank: int) -> None:
        shape = "[B, T, D]" if rank == 3 else "[B, D]"
        verb = "forward" if rank == 3 else "step"
        if x.dim() != rank:
            raise ValueError(
                f"{self.name}.{verb} expects x of shape {shape}, got {tuple(x.shape)}; "
                + ("use step() for single tokens" if rank == 3 else "use forward() for sequences")
            )
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"{self.name} was built with d_model={self.d_model} but x has last dim "
                f"{x.shape[-1]}; project inputs to {self.d_model} or rebuild with "
                f"d_model={x.shape[-1]}"
            )
        p = self._param()
        if x.dtype != p.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(
                f"{self.name} has {p.dtype} parameters but x is {x.dtype}; pass "
                f"x.to({p.dtype}) or convert the model with .to({x.dtype})"
            )

    def _check_state(self, state: State, batch_size: int) -> None:
        if not isinstance(state, tuple) or len(state) != self.n_layers:
            raise ValueError(
                f"{self.name} state must be the tuple returned by initial_state() with "
                f"{self.n_layers} layer states; call initial_state({batch_size})"
            )
        for layer in state:
            for k, v in layer.items():
                if v.shape[0] != batch_size:
                    raise ValueError(
                        f"{self.name} state '{k}' is for batch size {v.shape[0]} but x has "
                        f"batch size {batch_size}; call initial_state({batch_size})"
                    )

    # -- the two verbs ----------------------------------------------------------------
    def forward(
        self, x: Tensor, state: State | None = None, reset: Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[Tensor, State]:
        """Run the whole sequence in parallel. x: [B, T, D], reset: [B, T] bool.
        `last_only`: the output at the last position only, [B, 1, D] ([B, 0, D] for T = 0;
        the state is the same), for a caller that needs no other (imagination's context
        warm-up)."""
        self._check_input(x, 3)
        B, T, _ = x.shape
        if state is None:
            state = self.initial_state(B)
        self._check_state(state, B)
        if reset is not None:
            if reset.shape != (B, T):
                raise ValueError(
                    f"reset must have shape [B, T] = {(B, T)}, got {tuple(reset.shape)}"
                )
            reset = reset.to(device=x.device, dtype=torch.bool)
            # no reset: the cheaper path. A compiled graph keeps the reset path (exact either
            # way) rather than break on the data and compile a second graph for batches
            # without a reset
            if not torch.compiler.is_compiling() and not host_int(reset.any()):
                reset = None
        if T == 0:  # an empty sequence: no output, and the state comes back as it was
            return self.norm(x), state
        new_state = []
        for i, (block, s) in enumerate(zip(self.blocks, state)):
            last = last_only and i == self.n_layers - 1
            x, s = block.forward_last(x, s, reset) if last else block(x, s, reset)
            new_state.append(s)
        return self.norm(x), tuple(new_state)

    def step_kernel_blocks(self) -> list[Block]:
        """The blocks with a step kernel of their own (`step_kernel`: Mamba-2's)."""
        return [b for b in self.blocks if hasattr(b, "step_kernel")]

    def use_step_kernel(self, on: bool) -> None:
        """Those blocks' `step(overwrite=True)` by their kernel (built) or by torch ops."""
        for block in self.step_kernel_blocks():
            block.step_kernel = on

    def step(self, x: Tensor, state: State, overwrite: bool = False) -> tuple[Tensor, State]:
        """Advance one token. x: [B, D] -> y: [B, D]; O(1) in the sequence length.
        `overwrite`: nothing else holds `state`, whose tensors the new state may reuse
        (`Block.step`)."""
        self._check_input(x, 2)
        self._check_state(state, x.shape[0])
        new_state = []
        for block, s in zip(self.blocks, state):
            x, s = block.step(x, s, overwrite)
            new_state.append(s)
        return self.norm(x), tuple(new_state)


def positive_int(value: Any) -> bool:
    """Whether a backbone option is a positive integer (True and False are not: YAML's
    `true` would build a model of 1 head or a state of size 1)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def low_precision(x: Tensor) -> bool:
    """Whether `x` is bfloat16 or float16."""
    return x.dtype in (torch.bfloat16, torch.float16)


def scan_operands(param: Tensor, *operands: Tensor) -> tuple[Tensor, ...]:
    """A selective scan's operands, upcast to float32 where the block's parameters (`param`)
    are bf16/fp16 (`.to(torch.bfloat16)`): the scan's dt is float32 under bf16 anyway, so
    such a block scans in float32, as autocast's float32 parameters do; it returns its output
    and state in its own dtype. Other blocks' operands come back as they are."""
    return tuple(full(t) for t in operands) if low_precision(param) else operands


def full(x: Tensor) -> Tensor:
    """`x` in at least float32: a bfloat16/float16 tensor (what a layer returns under
    `run.precision=bf16`'s autocast) is upcast, any other comes back as it is. Distribution
    math and losses start from it (reverie.precision)."""
    return x.float() if low_precision(x) else x


def matvec(m: Tensor, v: Tensor) -> Tensor:
    """m @ v over any leading batch dimensions: m [..., R, K], v [..., K] -> [..., R].

    Computed as the row vector vᵀ times mᵀ: torch's CPU matmul with a one-column result
    (`m @ v[..., None]`) takes a slow path, 3-10x slower here at the shapes of the Mamba
    steps' state readout and the selective scan's backward (bench/matvec.py).

    In m's dtype, never autocast's: a product with one row is bound by reading m, which
    bf16 autocast first read and wrote as a bf16 copy (the Mamba-2 step's float32 state,
    64 MB a layer at atari100k's 1024 rollouts, every imagined step), rounding it too."""
    if torch.is_autocast_enabled(m.device.type):
        with torch.autocast(device_type=m.device.type, enabled=False):
            return matvec(m, v.to(m.dtype))
    return (v.unsqueeze(-2) @ m.transpose(-1, -2)).squeeze(-2)


@torch.compiler.disable
def host_int(x: Tensor, round_up: bool = False) -> int:
    """int(x) of a one-element tensor, read eagerly: a data-dependent count or flag that
    Python code branches on. Under torch.compile (run.compile=on) it is a graph break
    either way; made here it is a silent one (dynamo warns about a bare `.item()`).

    A compiled graph is specialised on the value returned here; round_up=True returns the
    next power of two (for a count >= 1 that may be padded), so at most log2(max) + 1
    graphs are ever compiled for it."""
    value = int(x.item())
    return 1 << (value - 1).bit_length() if round_up and value > 1 else value


def detach_state(state: State) -> State:
    """Cut the autograd graph at a state (truncated backpropagation through time)."""
    return tuple({k: v.detach() for k, v in layer.items()} for layer in state)


def contiguous_state(state: State) -> State:
    """Every tensor of a state in its standard layout (a no-op for those already in it):
    a compiled `step` is specialised on the strides of its inputs, those of size-1 dims too,
    which `.contiguous()` leaves as they are (a batch of one env: the Mamba blocks' conv state
    is a view [1, K−1, C] of stride K·C, not (K−1)·C)."""
    return tuple({k: _standard_layout(v) for k, v in layer.items()} for layer in state)


def _standard_layout(v: Tensor) -> Tensor:
    stride, strides = 1, []
    for size in reversed(v.shape):
        strides.append(stride)
        stride *= max(size, 1)
    if v.stride() == tuple(reversed(strides)):
        return v
    return v.clone(memory_format=torch.contiguous_format)


def index_state(state: State, index: Tensor) -> State:
    """Select rows of a state: `index` is a [B'] long tensor or a [B] bool mask."""
    return tuple({k: v[index] for k, v in layer.items()} for layer in state)


def cat_states(states: list[State]) -> State:
    """Concatenate states along the batch."""
    return tuple(
        {k: torch.cat([s[i][k] for s in states]) for k in states[0][i]}
        for i in range(len(states[0]))
    )


def segment_ids(reset: Tensor) -> Tensor:
    """Episode index of every step: reset: [B, T] bool -> [B, T] long (0 before any reset)."""
    return reset.long().cumsum(dim=1)


def column_major(weight: Tensor) -> Tensor:
    """The same [C, K] values stored column-major (strides (1, C)): each tap's C weights are
    contiguous, so the per-tap multiply-adds of `causal_conv_step` vectorise when compiled
    (inductor reads a row-major tap element by element, 4 floats apart; bench/conv_layout.py).
    Parameters keep this layout through optimiser steps and `load_state_dict`."""
    return weight.t().contiguous().t()


def causal_conv_step(
    x: Tensor, weight: Tensor, bias: Tensor, prefix: Tensor
) -> tuple[Tensor, Tensor]:
    """One token of `causal_conv`: x [B, C], prefix [B, K-1, C] -> (y [B, C], new prefix).

    K multiply-adds over [B, C] into one fresh buffer: cheaper than a [B, K, C] product and
    a sum, or einsum's batched-GEMM lowering, at the batch sizes of imagination.
    """
    window = torch.cat([prefix, x.unsqueeze(1)], dim=1)  # [B, K, C]
    y = torch.addcmul(bias, window[:, 0], weight[:, 0])
    for k in range(1, weight.shape[1]):
        y.addcmul_(window[:, k], weight[:, k])
    return y, window[:, 1:]


def eager_float(x: Tensor, *others: Tensor | None, cpu: bool = False) -> bool:
    """Whether a hand-written autograd Function may run on `x` (and `others`, None skipped):
    eager (compiled graphs fuse the composite form themselves), without autocast, float32 or
    float64 with every operand of x's dtype, and on the CPU where `cpu` (a Function tuned
    and tested there only). Elsewhere its callers run the composite form under autograd."""
    return (not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled(x.device.type)
            and x.dtype in (torch.float32, torch.float64)
            and all(t.dtype == x.dtype for t in others if t is not None)
            and (not cpu or x.device.type == "cpu"))


def _depthwise(xp: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """y[:, t] = bias + sum_k weight[:, k] xp[:, t + k]: xp [B, T+K-1, C] -> y [B, T, C].

    [B, T, C] is the channels-last layout of [B, C, 1, T]: oneDNN's depthwise conv2d reads
    and writes it in place of two transposed copies (conv1d returns [B, C, T])."""
    y = F.conv2d(xp.transpose(1, 2).unsqueeze(2), weight[:, None, None, :], bias,
                 groups=xp.shape[-1])
    return y.squeeze(2).transpose(1, 2)


def tap_gradients(g: Tensor, xp: Tensor, rows: int = 64) -> Tensor:
    """The weight gradient of `_depthwise`: out[c, k] = sum_{b,t} g[b, t, c] xp[b, t+k, c].

    g: [B, T, C]; xp: [B, T+K-1, C]. Returns [C, K], column-major like the conv weights.
    Blocks of about `rows` rows of B x T accumulate into [K, rows, C] buffers that stay in
    cache, one multiply-add per block and tap; oneDNN's depthwise weight gradient took 4-5x
    as long at T = 1024 (and `(g * shifted).sum()` writes a [B, T, C] product per tap).
    """
    B, T, C = g.shape
    K = xp.shape[1] - T + 1
    R = max(1, min(T, rows // B))
    acc = g.new_zeros(K, B, R, C)
    for t0 in range(0, T, R):
        r = min(R, T - t0)  # the last block may be short
        gb = g[:, t0 : t0 + r]
        for k in range(K):
            acc[k, :, :r].addcmul_(gb, xp[:, t0 + k : t0 + k + r])
    return acc.sum((1, 2)).t()


class _DepthwiseConv(torch.autograd.Function):
    """`_depthwise` with oneDNN's forward and input gradient and `tap_gradients` for the
    weights (eager CPU float; compiled graphs and autocast use the plain conv)."""

    @staticmethod
    def forward(ctx, xp: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(xp, weight)
        return _depthwise(xp, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        xp, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        C = xp.shape[-1]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = torch.ops.aten.convolution_backward(
                g.transpose(1, 2).unsqueeze(2), xp.transpose(1, 2).unsqueeze(2),
                weight[:, None, None, :], None, [1, 1], [0, 0], [1, 1], False, [0, 0], C,
                [True, False, False])[0].squeeze(2).transpose(1, 2)
        if need_w:
            grad_w = tap_gradients(g, xp)
        if need_b:
            grad_b = g.sum((0, 1))
        return grad_x, grad_w, grad_b


def causal_conv(
    x: Tensor, weight: Tensor, bias: Tensor, prefix: Tensor, reset: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv whose taps never cross an episode reset, and its next prefix.

    x: [B, T, C]; weight: [C, K] (tap K-1 reads the current input); bias: [C];
    prefix: [B, K-1, C], the K-1 inputs before x. reset: [B, T] bool or None.
    Returns y: [B, T, C] and the new prefix [B, K-1, C] (zeros before the last reset),
    which is exactly what `step` gives with the conv state zeroed at each reset.
    """
    B, T, C = x.shape
    K = weight.shape[1]
    xp = torch.cat([prefix, x], dim=1)  # [B, K-1+T, C]; input s sits at row s + K-1
    tail = xp[:, T:]
    if reset is None:
        # the blocked weight gradient for eager CPU float32/float64 only: in bf16 its sums
        # would round at every block (oneDNN accumulates in float32)
        if not eager_float(x, weight, bias, cpu=True):
            return _depthwise(xp, weight, bias), tail
        return _DepthwiseConv.apply(xp, weight, bias), tail
    # input s is visible to output t iff s >= the latest reset at or before t; rows
    # without a reset get -K so that the whole prefix stays visible
    pos = torch.arange(T, device=x.device).expand(B, T)
    last = torch.where(reset, pos, torch.full_like(pos, -K)).cummax(dim=1).values
    y = torch.addcmul(bias, x, weight[:, K - 1])
    for k in range(1, K):
        visible = ((pos - k) >= last).unsqueeze(-1).to(x.dtype)
        y = y + xp[:, K - 1 - k : K - 1 - k + T] * visible * weight[:, K - 1 - k]
    visible = torch.arange(T - K + 1, T, device=x.device) >= last[:, -1:]  # [B, K-1]
    return y, tail * visible.unsqueeze(-1).to(x.dtype)
