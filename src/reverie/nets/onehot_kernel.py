"""The weight gradient of a one-hot layer as a row scatter: a C++ kernel (run.compile=on).

A layer that reads a one-hot latent (`reverie.nets.onehot`) has the weight gradient
gradᵀ @ onehot: [O, N] @ [N, W], the dense product that autograd would compute, O·N·W
multiply-adds of which O·N·S are not with zeros (S ones per row, W = S·K). As a scatter,
column k of the gradient is the sum of the rows of `grad` whose ones include k: N·S row
additions of O values, K times fewer operations. No torch op does that without atomics or
a pass per categorical (in scratch microbenchmarks at the sizes below, index_add_ per group,
index_put_ with accumulate, a sparse product, embedding_bag's backward and inductor's
compiled scatter were not faster than the dense product), so this is a kernel of its own:
each thread sums its share of the rows into a private [W, O] block (in cache: 1 MB at
W = 1024, O = 256), then the blocks are added. At bench/throughput.py's
sizes (N = 15,360, W = 1024, O = 256) it takes ~5 ms where the dense product takes ~22, on
2 threads (scratch microbenchmark; whole updates: bench/onehot.py).

It is built by inductor's C++ code cache (`reverie.nets.cpp_kernel`: the compiler, flags
and vector ISA that torch.compile uses, cached in the same folder: 2–8 s once per machine
and torch version, milliseconds after), so it is part of run.compile=on, whose user
accepted a compile; an agent asks for it with `load()` and keeps the dense product if that
raises. Sums run in another order than the dense product's: values agree to float rounding;
the same thread count gives the same values run after run (with OMP_DYNAMIC off, OpenMP's
default).

`onehot_weight_grad` is a torch custom op, so a compiled loss calls it as one opaque kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reverie.nets.cpp_kernel import CppKernel, threads

SOURCE = r"""
#include <torch/csrc/inductor/cpp_prefix.h>

// out [width, outs] = sum over rows r and ones s of grad[r] added to row index[r, s];
// thread t sums rows [rows*t/n, rows*(t+1)/n) into its own block (t = 0: out itself,
// others: scratch), then the blocks are added. error: 1 if an index is outside [0, width).
extern "C" void kernel(const float* grad, const int64_t* index, float* out, float* scratch,
                       int64_t* error, int64_t rows, int64_t ones, int64_t width,
                       int64_t outs, int64_t threads)
{
    using Vec = at::vec::Vectorized<float>;
    constexpr int64_t V = Vec::size();
    const int64_t size = width * outs;
    #pragma omp parallel num_threads(threads)
    {
        const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
        float* acc = t == 0 ? out : scratch + (t - 1) * size;
        std::fill(acc, acc + size, 0.0f);
        int64_t bad = 0;
        for (int64_t r = rows * t / n; r < rows * (t + 1) / n; r++) {
            const float* g = grad + r * outs;
            const int64_t* idx = index + r * ones;
            for (int64_t s = 0; s < ones; s++) {
                const int64_t k = idx[s];
                if (k < 0 || k >= width) { bad = 1; continue; }
                float* dst = acc + k * outs;
                int64_t o = 0;
                for (; o + V <= outs; o += V)
                    (Vec::loadu(dst + o) + Vec::loadu(g + o)).store(dst + o);
                for (; o < outs; o++) dst[o] += g[o];
            }
        }
        if (bad) {
            #pragma omp atomic write
            *error = 1;
        }
        #pragma omp barrier
        #pragma omp for
        for (int64_t i = 0; i < size; i++) {
            float sum = out[i];
            for (int64_t u = 1; u < n; u++) sum += scratch[(u - 1) * size + i];
            out[i] = sum;
        }
    }
}
"""
ARGTYPES = ["const float*", "const int64_t*", "float*", "float*", "int64_t*", "int64_t",
            "int64_t", "int64_t", "int64_t", "int64_t"]

_kernel = CppKernel(ARGTYPES, SOURCE)


def load() -> None:
    """Build the kernel, or load it from the cache; raises what the build raised (no C++
    compiler, another torch's internals, ...), and the dense product serves then."""
    _kernel.load()


@torch.library.custom_op("reverie::onehot_weight_grad", mutates_args=())
def onehot_weight_grad(grad: Tensor, index: Tensor, width: int) -> Tensor:
    """grad [N, O] float32 and index [N, S] int64 (columns in [0, width)) -> [width, O],
    row k the sum of grad's rows whose index holds k: (gradᵀ @ onehot)ᵀ. Needs `load()`."""
    if not _kernel.built:
        raise RuntimeError("reverie.nets.onehot_kernel.load() has not built the kernel")
    if (grad.dim() != 2 or index.dim() != 2 or index.shape[0] != grad.shape[0]
            or grad.dtype != torch.float32 or grad.device.type != "cpu"):
        raise ValueError(f"onehot_weight_grad takes grad [N, O] float32 on the CPU and index "
                         f"[N, S], got {tuple(grad.shape)} {grad.dtype} on {grad.device} and "
                         f"{tuple(index.shape)}")
    grad, index = grad.contiguous(), index.to(torch.int64).contiguous()
    rows, outs = grad.shape
    n = threads(rows)
    out = grad.new_empty(width, outs)
    scratch = grad.new_empty(n - 1, width, outs)
    error = torch.zeros(1, dtype=torch.int64)
    _kernel(grad, index, out, scratch, error, rows, index.shape[1], width, outs, n)
    if error.item():
        raise ValueError(f"one-hot columns must be in [0, {width}); index holds "
                         f"{index.min().item()}..{index.max().item()}")
    return out


@onehot_weight_grad.register_fake
def _(grad: Tensor, index: Tensor, width: int) -> Tensor:
    return grad.new_empty(width, grad.shape[1])


def serves(grad: Tensor) -> bool:
    """Whether `onehot_weight_grad` serves this gradient: built, CPU float32."""
    return _kernel.serves(grad)
