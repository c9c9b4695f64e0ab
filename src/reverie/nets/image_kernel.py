"""The conv nets' C++ kernels (run.compile=on): the encoder's pixel scaling, GroupNorm(1, C)
followed by SiLU over channels-last feature maps, forward and backward, and the decoder's
bias gradients (per-channel sums).

Pixels: the encoder feeds its first conv `x / 255 − 0.5` of the uint8 frames; as torch ops
that is a float copy, two in-place passes and, under bfloat16 autocast, the conv's cast of
the result: four passes over 8,192 frames of imagination's context at atari100k (~0.1 s of
an update). `pixels` writes the same values (float32 arithmetic, then rounded to
bfloat16 as a cast rounds) in one pass, from a table of the 256 results.

Norms: the conv encoder and decoder normalise every feature map over each image (`ImageNorm`) and
apply SiLU to the result. As ATen ops that is a norm (two reductions and a write), SiLU (a
read and a write), and in the backward SiLU's gradient (two reads, a write) and the norm's
gradient (the affine's per-channel sums as column reductions over N·H·W rows, which ran at
a fraction of the memory speed: at atari100k's bf16 world-model step the two 24-channel
32x32 maps' backward took ~0.5 s of an update in a torch profile). Here each image is one
thread's work, read from cache after its first pass:

- forward: the image's mean, then its centred squares (two reads), then
  y = silu(x̂·w + b) in one write; the mean and 1/std per image are kept for the backward;
- backward: one pass recomputes x̂ and the SiLU's slope from x, forms the gradient at the
  norm's output, accumulates the per-channel sums of w's and b's gradients and the two
  per-image sums of the norm's gradient, and keeps that gradient in a float buffer of one
  image; a second pass writes the input's gradient.

Sums: the decoder's transposed convs take their bias gradient as each channel's sum of the
output gradient (`cnn.channel_sums`); ATen summed a bfloat16 gradient only after copying it
to float32 (~0.1 s of atari100k's bf16 update in a torch profile). `channel_sums` reads it
once: each image's sums in float32, then over the images in order.

float32 or bfloat16 maps (autocast's), computed in float32, weights and their gradients in
float32; sums run in another order than ATen's, so values agree to float rounding. Each
image's values do not depend on the thread count; the weights' gradients are summed per
thread and then over threads in order: the same values run after run on one thread count.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reverie.nets.cpp_kernel import VEC_PRELUDE, CppKernel, load_all, threads

_COMMON = VEC_PRELUDE + r"""
#include <numeric>

static inline void store(float* p, const Vec& v) { v.store(p); }
static inline void store(at::BFloat16* p, const Vec& v) {
    at::vec::convert_float_bfloat16(v, v).store(p, V);
}
static inline float sum_lanes(const Vec& v) {
    return at::vec::vec_reduce_all<float, 1>([](Vec& l, Vec& r) { return l + r; }, v);
}
static inline float silu(float a) { return a / (1.0f + std::exp(-a)); }
// The length of the per-channel pattern over whole vectors: lcm(C, V) values.
static inline int64_t pattern(int64_t C) { return C / std::gcd(C, V) * V; }
// out[k] = v[k % C] for k < L (L a multiple of C), without a division per value.
static inline void tile(const float* v, int64_t C, int64_t L, float* out) {
    for (int64_t k = 0; k < L; k += C) std::copy(v, v + C, out + k);
}

// The image's mean and 1/std over its P values: the sum, then the centred squares.
template <typename T>
static inline void moments(const T* x, int64_t P, float eps, float& mean, float& rstd) {
    const int64_t vP = P - P % V;
    Vec acc(0.0f);
    for (int64_t j = 0; j < vP; j += V) acc = acc + load(x + j);
    float s = sum_lanes(acc);
    for (int64_t j = vP; j < P; j++) s += static_cast<float>(x[j]);
    mean = s / P;
    const Vec m(mean);
    Vec sq(0.0f);
    for (int64_t j = 0; j < vP; j += V) {
        const Vec d = load(x + j) - m;
        sq = sq + d * d;
    }
    float q = sum_lanes(sq);
    for (int64_t j = vP; j < P; j++) {
        const float d = static_cast<float>(x[j]) - mean;
        q += d * d;
    }
    rstd = 1.0f / std::sqrt(q / P + eps);
}
"""

PIXELS_SOURCE = _COMMON + r"""
// out[i] = x[i] / 255 - 0.5 for n uint8 values, in float32 or rounded to bfloat16: a table of
// the 256 results (computed as those values are: float32 division, subtraction, then the
// rounding of a cast), read once per value (the division itself took most of the time).
template <typename T>
static void pixels(const uint8_t* x, T* out, int64_t n, int64_t threads)
{
    T table[256];
    for (int i = 0; i < 256; i++) table[i] = static_cast<T>(static_cast<float>(i) / 255.0f - 0.5f);
    constexpr int64_t block = 16384;
    const int64_t blocks = (n + block - 1) / block;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < blocks; k++) {
        const int64_t start = k * block, end = std::min(n, start + block);
        for (int64_t j = start; j < end; j++) out[j] = table[x[j]];
    }
}

extern "C" void kernel(const uint8_t* x, void* out, int64_t n, int64_t bf16, int64_t threads)
{
    if (bf16)
        pixels(x, static_cast<at::BFloat16*>(out), n, threads);
    else
        pixels(x, static_cast<float*>(out), n, threads);
}
"""
PIXELS_ARGTYPES = ["const uint8_t*", "void*", "int64_t", "int64_t", "int64_t"]

FORWARD_SOURCE = _COMMON + r"""
// x, y: [N, P] with P = H·W·C, channel j % C (channels last); w, b: [C]. y may not be x.
// Writes each image's mean and 1/std to mean and rstd ([N]).
template <typename T>
static void forward(const T* x, const float* w, const float* b, T* y, float* mean_out,
                    float* rstd_out, int64_t N, int64_t P, int64_t C, float eps,
                    int64_t threads)
{
    const int64_t L = pattern(C);  // the affine's pattern over whole vectors
    const int64_t vP = P - P % L;
    #pragma omp parallel num_threads(threads)
    {
        std::vector<float> sc(C), sh(C), scale(L), shift(L);
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const T* xn = x + n * P;
            T* yn = y + n * P;
            float mean, rstd;
            moments(xn, P, eps, mean, rstd);
            for (int64_t c = 0; c < C; c++) {
                sc[c] = w[c] * rstd;
                sh[c] = b[c] - mean * sc[c];
            }
            tile(sc.data(), C, L, scale.data());
            tile(sh.data(), C, L, shift.data());
            const Vec one(1.0f);
            for (int64_t j = 0; j < vP; j += L) {
                for (int64_t k = 0; k < L; k += V) {
                    const Vec a = load(xn + j + k) * Vec::loadu(scale.data() + k)
                                  + Vec::loadu(shift.data() + k);
                    store(yn + j + k, a / (one + a.neg().exp_u20()));
                }
            }
            for (int64_t j = vP; j < P; j++) {
                const int64_t c = j % C;
                yn[j] = static_cast<T>(silu(static_cast<float>(xn[j]) * sc[c] + sh[c]));
            }
            mean_out[n] = mean;
            rstd_out[n] = rstd;
        }
    }
}

extern "C" void kernel(const void* x, const float* w, const float* b, void* y, float* mean,
                       float* rstd, int64_t N, int64_t P, int64_t C, float eps,
                       int64_t bf16, int64_t threads)
{
    if (bf16)
        forward(static_cast<const at::BFloat16*>(x), w, b, static_cast<at::BFloat16*>(y),
                mean, rstd, N, P, C, eps, threads);
    else
        forward(static_cast<const float*>(x), w, b, static_cast<float*>(y), mean, rstd, N, P,
                C, eps, threads);
}
"""
FORWARD_ARGTYPES = ["const void*", "const float*", "const float*", "void*", "float*", "float*",
                    "int64_t", "int64_t", "int64_t", "float", "int64_t", "int64_t"]

BACKWARD_SOURCE = _COMMON + r"""
// g (the gradient of y), x: [N, P] as in the forward; mean, rstd: [N] from it. Writes gx
// [N, P] and adds each thread's sums of w's and b's gradients to its row of gw and gb
// [threads, C] (zeroed by the caller).
template <typename T>
static void backward(const T* g, const T* x, const float* mean, const float* rstd,
                     const float* w, const float* b, T* gx, float* gw, float* gb, int64_t N,
                     int64_t P, int64_t C, int64_t threads)
{
    const int64_t L = pattern(C);
    const int64_t vP = P - P % L;
    #pragma omp parallel num_threads(threads)
    {
        const int64_t t = omp_get_thread_num();
        std::vector<float> wk(L), bk(L), acc_w(L, 0.0f), acc_b(L, 0.0f), buf(P);
        tile(w, C, L, wk.data());
        tile(b, C, L, bk.data());
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const T* gn = g + n * P;
            const T* xn = x + n * P;
            T* gxn = gx + n * P;
            const float m = mean[n], r = rstd[n];
            const Vec vm(m), vr(r), one(1.0f);
            // pass 1: ga = g·silu'(a) at a = x̂·w + b; buf = ga·w (the gradient of x̂)
            Vec s1(0.0f), s2(0.0f);
            for (int64_t j = 0; j < vP; j += L) {
                for (int64_t k = 0; k < L; k += V) {
                    const Vec xh = (load(xn + j + k) - vm) * vr;
                    const Vec a = xh * Vec::loadu(wk.data() + k) + Vec::loadu(bk.data() + k);
                    const Vec sg = one / (one + a.neg().exp_u20());
                    const Vec ga = load(gn + j + k) * sg * (one + a * (one - sg));
                    (Vec::loadu(acc_w.data() + k) + ga * xh).store(acc_w.data() + k);
                    (Vec::loadu(acc_b.data() + k) + ga).store(acc_b.data() + k);
                    const Vec gh = ga * Vec::loadu(wk.data() + k);
                    gh.store(buf.data() + j + k);
                    s1 = s1 + gh;
                    s2 = s2 + gh * xh;
                }
            }
            float sum1 = sum_lanes(s1), sum2 = sum_lanes(s2);
            for (int64_t j = vP; j < P; j++) {
                const int64_t k = j % C;
                const float xh = (static_cast<float>(xn[j]) - m) * r;
                const float a = xh * wk[k] + bk[k];
                const float sg = 1.0f / (1.0f + std::exp(-a));
                const float ga = static_cast<float>(gn[j]) * sg * (1.0f + a * (1.0f - sg));
                acc_w[k] += ga * xh;
                acc_b[k] += ga;
                buf[j] = ga * wk[k];
                sum1 += buf[j];
                sum2 += buf[j] * xh;
            }
            // pass 2: gx = (buf - mean(buf) - x̂·mean(buf·x̂)) / std
            const float c1 = sum1 / P, c2 = sum2 / P;
            const Vec vc1(c1), vc2(c2);
            const int64_t vq = P - P % V;
            for (int64_t j = 0; j < vq; j += V) {
                const Vec xh = (load(xn + j) - vm) * vr;
                store(gxn + j, (Vec::loadu(buf.data() + j) - vc1 - xh * vc2) * vr);
            }
            for (int64_t j = vq; j < P; j++) {
                const float xh = (static_cast<float>(xn[j]) - m) * r;
                gxn[j] = static_cast<T>((buf[j] - c1 - xh * c2) * r);
            }
        }
        float* tw = gw + t * C;
        float* tb = gb + t * C;
        for (int64_t k = 0; k < L; k++) {
            tw[k % C] += acc_w[k];
            tb[k % C] += acc_b[k];
        }
    }
}

extern "C" void kernel(const void* g, const void* x, const float* mean, const float* rstd,
                       const float* w, const float* b, void* gx, float* gw, float* gb,
                       int64_t N, int64_t P, int64_t C, int64_t bf16, int64_t threads)
{
    if (bf16)
        backward(static_cast<const at::BFloat16*>(g), static_cast<const at::BFloat16*>(x),
                 mean, rstd, w, b, static_cast<at::BFloat16*>(gx), gw, gb, N, P, C, threads);
    else
        backward(static_cast<const float*>(g), static_cast<const float*>(x), mean, rstd, w, b,
                 static_cast<float*>(gx), gw, gb, N, P, C, threads);
}
"""
BACKWARD_ARGTYPES = ["const void*", "const void*", "const float*", "const float*",
                     "const float*", "const float*", "void*", "float*", "float*", "int64_t",
                     "int64_t", "int64_t", "int64_t", "int64_t"]

SUMS_SOURCE = _COMMON + r"""
// g: [N, P] with P = H·W·C, channel j % C (channels last). Writes out [C]: each channel's sum
// over N and P, each image's sums first in float32 (one thread's work, into part [N, C]),
// then over the images in order in double: the same values on any thread count.
template <typename T>
static void sums(const T* g, float* part, float* out, int64_t N, int64_t P, int64_t C,
                 int64_t threads)
{
    const int64_t L = pattern(C);
    const int64_t vP = P - P % L;
    #pragma omp parallel num_threads(threads)
    {
        std::vector<float> acc(L);
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const T* gn = g + n * P;
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int64_t j = 0; j < vP; j += L)
                for (int64_t k = 0; k < L; k += V)
                    (Vec::loadu(acc.data() + k) + load(gn + j + k)).store(acc.data() + k);
            float* pn = part + n * C;
            std::fill(pn, pn + C, 0.0f);
            for (int64_t k = 0; k < L; k++) pn[k % C] += acc[k];
            for (int64_t j = vP; j < P; j++) pn[j % C] += static_cast<float>(gn[j]);
        }
    }
    std::vector<double> total(C, 0.0);  // N·C adds: in double, no cost to speak of
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) total[c] += part[n * C + c];
    for (int64_t c = 0; c < C; c++) out[c] = static_cast<float>(total[c]);
}

extern "C" void kernel(const void* g, float* part, float* out, int64_t N, int64_t P,
                       int64_t C, int64_t bf16, int64_t threads)
{
    if (bf16)
        sums(static_cast<const at::BFloat16*>(g), part, out, N, P, C, threads);
    else
        sums(static_cast<const float*>(g), part, out, N, P, C, threads);
}
"""
SUMS_ARGTYPES = ["const void*", "float*", "float*", "int64_t", "int64_t", "int64_t", "int64_t",
                 "int64_t"]

_pixels = CppKernel(PIXELS_ARGTYPES, PIXELS_SOURCE)
_forward = CppKernel(FORWARD_ARGTYPES, FORWARD_SOURCE)
_backward = CppKernel(BACKWARD_ARGTYPES, BACKWARD_SOURCE)
_sums = CppKernel(SUMS_ARGTYPES, SUMS_SOURCE)
_KERNELS = (_pixels, _forward, _backward, _sums)
DTYPES = (torch.float32, torch.bfloat16)


def load() -> None:
    """Build the four kernels, or load them from the cache; raises what the build raised,
    and the torch ops serve then. All or none: a failure forgets those already built (a
    rebuild under another vector ISA, `Compiler.build`, rebuilds all four alike)."""
    load_all(_KERNELS)


def built() -> bool:
    """Whether the kernels are built (`load()`: all four or none)."""
    return all(kernel.built for kernel in _KERNELS)


def pixels(image: Tensor, dtype: torch.dtype) -> Tensor:
    """`image.to(float32) / 255 − 0.5` of a contiguous uint8 CPU tensor, in `dtype` (float32,
    or bfloat16 as that result cast), the same shape; `pixels_serve(image)`. Needs
    `load()`."""
    if not pixels_serve(image) or dtype not in DTYPES:
        raise ValueError(f"pixels takes a contiguous uint8 tensor on the CPU to float32 or "
                         f"bfloat16 with its kernel built; got {image.dtype} on "
                         f"{image.device} to {dtype}")
    out = torch.empty(image.shape, dtype=dtype)
    n = image.numel()
    if n:
        _pixels(image, out, n, int(dtype == torch.bfloat16), threads(-(-n // 16384)))
    return out


def pixels_serve(image: Tensor) -> bool:
    """Whether `pixels` serves these frames: built, uint8 on the CPU, contiguous."""
    return (built() and image.dtype == torch.uint8 and image.device.type == "cpu"
            and image.is_contiguous())


def serves(x: Tensor) -> bool:
    """Whether `norm_silu` and `channel_sums` serve this map: built, a 4-D float32 or
    bfloat16 map on the CPU, channels-last contiguous."""
    return (built() and x.dim() == 4 and x.dtype in DTYPES and x.device.type == "cpu"
            and x.is_contiguous(memory_format=torch.channels_last))


def _shape(x: Tensor) -> tuple[int, int, int]:
    N, C, H, W = x.shape
    return N, C * H * W, C


def _forward_call(x: Tensor, weight: Tensor, bias: Tensor,
                  eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd): the map's output and each image's mean and 1/std (for the
    backward; N floats)."""
    N, P, C = _shape(x)
    y = torch.empty_like(x, memory_format=torch.channels_last)
    mean, rstd = x.new_empty(N, dtype=torch.float32), x.new_empty(N, dtype=torch.float32)
    if x.numel():
        _forward(x, weight, bias, y, mean, rstd, N, P, C, float(eps),
                 int(x.dtype == torch.bfloat16), threads(N))
    return y, mean, rstd


class _NormSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        y, mean, rstd = _forward_call(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor) -> tuple:
        x, weight, bias, mean, rstd = ctx.saved_tensors
        g = g.to(x.dtype).contiguous(memory_format=torch.channels_last)
        N, P, C = _shape(x)
        n = threads(N)
        gx = torch.empty_like(x, memory_format=torch.channels_last)
        gw, gb = weight.new_zeros(n, C), weight.new_zeros(n, C)
        if x.numel():
            _backward(g, x, mean, rstd, weight, bias, gx, gw, gb, N, P, C,
                      int(x.dtype == torch.bfloat16), n)
        return gx, gw.sum(0), gb.sum(0), None


def norm_silu(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """silu(group_norm(x, 1, weight, bias, eps)) for a channels-last [N, C, H, W] map
    (`serves(x)`), float32 weights; the output in x's dtype and layout. Records autograd
    where grad is on (no double backward). Needs `load()`."""
    if not serves(x):
        raise ValueError(f"norm_silu takes a channels-last [N, C, H, W] float32 or bfloat16 "
                         f"map on the CPU with its kernels built; got {tuple(x.shape)} "
                         f"{x.dtype} on {x.device}")
    if weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
        raise ValueError(f"norm_silu takes a weight and a bias of the map's {x.shape[1]} "
                         f"channels, got {tuple(weight.shape)} and {tuple(bias.shape)}")
    weight, bias = weight.float().contiguous(), bias.float().contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or bias.requires_grad):
        return _NormSiLU.apply(x, weight, bias, eps)
    return _forward_call(x, weight, bias, eps)[0]


def channel_sums(g: Tensor) -> Tensor:
    """Each channel's sum over N, H and W of a channels-last [N, C, H, W] float32 or bfloat16
    map (`serves(g)`), in float32 [C]: each image's sums in float32, then over the images in
    order in float64.
    One read of g (a transposed conv's bias gradient; ATen's sum first copied a bfloat16
    gradient to float32). Needs `load()`."""
    if not serves(g):
        raise ValueError(f"channel_sums takes a channels-last [N, C, H, W] float32 or bfloat16 "
                         f"map on the CPU with its kernels built; got {tuple(g.shape)} "
                         f"{g.dtype} on {g.device}")
    N, P, C = _shape(g)
    out = torch.zeros(C)
    if g.numel():
        _sums(g, torch.empty(N, C), out, N, P, C, int(g.dtype == torch.bfloat16), threads(N))
    return out
