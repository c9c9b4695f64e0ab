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
context, acting) the encoder takes `NO_GRAD_CHUNK` images at a time, which bounds the memory
of its feature maps.

The decoder's transposed convs (`BiasSumConvTranspose2d`) take their bias gradient as a sum
of the output gradient instead of from oneDNN's backward, whose bias gradient cost more than
the weight gradient itself (forward and backward of the decoder: bench/cnn.py's `bias`).
`ImageNorm` is GroupNorm(1, C), as a layer norm over each image where ATen's bf16 group norm
is slow (bench/cnn.py's `norm`).

Under run.compile=on (where its kernels build) both nets run reverie/nets/image_kernel.py's
C++ kernels (`kernels`): the encoder's pixel scaling in one pass, each ImageNorm with the
SiLU after it as one forward and one backward, and the transposed convs' bias gradients as
one read of the output gradient; and, in bfloat16, the weight gradient of the conv onto the
encoder's last 4x4 maps and of the decoder's first transposed conv from them as an im2col
matmul (`matmul_weight_grad`: oneDNN's ran at a quarter of the matmul's speed there); the
modules and their state dict are the same (`run_layers`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.nets import image_kernel

N_STAGES = 4  # stride-2 stages: 64 -> 4
# images per encoder pass without autograd: Drama's imagination encodes 1024 x 8 context
# frames per update, whose first feature map alone is 800 MB at 64x64 in float32. With
# libgomp's default spin the chunk size hardly mattered once the conv nets had their kernels
# (256-2048 images: 557-562 ms in bf16, 1389-1443 ms in float32, 8,192 frames at atari100k's
# sizes); with the `reverie` command's short spin (reverie/openmp.py: each parallel region
# may wake a sleeping thread) fewer, larger chunks cost less: 743, 626, 591 ms in bf16 and
# 1723, 1456, 1394 ms in float32 at 256, 1024, 2048 (2 threads, alternating, scratch
# benchmark, 2026-12-07)
NO_GRAD_CHUNK = 2048


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
            mods += [MatmulGradConv2d(c_in, c_out, 4, 2, 1), ImageNorm(c_out), nn.SiLU()]
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
    the transposed convs told to take their bias gradients from `image_kernel`, and the
    convs of both their bf16 weight gradients onto small maps from `matmul_weight_grad`."""
    layers = list(net)
    i = 0
    while i < len(layers):
        layer = layers[i]
        if (kernels and isinstance(layer, ImageNorm) and i + 1 < len(layers)
                and isinstance(layers[i + 1], nn.SiLU) and image_kernel.serves(x)):
            x = image_kernel.norm_silu(x, layer.weight, layer.bias, layer.eps)
            i += 2
        elif isinstance(layer, (MatmulGradConv2d, BiasSumConvTranspose2d)):
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


# the small map's pixels at or below which a bfloat16 conv's weight gradient is an im2col
# matmul (`matmul_weight_grad`) under `kernels`: at atari100k's 2,048 frames oneDNN's bf16
# weight gradient of the 96 -> 192 conv onto 4x4 maps (and of its transposed mirror in the
# decoder) ran at ~280 GFLOP/s, 66 ms, the matmul form in 37 ms; at 8x8 maps (the 48 -> 96
# conv) the matmul form took 69 ms against oneDNN's 35, and in float32 it lost at both
# (125 vs 80 ms); 2 threads, scratch benchmark, 2026-12-07
MATMUL_WGRAD_PIXELS = 16


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """A conv's output size along one axis (dilation 1)."""
    return (size + 2 * padding - kernel) // stride + 1


def matmul_weight_grad_serves(big: Tensor, small: Tensor, weight: Tensor, stride: tuple,
                              padding: tuple, dilation: tuple, groups: int,
                              output_padding: tuple = (0, 0)) -> bool:
    """Whether `matmul_weight_grad` takes the weight gradient of the conv from `big` (its
    input, or a transposed conv's output gradient) to `small` (its output gradient, or a
    transposed conv's input): bfloat16 channels-last maps on the CPU, one group, no dilation
    or output padding, `small` exactly the conv's output size and at most
    MATMUL_WGRAD_PIXELS pixels."""
    if (big.dtype != torch.bfloat16 or small.dtype != torch.bfloat16
            or big.device.type != "cpu" or big.dim() != 4 or small.dim() != 4
            or groups != 1 or tuple(dilation) != (1, 1) or tuple(output_padding) != (0, 0)
            or small.shape[2] * small.shape[3] > MATMUL_WGRAD_PIXELS
            or big.shape[0] != small.shape[0]
            or not big.is_contiguous(memory_format=torch.channels_last)
            or not small.is_contiguous(memory_format=torch.channels_last)):
        return False
    k = weight.shape[2:]
    return all(_conv_out(big.shape[2 + i], k[i], stride[i], padding[i]) == small.shape[2 + i]
               for i in range(2))


def matmul_weight_grad(big: Tensor, small: Tensor, kernel: tuple, stride: tuple,
                       padding: tuple) -> Tensor:
    """Σ over n, y, x of small[n, :, y, x] ⊗ big_padded[n, :, s·y + i, s·x + j], as
    [C_small, C_big, kh, kw]: the weight gradient of a conv from `big` to `small` (small =
    the output gradient) and of a transposed conv from `small` to `big` (big = the output
    gradient), whose weights are both [C_small, C_big, kh, kw]. One copy of the padded big
    map's windows (im2col, [N·h·w, kh·kw·C_big]) and one matmul with the small map's
    pixels as rows; channels-last maps (`matmul_weight_grad_serves`)."""
    N, Cb = big.shape[:2]
    Cs, h, w = small.shape[1:]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    padded = F.pad(big.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))  # [N, H', W', C_big]
    sn, sy, sx, sc = padded.stride()
    cols = padded.as_strided((N, h, w, kh, kw, Cb), (sn, sh * sy, sw * sx, sy, sx, sc),
                             padded.storage_offset()).reshape(N * h * w, kh * kw * Cb)
    rows = small.permute(0, 2, 3, 1).reshape(N * h * w, Cs)  # a view: channels-last
    return (cols.t() @ rows).view(kh, kw, Cb, Cs).permute(3, 2, 0, 1)


class _Conv(torch.autograd.Function):
    """`F.conv2d` or (`transposed`) `F.conv_transpose2d` of (x, weight, bias, ...) whose
    backward takes the input gradient from oneDNN, the weight gradient from oneDNN or, with
    `kernels` where it serves, from `matmul_weight_grad`, and the bias gradient from
    `channel_sums` (with `kernels`, `image_kernel.channel_sums`). Under autocast x and
    weight come cast, the bias in its own dtype (float32): its gradient is g's sums, in
    float32 (oneDNN's would be rounded to bf16 under autocast), in the bias's dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, transposed: bool, stride: tuple,
                padding: tuple, output_padding: tuple, groups: int, dilation: tuple,
                kernels: bool) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (transposed, stride, padding, dilation, output_padding, groups)
        ctx.bias_dtype, ctx.kernels = bias.dtype, kernels
        if transposed:
            return F.conv_transpose2d(x, weight, bias.to(x.dtype), stride, padding,
                                      output_padding, groups, dilation)
        return F.conv2d(x, weight, bias.to(x.dtype), stride, padding, dilation, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        transposed, stride, padding, dilation, output_padding, groups = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        big, small = (g, x) if transposed else (x, g)
        matmul = need_w and ctx.kernels and matmul_weight_grad_serves(
            big, small, weight, stride, padding, dilation, groups, output_padding)
        if need_x or (need_w and not matmul):
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                g, x, weight, None, stride, padding, dilation, transposed, output_padding,
                groups, [need_x, need_w and not matmul, False])
        if matmul:
            grad_w = matmul_weight_grad(big, small, weight.shape[2:], stride, padding)
        if need_b:
            sums = (image_kernel.channel_sums if ctx.kernels and image_kernel.serves(g)
                    else channel_sums)
            grad_b = sums(g).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None


def _autocast(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """x and weight cast as autocast casts a conv's (the bias is cast inside `_Conv`)."""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        x, weight = (t.to(dtype) if t.dtype == torch.float32 else t for t in (x, weight))
    return x, weight


def _plain(module: nn.Module, x: Tensor) -> bool:
    """Whether a conv runs as the plain torch module: compiled graphs, no autograd, no
    bias, other padding modes and other devices."""
    return (module.bias is None or torch.compiler.is_compiling() or not torch.is_grad_enabled()
            or module.padding_mode != "zeros" or x.device.type != "cpu")


class MatmulGradConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state dict) whose bfloat16 weight gradient onto small
    output maps is `matmul_weight_grad` where `kernels` (`run_layers`) is on and it serves
    (`_Conv`; the bias gradient then from the output gradient's sums in float32, not
    oneDNN's bf16; no double backward there); otherwise, and in compiled graphs, without
    autograd or on other devices, the plain module."""

    def forward(self, x: Tensor, kernels: bool = False) -> Tensor:
        if not kernels or _plain(self, x) or isinstance(self.padding, str):
            return super().forward(x)
        cx, weight = _autocast(x, self.weight)
        out_pixels = math.prod(_conv_out(x.shape[-2 + i], self.kernel_size[i], self.stride[i],
                                         self.padding[i]) for i in range(2))
        if (cx.dtype != torch.bfloat16 or x.dim() != 4 or out_pixels > MATMUL_WGRAD_PIXELS
                or self.groups != 1 or tuple(self.dilation) != (1, 1)):
            return super().forward(x)  # `_Conv`'s backward checks the rest
        return _Conv.apply(cx, weight, self.bias, False, self.stride, self.padding, (0, 0),
                           self.groups, self.dilation, True)


class BiasSumConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same parameters and state dict) whose bias gradient is the sum
    of its output's gradient (`_Conv`) while autograd records it eagerly: oneDNN's
    own bias gradient of a transposed conv took longer than its weight gradient on this
    CPU, in float32 and in bfloat16 (bench/cnn.py's `bias`: the decoder 1.14x / 1.30x).
    Compiled graphs, no_grad, output_size calls and other devices run the plain module; no
    double backward (nothing in reverie differentiates a gradient)."""

    def forward(self, x: Tensor, output_size: list[int] | None = None,
                kernels: bool = False) -> Tensor:
        """`kernels` (`run_layers`): the bias gradient from `image_kernel.channel_sums`
        where it serves the gradient, and the weight gradient from `matmul_weight_grad`
        where that serves."""
        if output_size is not None or _plain(self, x):
            return super().forward(x, output_size)
        x, weight = _autocast(x, self.weight)
        return _Conv.apply(x, weight, self.bias, True, self.stride, self.padding,
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
