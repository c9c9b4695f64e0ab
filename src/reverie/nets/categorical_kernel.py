"""A factored categorical's sample from its logits in one pass: a C++ kernel (run.compile=on).

Imagination draws z_{t+1} ~ p(z | h_t) at every step: S categoricals of K classes with 1%
of the uniform mixed in (`reverie.nets.math.unimix`). As torch ops that is a softmax, the
mixture and its log (the prior's logits), then `WorldModel.sample_index`'s softmax again, a
cumulative sum, a compare against one uniform per categorical and a one-hot scatter: five
reductions over each K-wide row and a cumsum that inductor leaves to ATen. At
bench/throughput.py's sizes (1024 rollouts, 32x32 latents) its compiled form took ~3 ms of
each ~12.5 ms imagined step (2 threads, torch profiler). Without autograd (imagination runs
under no_grad) only the sample is needed, so this kernel reads each row once: its maximum,
the exponentials and their sum, then the running sum of the mixed probabilities up to the
first one that reaches u times their total (inverse-CDF sampling, the same draw as
`sample_index` for the same uniforms), and writes the class and the one-hot row.

The probabilities are the same up to float rounding as softmax(unimix(logits)) (no log and
second softmax in between), so a uniform that falls within rounding of a boundary between
two classes may pick the neighbour; the random stream is the same (one uniform per
categorical, drawn by torch). Rows are independent: the same values run after run, on any
thread count.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reverie.nets.cpp_kernel import CppKernel, threads

SOURCE = r"""
#include <torch/csrc/inductor/cpp_prefix.h>

// Row r of logits [rows, K]: q_k = (1 - mix) softmax(logits_r)_k + mix / K; the sample is
// the number of running sums q_0 + ... + q_k below u_r times their total, at most K - 1.
// V rows at a time, one per vector lane: the block is transposed into t [K][V], so that
// every step (maximum, exponentials, sums, the running sum and its compare) is one vector
// operation for V rows, with no reduction across lanes and no branch.
extern "C" void kernel(const float* logits, const float* u, int64_t* index, float* onehot,
                       int64_t rows, int64_t K, float mix, int64_t threads)
{
    using Vec = at::vec::Vectorized<float>;
    constexpr int64_t V = Vec::size();
    const int64_t blocks = (rows + V - 1) / V;
    #pragma omp parallel num_threads(threads)
    {
        std::vector<float> t(K * V);
        float lane[V];
        int32_t lane_offset[V];  // where each lane's row starts, relative to the block's
        for (int64_t i = 0; i < V; i++) lane_offset[i] = static_cast<int32_t>(i * K);
        const auto offsets = at::vec::Vectorized<int32_t>::loadu(lane_offset);
        #pragma omp for
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t r0 = b * V, n = std::min(V, rows - r0);
            if (n == V) {  // a full block: column k of V rows in one vector gather
                for (int64_t k = 0; k < K; k++)
                    at::vec::gather<4>(logits + r0 * K + k, offsets).store(t.data() + k * V);
            } else {  // the last rows: copied one by one, the empty lanes zero
                for (int64_t i = 0; i < n; i++)
                    for (int64_t k = 0; k < K; k++) t[k * V + i] = logits[(r0 + i) * K + k];
                for (int64_t i = n; i < V; i++)
                    for (int64_t k = 0; k < K; k++) t[k * V + i] = 0.0f;
            }
            Vec m = Vec::loadu(t.data());
            for (int64_t k = 1; k < K; k++) m = at::vec::maximum(m, Vec::loadu(t.data() + k * V));
            Vec s(0.0f);
            for (int64_t k = 0; k < K; k++) {
                Vec e = (Vec::loadu(t.data() + k * V) - m).exp();
                e.store(t.data() + k * V);
                s = s + e;
            }
            for (int64_t i = 0; i < V; i++) lane[i] = i < n ? u[r0 + i] : 0.0f;
            const Vec a = Vec(1.0f - mix) / s, c(mix / K), one(1.0f);
            const Vec target = Vec::loadu(lane) * (a * s + Vec(mix));
            Vec run(0.0f), count(0.0f);
            for (int64_t k = 0; k < K; k++) {
                run = run + (a * Vec::loadu(t.data() + k * V) + c);
                count = count + ((run < target) & one);
            }
            count.store(lane);
            for (int64_t i = 0; i < n; i++) {
                const int64_t pick = std::min<int64_t>(static_cast<int64_t>(lane[i]), K - 1);
                index[r0 + i] = pick;
                float* o = onehot + (r0 + i) * K;
                std::fill(o, o + K, 0.0f);
                o[pick] = 1.0f;
            }
        }
    }
}
"""
ARGTYPES = ["const float*", "const float*", "int64_t*", "float*", "int64_t", "int64_t", "float",
            "int64_t"]

_kernel = CppKernel(ARGTYPES, SOURCE)


def load() -> None:
    """Build the kernel, or load it from the cache; raises what the build raised, and the
    torch ops (`WorldModel.sample_index`) serve then."""
    _kernel.load()


@torch.library.custom_op("reverie::unimix_sample", mutates_args=())
def unimix_sample(logits: Tensor, u: Tensor, mix: float) -> tuple[Tensor, Tensor]:
    """logits [N, K] float32 and u [N] uniforms in [0, 1) -> the class drawn from each row's
    (1 − mix)·softmax + mix/K, [N] int64, and its one-hot [N, K] float32. Needs `load()`."""
    if not _kernel.built:
        raise RuntimeError("reverie.nets.categorical_kernel.load() has not built the kernel")
    if (logits.dim() != 2 or u.shape != logits.shape[:1] or logits.dtype != torch.float32
            or u.dtype != torch.float32 or logits.device.type != "cpu"):
        raise ValueError(f"unimix_sample takes logits [N, K] and u [N], float32 on the CPU, "
                         f"got {tuple(logits.shape)} {logits.dtype} on {logits.device} and "
                         f"{tuple(u.shape)} {u.dtype}")
    if not 0.0 <= mix < 1.0:
        raise ValueError(f"unimix must be in [0, 1), got {mix}")
    logits, u = logits.contiguous(), u.contiguous()
    rows, classes = logits.shape
    index = torch.empty(rows, dtype=torch.int64)
    onehot = logits.new_empty(rows, classes)
    if rows and classes:
        # a thread per block of rows (one row per vector lane: 16 with AVX-512, 8 with AVX2)
        _kernel(logits, u, index, onehot, rows, classes, float(mix), threads(-(-rows // 8)))
    return index, onehot


@unimix_sample.register_fake
def _(logits: Tensor, u: Tensor, mix: float) -> tuple[Tensor, Tensor]:
    # contiguous, as the kernel's outputs are whatever the logits' strides
    rows, classes = logits.shape
    return logits.new_empty(rows, dtype=torch.int64), logits.new_empty(rows, classes)


def serves(logits: Tensor) -> bool:
    """Whether `unimix_sample` serves these logits: built, CPU float32."""
    return _kernel.serves(logits)
