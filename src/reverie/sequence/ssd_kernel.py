"""Mamba-2's one-token recurrence in one pass over its state, and its conv step in one pass over
its prefix: C++ kernels (run.compile=on).

Each imagined step of a Mamba-2 world model updates a [B, H, P, N] state (32 MB at
bench/throughput.py's 1024 rollouts, 64 MB a layer at atari100k's) and reads it out:
h' = exp(dt·A)·h + dt·x ⊗ B, y = h'·C + D·x. Compiled by inductor that is one pass that
writes h' and a second that reads the old state again for y (`ssd_step`'s form, which saves
eager PyTorch a third pass), with a horizontal reduction for every row of N; the state
does not fit in the caches' fast levels, so the passes are what it costs. This kernel
reads each state row once and writes h' over h and y from registers: for a caller that
promises that nothing else holds the old state (`Block.step`'s `overwrite`: imagination's
own rollout state; a new state tensor per step was no faster than the compiled form).
With AVX-512 or AVX2 the dot products with C are summed V rows of the state at a time by a
tree of lane shuffles, not one horizontal sum per row: at atari100k's step (N = 16) that
made the kernel 1.32x faster (median of 16 alternating rounds, 2 threads, 2026-12-07) with
the same bits: each ISA's horizontal sum in ATen is the same tree of adds (tested).

The conv before it (`causal_conv_step`: the prefix of the last K−1 inputs and the new one
copied together into a window, and the prefix's new view copied out again to keep the
state's layout) has a kernel too, `conv_step_`: one pass that reads each prefix row, adds
the K products in the compiled form's order (the same bits) and moves the prefix one token
on in place. At atari100k's 1024 rollouts ~1.0 ms against ~3.1 ms compiled (10 alternating
rounds, scratch, 2026-12-07).

Sums run in another order than `ssd_step`'s (y from h' instead of from h and B·C): values
agree to float rounding. Rows are independent: the same values on any thread count.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reverie.nets.cpp_kernel import VEC_PRELUDE, CppKernel, load_all, threads

SOURCE = r"""
#include <torch/csrc/inductor/cpp_prefix.h>

// lane_sums(r): the sums of V vectors' lanes, vector i's sum in lane i (V = the ISA's float
// lanes), by a tree of lane shuffles and adds: ~3 instructions a vector where a horizontal
// sum of each costs ~10 (AVX-512 and AVX2; other ISAs sum each row on its own).
#if defined(CPU_CAPABILITY_AVX512)
#define REVERIE_LANE_SUMS 1
static inline at::vec::Vectorized<float> lane_sums(const at::vec::Vectorized<float>* r) {
    __m512 s[8], t[4];
    for (int k = 0; k < 8; k++) {  // s[k]: 128-bit quarters of partial sums of r[2k], r[2k+1]
        const __m512 a = r[2 * k], b = r[2 * k + 1];
        s[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    for (int k = 0; k < 4; k++)  // t[k]: quarter j holds four partial sums of r[4k + j]
        t[k] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * k], s[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(s[2 * k], s[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 u = _mm512_add_ps(_mm512_unpacklo_ps(t[0], t[1]), _mm512_unpackhi_ps(t[0], t[1]));
    const __m512 v = _mm512_add_ps(_mm512_unpacklo_ps(t[2], t[3]), _mm512_unpackhi_ps(t[2], t[3]));
    // lane 4j + m: the sum of r[4m + j]
    const __m512 f = _mm512_add_ps(_mm512_shuffle_ps(u, v, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_ps(u, v, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(order, f);
}
#elif defined(CPU_CAPABILITY_AVX2)
#define REVERIE_LANE_SUMS 1
static inline at::vec::Vectorized<float> lane_sums(const at::vec::Vectorized<float>* r) {
    __m256 s[4];
    for (int k = 0; k < 4; k++) {  // s[k]: 128-bit halves of partial sums of r[2k], r[2k+1]
        const __m256 a = r[2 * k], b = r[2 * k + 1];
        s[k] = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20),
                             _mm256_permute2f128_ps(a, b, 0x31));
    }
    const __m256 u = _mm256_add_ps(_mm256_unpacklo_ps(s[0], s[1]), _mm256_unpackhi_ps(s[0], s[1]));
    const __m256 v = _mm256_add_ps(_mm256_unpacklo_ps(s[2], s[3]), _mm256_unpackhi_ps(s[2], s[3]));
    // lane 4j + m: the sum of r[2m + j]
    const __m256 f = _mm256_add_ps(_mm256_shuffle_ps(u, v, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm256_shuffle_ps(u, v, _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
#else
#define REVERIE_LANE_SUMS 0
#endif

// For each row b and head g: a = exp(dt[b,g] A[g]); for p < P, with d = dt[b,g] x[b,g,p]:
// out[b,g,p,:] = a h[b,g,p,:] + d B[b,:] and y[b,g,p] = out[b,g,p,:] . C[b,:] + D[g] x[b,g,p].
// out may be h itself. x, B and C are read at row strides xs, Bs and Cs (a row of x is
// [H, P] contiguous, a row of B or C [N]): views into the conv's output need no copy.
// Where N is a multiple of V, y's sums are taken V values of p at a time (lane_sums); the
// rest of p, and other N, one p at a time.
extern "C" void kernel(const float* x, const float* dt, const float* A, const float* B,
                       const float* C, const float* D, const float* h, float* y, float* out,
                       int64_t rows, int64_t H, int64_t P, int64_t N, int64_t xs, int64_t Bs,
                       int64_t Cs, int64_t threads)
{
    using Vec = at::vec::Vectorized<float>;
    constexpr int64_t V = Vec::size();
    const int64_t vN = N - N % V;
    const int64_t vP = REVERIE_LANE_SUMS && N % V == 0 ? P - P % V : 0;
    #pragma omp parallel for num_threads(threads)
    for (int64_t bg = 0; bg < rows * H; bg++) {
        const int64_t b = bg / H, g = bg % H;
        const float step = dt[bg], a = std::exp(step * A[g]);
        const float* Bb = B + b * Bs;
        const float* Cb = C + b * Cs;
        const float* xr = x + b * xs + g * P;
        float* yr = y + bg * P;
#if REVERIE_LANE_SUMS
        // N == V (reverie's and Drama's N = 16 on AVX-512): a row of B, C or the state is a vector
        const Vec B0 = N == V ? Vec::loadu(Bb) : Vec(0.0f);
        const Vec C0 = N == V ? Vec::loadu(Cb) : Vec(0.0f);
        for (int64_t p0 = 0; p0 < vP; p0 += V) {
            Vec acc[V];
            for (int64_t i = 0; i < V; i++) {
                const int64_t p = p0 + i;
                const Vec d(step * xr[p]);
                const float* src = h + (bg * P + p) * N;
                float* dst = out + (bg * P + p) * N;
                if (N == V) {
                    const Vec v = Vec(a) * Vec::loadu(src) + d * B0;
                    v.store(dst);
                    acc[i] = v * C0;
                    continue;
                }
                Vec sum(0.0f);
                for (int64_t n = 0; n < N; n += V) {
                    const Vec v = Vec(a) * Vec::loadu(src + n) + d * Vec::loadu(Bb + n);
                    v.store(dst + n);
                    sum = sum + v * Vec::loadu(Cb + n);
                }
                acc[i] = sum;
            }
            (lane_sums(acc) + Vec(D[g]) * Vec::loadu(xr + p0)).store(yr + p0);
        }
#endif
        for (int64_t p = vP; p < P; p++) {
            const float d = step * xr[p];
            const float* src = h + (bg * P + p) * N;
            float* dst = out + (bg * P + p) * N;
            Vec acc(0.0f);
            for (int64_t n = 0; n < vN; n += V) {
                const Vec v = Vec(a) * Vec::loadu(src + n) + Vec(d) * Vec::loadu(Bb + n);
                v.store(dst + n);
                acc = acc + v * Vec::loadu(Cb + n);
            }
            float sum = vN ? at::vec::vec_reduce_all<float, 1>(
                [](Vec& l, Vec& r) { return l + r; }, acc) : 0.0f;
            for (int64_t n = vN; n < N; n++) {
                const float v = a * src[n] + d * Bb[n];
                dst[n] = v;
                sum += v * Cb[n];
            }
            yr[p] = sum + D[g] * xr[p];
        }
    }
}
"""
ARGTYPES = ["const float*"] * 7 + ["float*", "float*"] + ["int64_t"] * 8

_kernel = CppKernel(ARGTYPES, SOURCE)

CONV_SOURCE = VEC_PRELUDE + r"""
// One token of the causal depthwise conv over a row's last K-1 inputs (prefix [B, K-1, C],
// float32) and its new input x (rows of C at stride xs, float32 or bfloat16): y[b, c] =
// bias[c] + sum_k w[k, c] window[b, k, c] with window = [prefix, x], added in k's order (as
// `causal_conv_step` adds them), and the prefix moved one token on in place: slot k takes
// slot k+1, the last slot x. w: [K, C] contiguous.
template <typename T>
static void conv_step(const T* x, const float* w, const float* bias, float* prefix, float* y,
                      int64_t rows, int64_t K, int64_t C, int64_t xs, int64_t threads)
{
    const int64_t vC = C - C % V;
    #pragma omp parallel for num_threads(threads)
    for (int64_t b = 0; b < rows; b++) {
        float* s = prefix + b * (K - 1) * C;
        const T* xb = x + b * xs;
        float* yb = y + b * C;
        for (int64_t c = 0; c < vC; c += V) {
            Vec acc = Vec::loadu(bias + c);
            for (int64_t k = 0; k + 1 < K; k++) {
                const Vec v = Vec::loadu(s + k * C + c);
                acc = acc + v * Vec::loadu(w + k * C + c);
                if (k) v.store(s + (k - 1) * C + c);
            }
            const Vec v = load(xb + c);
            acc = acc + v * Vec::loadu(w + (K - 1) * C + c);
            if (K > 1) v.store(s + (K - 2) * C + c);
            acc.store(yb + c);
        }
        for (int64_t c = vC; c < C; c++) {
            float acc = bias[c];
            for (int64_t k = 0; k + 1 < K; k++) {
                const float v = s[k * C + c];
                acc = acc + v * w[k * C + c];
                if (k) s[(k - 1) * C + c] = v;
            }
            const float v = static_cast<float>(xb[c]);
            acc = acc + v * w[(K - 1) * C + c];
            if (K > 1) s[(K - 2) * C + c] = v;
            yb[c] = acc;
        }
    }
}

extern "C" void kernel(const void* x, const float* w, const float* bias, float* prefix,
                       float* y, int64_t rows, int64_t K, int64_t C, int64_t xs, int64_t bf16,
                       int64_t threads)
{
    if (bf16)
        conv_step(static_cast<const at::BFloat16*>(x), w, bias, prefix, y, rows, K, C, xs,
                  threads);
    else
        conv_step(static_cast<const float*>(x), w, bias, prefix, y, rows, K, C, xs, threads);
}
"""
CONV_ARGTYPES = ["const void*", "const float*", "const float*", "float*", "float*", "int64_t",
                 "int64_t", "int64_t", "int64_t", "int64_t", "int64_t"]

_conv = CppKernel(CONV_ARGTYPES, CONV_SOURCE)


def load() -> None:
    """Build the two kernels (the state's step and the conv's), or load them from the cache;
    raises what the build raised, and `reverie.sequence.ssd.ssd_step` and
    `reverie.sequence.base.causal_conv_step` serve then. All or none, as
    `reverie.nets.image_kernel.load`."""
    load_all((_kernel, _conv))


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
           h: Tensor) -> None:
    if not _kernel.built:
        raise RuntimeError("reverie.sequence.ssd_kernel.load() has not built the kernels")
    rows, H, P, N = h.shape if h.dim() == 4 else (-1,) * 4
    shapes = {"x": (x, (rows, H, P)), "dt": (dt, (rows, H)), "A": (A, (H,)), "B": (B, (rows, N)),
              "C": (C, (rows, N)), "D": (D, (H,))}
    bad = [k for k, (t, s) in shapes.items() if tuple(t.shape) != s]
    tensors = [x, dt, A, B, C, D, h]
    if h.dim() != 4 or bad or not _kernel.serves(*tensors):
        raise ValueError(
            "ssd_step takes h [B, H, P, N], x [B, H, P], dt [B, H], A [H], B and C [B, N], "
            f"D [H], float32 on the CPU; got h {tuple(h.shape)}"
            + (f", mismatched {', '.join(bad)}" if bad else "")
            + f" ({', '.join(sorted({str(t.dtype) for t in tensors}))})")


@torch.library.custom_op("reverie::ssd_step_", mutates_args=("h",))
def ssd_step_(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
              h: Tensor) -> Tensor:
    """One token of `reverie.sequence.ssd.ssd_step` plus D·x, the new state written over
    `h` (contiguous): returns y [B, H, P]. Shapes as there, D [H]; float32 on the CPU.
    Needs `load()`."""
    _check(x, dt, A, B, C, D, h)
    if not h.is_contiguous():
        raise ValueError("ssd_step_ writes over a contiguous state [B, H, P, N]")
    rows, H, P, N = h.shape
    # x, B and C as they come where their rows are contiguous (split views of one tensor)
    if x.stride()[1:] != (P, 1):
        x = x.contiguous()
    B, C = (t if t.stride(1) == 1 else t.contiguous() for t in (B, C))
    dt, A, D = (t.contiguous() for t in (dt, A, D))
    y = x.new_empty(rows, H, P)
    if h.numel():
        _kernel(x, dt, A, B, C, D, h, y, h, rows, H, P, N, x.stride(0), B.stride(0),
                C.stride(0), threads(rows * H))
    return y


@ssd_step_.register_fake
def _(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h: Tensor) -> Tensor:
    return x.new_empty(x.shape)


def serves(*tensors: Tensor) -> bool:
    """Whether `ssd_step_` serves these operands (x, dt, A, B, C, D, h): built, all float32
    on the CPU, the state contiguous."""
    return _kernel.serves(*tensors) and tensors[-1].is_contiguous()


@torch.library.custom_op("reverie::conv_step_", mutates_args=("prefix",))
def conv_step_(x: Tensor, weight: Tensor, bias: Tensor, prefix: Tensor) -> Tensor:
    """`reverie.sequence.base.causal_conv_step(x, weight, bias, prefix)` with the new prefix
    written over `prefix`: returns y [B, C] (float32), the same bits as inductor's form of it
    (the same products added in the same order; eager ATen's may fuse a multiply-add: float
    rounding). x [B, C] float32 or bfloat16 (rows contiguous, at any row
    stride: a split view of in_proj's output), weight [C, K], bias [C], prefix [B, K−1, C]
    float32, contiguous. Needs `load()`."""
    if not conv_serves(x, weight, bias, prefix):
        raise ValueError(
            "conv_step_ takes x [B, C] (float32 or bfloat16, rows contiguous), weight [C, K], "
            "bias [C] and a contiguous prefix [B, K-1, C] (float32) on the CPU with its kernel "
            f"built; got x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} "
            f"{weight.dtype}, bias {tuple(bias.shape)} {bias.dtype}, prefix "
            f"{tuple(prefix.shape)} {prefix.dtype}")
    rows, C = x.shape
    K = weight.shape[1]
    y = prefix.new_empty(rows, C)
    if x.numel():
        _conv(x, weight.t().contiguous(), bias.contiguous(), prefix, y, rows, K, C,
              x.stride(0), int(x.dtype == torch.bfloat16), threads(rows))
    return y


@conv_step_.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor, prefix: Tensor) -> Tensor:
    return prefix.new_empty(x.shape)


def conv_serves(x: Tensor, weight: Tensor, bias: Tensor, prefix: Tensor) -> bool:
    """Whether `conv_step_` serves these operands: built; x [B, C] float32 or bfloat16 with
    contiguous rows; weight [C, K], bias [C] and prefix [B, K−1, C] float32, the prefix
    contiguous; all on the CPU."""
    if not _conv.built or x.dim() != 2 or weight.dim() != 2:
        return False
    rows, C = x.shape
    K = weight.shape[1]
    return (x.dtype in (torch.float32, torch.bfloat16) and (x.stride(1) == 1 or C <= 1)
            and _conv.serves(weight, bias, prefix)
            and weight.shape == (C, K) and bias.shape == (C,)
            and prefix.shape == (rows, K - 1, C) and prefix.is_contiguous()
            and x.device.type == "cpu")
