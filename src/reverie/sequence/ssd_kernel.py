"""Mamba-2's one-token recurrence in one pass over its state: a C++ kernel (run.compile=on).

Each imagined step of a Mamba-2 world model updates a [B, H, P, N] state (32 MB at
bench/throughput.py's 1024 rollouts, 64 MB a layer at atari100k's) and reads it out:
h' = exp(dt·A)·h + dt·x ⊗ B, y = h'·C + D·x. Compiled by inductor that is one pass that
writes h' and a second that reads the old state again for y (`ssd_step`'s form, which saves
eager PyTorch a third pass), with a horizontal reduction for every row of N; the state
does not fit in the caches' fast levels, so the passes are what it costs. This kernel
reads each state row once and writes h' over h and y from registers: for a caller that
promises that nothing else holds the old state (`Block.step`'s `overwrite`: imagination's
own rollout state; a new state tensor per step was no faster than the compiled form).

Sums run in another order than `ssd_step`'s (y from h' instead of from h and B·C): values
agree to float rounding. Rows are independent: the same values on any thread count.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reverie.nets.cpp_kernel import CppKernel, threads

SOURCE = r"""
#include <torch/csrc/inductor/cpp_prefix.h>

// For each row b and head g: a = exp(dt[b,g] A[g]); for p < P, with d = dt[b,g] x[b,g,p]:
// out[b,g,p,:] = a h[b,g,p,:] + d B[b,:] and y[b,g,p] = out[b,g,p,:] . C[b,:] + D[g] x[b,g,p].
// out may be h itself. x, B and C are read at row strides xs, Bs and Cs (a row of x is
// [H, P] contiguous, a row of B or C [N]): views into the conv's output need no copy.
extern "C" void kernel(const float* x, const float* dt, const float* A, const float* B,
                       const float* C, const float* D, const float* h, float* y, float* out,
                       int64_t rows, int64_t H, int64_t P, int64_t N, int64_t xs, int64_t Bs,
                       int64_t Cs, int64_t threads)
{
    using Vec = at::vec::Vectorized<float>;
    constexpr int64_t V = Vec::size();
    const int64_t vN = N - N % V;
    #pragma omp parallel for num_threads(threads)
    for (int64_t bg = 0; bg < rows * H; bg++) {
        const int64_t b = bg / H, g = bg % H;
        const float step = dt[bg], a = std::exp(step * A[g]);
        const float* Bb = B + b * Bs;
        const float* Cb = C + b * Cs;
        const float* xr = x + b * xs + g * P;
        float* yr = y + bg * P;
        for (int64_t p = 0; p < P; p++) {
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


def load() -> None:
    """Build the kernel, or load it from the cache; raises what the build raised, and
    `reverie.sequence.ssd.ssd_step` serves then."""
    _kernel.load()


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
           h: Tensor) -> None:
    if not _kernel.built:
        raise RuntimeError("reverie.sequence.ssd_kernel.load() has not built the kernel")
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
