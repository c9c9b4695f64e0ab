"""DreamerV3-style MLP: (Linear -> LayerNorm -> SiLU) x layers, then an output Linear."""

from __future__ import annotations

from torch import Tensor, nn

from reverie.nets.math import full
from reverie.nets.onehot import onehot_linear, use_onehot


class MLP(nn.Module):
    """`x: [..., in_dim] -> [..., out_dim]` (or `[..., hidden]` when `out_dim` is None).

    Hidden Linears have no bias because the LayerNorm after them has one. `zero_init`
    zeroes the output layer so a head starts at a known prediction (DreamerV3: reward and
    value heads start at exactly 0, which avoids huge early returns in imagination).

    `onehot_width` W > 0: the input's first W values may be a one-hot latent, and a call
    given the columns of its ones (`index`) evaluates the first layer as sums of weight columns
    (reverie.nets.onehot); without `index` the layer is dense as usual.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None,
        hidden: int,
        layers: int,
        zero_init: bool = False,
        onehot_width: int = 0,
    ) -> None:
        super().__init__()
        if in_dim <= 0 or hidden <= 0:
            raise ValueError(f"MLP sizes must be positive, got in_dim={in_dim}, hidden={hidden}")
        if not 0 <= onehot_width <= in_dim:
            raise ValueError(f"onehot_width must be in [0, in_dim={in_dim}], got {onehot_width}")
        self.onehot_width = onehot_width
        # the first layer's weight gradient by reverie.nets.onehot_kernel (run.compile=on)
        self.onehot_kernel = False
        if layers < 0 or (layers == 0 and out_dim is None):
            raise ValueError(f"MLP needs layers >= 1 (or an out_dim with layers=0), got {layers}")
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden, bias=False), nn.LayerNorm(hidden), nn.SiLU()]
            d = hidden
        self.out_dim = d if out_dim is None else out_dim
        if out_dim is not None:
            out = nn.Linear(d, out_dim)
            if zero_init:
                nn.init.zeros_(out.weight)
                nn.init.zeros_(out.bias)
            mods.append(out)
        elif zero_init:
            raise ValueError("zero_init needs an out_dim (there is no output layer to zero)")
        self.net = nn.Sequential(*mods)
        self.head = out_dim is not None

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """`index` [..., S]: the columns of the ones of x's one-hot part (module doc)."""
        if use_onehot(index, x):
            if not self.onehot_width:
                raise ValueError("this MLP was built with onehot_width=0; call it without index")
            w = self.onehot_width
            y = onehot_linear(self.net[0], x[..., :w], x[..., w:], index, self.onehot_kernel)
            y = self.net[1:](y)
        else:
            y = self.net(x)
        # a head's output leaves in float32 for the distribution math that reads it, also
        # under run.precision=bf16; hidden features stay as computed for the next layer
        return full(y) if self.head else y


class ToFull(nn.Module):
    """`reverie.nets.math.full` as a layer: the last module of a head built as a plain
    nn.Sequential, so its output is float32 under run.precision=bf16 too."""

    def forward(self, x: Tensor) -> Tensor:
        return full(x)
