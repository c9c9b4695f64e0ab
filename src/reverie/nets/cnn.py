"""Image encoder and decoder for 64x64 frames (any H, W divisible by 16).

Pixel convention: observations are uint8 `[..., H, W, C]` (channels last, as stored in
replay). The encoder feeds the network `x / 255 - 0.5` (centred at 0); the decoder predicts
the same centred value, so `pixels in [0, 1] = decoder output + 0.5`.

Encoder: 4 stride-2 convs (kernel 4, padding 1) with `depth·2^i` channels, each followed by
GroupNorm(1 group) + SiLU; 64x64 -> 4x4. A 1x1 conv then maps the last feature map to
`embed_channels` so the flattened embedding stays ~1k wide (Drama flattens 64x4x4 = 1024);
without it the posterior layer alone (4096 -> 1024) would cost 4M parameters.
Decoder mirrors it with transposed convs. GroupNorm(1, C) normalises each image on its own:
no batch statistics (acting uses batch 1, training batch 16x64) and no permute copies.

Both run channels-last (NHWC in memory, oneDNN's native layout): the encoder's input is the
stored [..., H, W, C] frame seen as NCHW, and the decoder's output permuted back to
[..., H, W, C] is contiguous, so neither end copies. Without autograd (imagination's
context, acting) the encoder takes `NO_GRAD_CHUNK` images at a time, so each layer's output
is still in cache for the GroupNorm and SiLU that read it next.

The decoder's transposed convs (`BiasSumConvTranspose2d`) take their bias gradient as a sum
of the output gradient instead of from oneDNN's backward, whose bias gradient cost more than
the weight gradient itself (forward and backward of the decoder: bench/cnn.py's `bias`).
`ImageNorm` is GroupNorm(1, C), as a layer norm over each image where ATen's bf16 group norm
is slow (bench/cnn.py's `norm`).

Under run.compile=on (where its kernels build) both nets run reverie/nets/image_kernel.py's
C++ kernels (`kernels`): the encoder's pixel scaling in one pass, each ImageNorm with the
SiLU after it as one forward and one backward, and the transposed convs' bias gradients as
one read of the output gradient; the modules and their state dict are the same
(`run_layers`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.nets import image_kernel

N_STAGES = 4  # stride-2 stages: 64 -> 4
# images per encoder pass without autograd: Drama's imagination encodes 1024 x 8 context
# frames per update, whose first feature map alone is 800 MB at 64x64 (bench: ~1.5x faster
# in chunks of 128-512 than in one pass on a 2-core CPU, bench/cnn.py)
NO_GRAD_CHUNK = 256


def _check_image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"image observations must be [H, W, C], got shape {shape}")
    H, W, C = shape
    step = 2**N_STAGES
    if H % step or W % step or H < step or W < step:
        raise ValueError(
            f"image size {H}x{W} must be a multiple of {step}; resize frames to 64x64"
        )
    return H, W, C


class ConvEncoder(nn.Module):
    """`image: [..., H, W, C]` uint8 (or float in [0, 255]) -> `embedding: [..., out_dim]`."""

    def __init__(self, shape: tuple[int, int, int], depth: int = 32, embed_channels: int = 64):
        super().__init__()
        H, W, C = _check_image_shape(tuple(shape))
        if depth <= 0 or embed_channels <= 0:
            raise ValueError(f"cnn depth/embed_channels must be positive, got {depth}, "
                             f"{embed_channels}")
        self.shape = (H, W, C)
        mods: list[nn.Module] = []
        c_in = C
        for i in range(N_STAGES):
            c_out = depth * 2**i
            mods += [nn.Conv2d(c_in, c_out, 4, 2, 1), ImageNorm(c_out), nn.SiLU()]
            c_in = c_out
        mods += [nn.Conv2d(c_in, embed_channels, 1), ImageNorm(embed_channels), nn.SiLU()]
        self.net = nn.Sequential(*mods)
        self.out_dim = embed_channels * (H // 2**N_STAGES) * (W // 2**N_STAGES)
        self.kernels = False  # reverie.nets.image_kernel's (run.compile=on, where built)

    # eager inside compiled graphs (run.compile=on): inductor's fused GroupNorm/SiLU kernels
    # for these NCHW feature maps ran slower than ATen's and oneDNN's, forward and backward
    # (the world-model loss at atari100k: compiled 0.93x eager, 1.01x with the conv nets
    # eager; README, "Compiled kernels")
    @torch.compiler.disable
    def forward(self, image: Tensor) -> Tensor:
        lead = image.shape[:-3]
        flat = image.reshape(-1, *self.shape)
        if torch.is_grad_enabled() or flat.shape[0] <= NO_GRAD_CHUNK:
            return self._embed(flat).reshape(*lead, self.out_dim)
        parts = [self._embed(part) for part in flat.split(NO_GRAD_CHUNK)]
        return torch.cat(parts).reshape(*lead, self.out_dim)

    def _embed(self, flat: Tensor) -> Tensor:
        """[N, H, W, C] -> [N, out_dim]; the permuted view is channels-last NCHW."""
        if self.kernels and image_kernel.pixels_serve(flat):  # one pass, in autocast's dtype
            bf16 = (torch.is_autocast_enabled("cpu")
                    and torch.get_autocast_dtype("cpu") == torch.bfloat16)
            x = image_kernel.pixels(flat, torch.bfloat16 if bf16 else torch.float32)
            x = x.permute(0, 3, 1, 2)
        else:  # in place on a copy (float input too): two fewer passes' allocations
            x = flat.permute(0, 3, 1, 2).to(torch.float32, copy=True).div_(255.0).sub_(0.5)
        return run_layers(self.net, x, self.kernels).reshape(flat.shape[0], self.out_dim)


class ImageNorm(nn.GroupNorm):
    """GroupNorm(1, channels): each image normalised over all its values, then a per-channel
    affine (same parameters and state dict as nn.GroupNorm). On a channels-last bf16/fp16 map
    whose channel count is not a multiple of 16 (the atari100k preset's 24), ATen's
    channels-last group norm ran slower than `layer_norm` over each image's H·W·C
    values with the affine repeated per pixel, the same function: that form runs there (on
    the CPU, where it was measured)."""

    def __init__(self, channels: int) -> None:
        super().__init__(1, channels)

    def forward(self, x: Tensor) -> Tensor:
        if (x.dim() != 4 or x.dtype not in (torch.bfloat16, torch.float16)
                or x.shape[1] % 16 == 0 or x.device.type != "cpu"
                or torch.compiler.is_compiling()
                or not x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        N, C, H, W = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(N, H * W * C)  # a view: channels-last
        y = F.layer_norm(flat, (H * W * C,), self.weight.repeat(H * W),
                         self.bias.repeat(H * W), self.eps)
        return y.view(N, H, W, C).permute(0, 3, 1, 2)


def run_layers(net: nn.Sequential, x: Tensor, kernels: bool) -> Tensor:
    """`net(x)`, where `kernels` (run.compile=on, reverie.nets.image_kernel built) with each
    ImageNorm that SiLU follows run as one `image_kernel.norm_silu` on the maps it serves,
    and the transposed convs told to take their bias gradients from `image_kernel`."""
    layers = list(net)
    i = 0
    while i < len(layers):
        layer = layers[i]
        if (kernels and isinstance(layer, ImageNorm) and i + 1 < len(layers)
                and isinstance(layers[i + 1], nn.SiLU) and image_kernel.serves(x)):
            x = image_kernel.norm_silu(x, layer.weight, layer.bias, layer.eps)
            i += 2
        elif isinstance(layer, BiasSumConvTranspose2d):
            x = layer(x, kernels=kernels)
            i += 1
        else:
            x = layer(x)
            i += 1
    return x


def channel_sums(g: Tensor) -> Tensor:
    """The sum over N, H and W of a channels-last `[N, C, H, W]` float32 or bfloat16 gradient,
    in float32: per image first, then over images (a single reduction over N·H·W rows of few
    channels ran ~4x slower in float32; in bfloat16, ATen's one reduction, which rounds its
    float32 sum to bfloat16, ran 1.1-1.5x slower than these float32 sums at atari100k's
    decoder maps, 2 threads). Other layouts and dtypes: `g.sum((0, 2, 3))`."""
    if (g.dtype not in (torch.float32, torch.bfloat16)
            or not g.is_contiguous(memory_format=torch.channels_last)):
        return g.sum((0, 2, 3))
    N, C, H, W = g.shape
    return g.permute(0, 2, 3, 1).reshape(N, H * W, C).sum(1, dtype=torch.float32).sum(0)


class _TransposedConv(torch.autograd.Function):
    """`F.conv_transpose2d(x, weight, bias, ...)` whose backward takes the input and weight
    gradients from oneDNN and the bias gradient from `channel_sums` (or, with `kernels`,
    `image_kernel.channel_sums`). Under autocast x and
    weight come cast, the bias in its own dtype (float32): its gradient is g's sums, in
    float32 (oneDNN's would be rounded to bf16 under autocast), in the bias's dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, stride: tuple, padding: tuple,
                output_padding: tuple, groups: int, dilation: tuple, kernels: bool) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, output_padding, groups)
        ctx.bias_dtype, ctx.kernels = bias.dtype, kernels
        return F.conv_transpose2d(x, weight, bias.to(x.dtype), stride, padding,
                                  output_padding, groups, dilation)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, output_padding, groups = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x or need_w:
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                g, x, weight, None, stride, padding, dilation, True, output_padding, groups,
                [need_x, need_w, False])
        if need_b:
            sums = (image_kernel.channel_sums if ctx.kernels and image_kernel.serves(g)
                    else channel_sums)
            grad_b = sums(g).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


class BiasSumConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same parameters and state dict) whose bias gradient is the sum
    of its output's gradient (`_TransposedConv`) while autograd records it eagerly: oneDNN's
    own bias gradient of a transposed conv took longer than its weight gradient on this
    CPU, in float32 and in bfloat16 (bench/cnn.py's `bias`: the decoder 1.14x / 1.30x).
    Compiled graphs, no_grad, output_size calls and other devices run the plain module; no
    double backward (nothing in reverie differentiates a gradient)."""

    def forward(self, x: Tensor, output_size: list[int] | None = None,
                kernels: bool = False) -> Tensor:
        """`kernels` (`run_layers`): the bias gradient from `image_kernel.channel_sums`
        where it serves the gradient."""
        if (output_size is not None or self.bias is None or torch.compiler.is_compiling()
                or not torch.is_grad_enabled() or self.padding_mode != "zeros"
                or x.device.type != "cpu"):
            return super().forward(x, output_size)
        weight = self.weight
        if torch.is_autocast_enabled("cpu"):  # cast as autocast would (the bias inside)
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = (t.to(dtype) if t.dtype == torch.float32 else t for t in (x, weight))
        return _TransposedConv.apply(x, weight, self.bias, self.stride, self.padding,
                                     self.output_padding, self.groups, self.dilation, kernels)


class ConvDecoder(nn.Module):
    """`z: [..., in_dim]` -> centred image prediction `[..., H, W, C]` (add 0.5 for [0, 1])."""

    def __init__(
        self,
        in_dim: int,
        shape: tuple[int, int, int],
        depth: int = 32,
        embed_channels: int = 64,
    ) -> None:
        super().__init__()
        H, W, C = _check_image_shape(tuple(shape))
        self.shape = (H, W, C)
        self.h0, self.w0 = H // 2**N_STAGES, W // 2**N_STAGES
        self.embed_channels = embed_channels
        self.stem = nn.Linear(in_dim, embed_channels * self.h0 * self.w0)
        c_top = depth * 2 ** (N_STAGES - 1)
        mods: list[nn.Module] = [
            ImageNorm(embed_channels),
            nn.SiLU(),
            nn.Conv2d(embed_channels, c_top, 1),
            ImageNorm(c_top),
            nn.SiLU(),
        ]
        c_in = c_top
        for i in reversed(range(N_STAGES - 1)):
            c_out = depth * 2**i
            mods += [BiasSumConvTranspose2d(c_in, c_out, 4, 2, 1), ImageNorm(c_out),
                     nn.SiLU()]
            c_in = c_out
        mods.append(BiasSumConvTranspose2d(c_in, C, 4, 2, 1))
        self.net = nn.Sequential(*mods)
        self.kernels = False  # as ConvEncoder's

    @torch.compiler.disable  # eager inside compiled graphs, as ConvEncoder.forward
    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        x = self.stem(z).reshape(-1, self.embed_channels, self.h0, self.w0)
        x = run_layers(self.net, x.contiguous(memory_format=torch.channels_last),
                       self.kernels).permute(0, 2, 3, 1)
        return x.reshape(*lead, *self.shape)
