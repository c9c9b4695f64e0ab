"""Linear layers whose input starts with a one-hot latent, evaluated as column sums.

The world model's latent z_t is S categoricals of K classes, an exact one-hot vector of
S·K values with S ones (the straight-through sample's value, `WorldModel.sample`). The
layers that read it (the actor's and critic's first layer, the backbone's input
projection) multiply it by a weight of S·K columns: a dense product spends S·K
multiply-adds per output where S are not zero. Given the S positions of the ones, the
same product is the sum of S columns of the weight (an embedding-bag sum), K times fewer
operations (whole fp32 updates: bench/onehot.py).

Only the forward changes: the gradients are the dense layer's (the input's from the
weight, the weight's from the one-hot values), so the straight-through gradient to the
probabilities is kept. The sum runs in another order than the dense product's, so values
agree with `linear(cat([onehot, rest]))` to float rounding, not bit for bit. With
run.compile=on the actor's and critic's layers (the ones whose weights get gradients from
many rows; the backbone's input projection runs without gradients here) take their weight
gradient as a row scatter instead of that dense product (`reverie.nets.onehot_kernel`,
`kernel=True`), the same sums in another order again.

Under autocast (run.precision=bf16) the layer stays dense: a bf16 matmul is several times
faster than float32 on a CPU with bf16 instructions, and the weight gradient of the one-hot
path would run in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.nets import onehot_kernel


class _OneHotProduct(torch.autograd.Function):
    """onehot [N, W] @ weight[O, W]ᵀ, computed from the columns `index` [N, S] of the ones.
    `kernel`: the weight's gradient by `onehot_kernel` (a row scatter) where it serves."""

    @staticmethod
    def forward(ctx, onehot: Tensor, index: Tensor, weight: Tensor, kernel: bool) -> Tensor:
        ctx.save_for_backward(onehot, index, weight)
        ctx.kernel = kernel
        return F.embedding_bag(index, weight.t().contiguous(), mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, Tensor | None, None]:
        onehot, index, weight = ctx.saved_tensors
        grad_onehot = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[2]:
            if ctx.kernel and onehot_kernel.serves(grad):
                grad_weight = onehot_kernel.onehot_weight_grad(grad, index, weight.shape[1]).t()
            else:
                grad_weight = grad.t() @ onehot
        return grad_onehot, None, grad_weight, None


def onehot_rows(index: Tensor, classes: int) -> Tensor:
    """Class indices of S categoricals [..., S] -> the columns of their ones in the
    flattened [S·K] one-hot: index + K·s."""
    offsets = torch.arange(index.shape[-1], device=index.device) * classes
    return index + offsets


def use_onehot(index: Tensor | None, x: Tensor) -> bool:
    """Whether a layer should take the one-hot path: indices given and no autocast."""
    return index is not None and not torch.is_autocast_enabled(x.device.type)


def onehot_linear(linear: nn.Linear, onehot: Tensor, rest: Tensor, index: Tensor,
                  kernel: bool = False) -> Tensor:
    """`linear(cat([onehot, rest], -1))` where `onehot` [..., W] is an exact one-hot with
    its ones at the columns `index` [..., S] (`onehot_rows`); `rest` [..., R] is dense.
    `kernel`: the weight gradient by `onehot_kernel` (built by its `load()`)."""
    width, lead = onehot.shape[-1], onehot.shape[:-1]
    rows = lead.numel()
    weight = linear.weight
    ones = _OneHotProduct.apply(onehot.reshape(rows, width), index.reshape(rows, index.shape[-1]),
                                weight[:, :width], kernel)
    dense = F.linear(rest.reshape(rows, rest.shape[-1]), weight[:, width:], linear.bias)
    return (ones + dense).reshape(*lead, weight.shape[0])
