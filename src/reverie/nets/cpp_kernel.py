"""reverie's own C++ kernels (run.compile=on), built by inductor's C++ code cache.

`CppKernel(argtypes, source)` compiles `source`'s `extern "C" void kernel(...)` with the
compiler, flags and vector ISA that torch.compile uses, cached in the same folder (seconds
once per machine and torch version, milliseconds after), and calls it with tensors (as
pointers) and numbers. The source includes inductor's `cpp_prefix.h`: ATen's `at::vec`
vector types and OpenMP. A user of run.compile=on accepted a compile, so the kernels are part
of it (`Compiler.build`); where one does not build, the torch code it replaces runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class CppKernel:
    """One C++ function: `load()` builds it (raises what the build raised: no C++ compiler,
    another torch's internals, ...), `built` says whether it is, calling it runs it."""

    def __init__(self, argtypes: list[str], source: str) -> None:
        self.argtypes, self.source = argtypes, source
        self._fn: Any = None

    def load(self) -> None:
        if self._fn is None:
            from torch._inductor.codecache import CppPythonBindingsCodeCache

            self._fn = CppPythonBindingsCodeCache.load_pybinding(self.argtypes, self.source)

    def unload(self) -> None:
        """Forget the built function (the next `load()` builds or loads it again)."""
        self._fn = None

    @property
    def built(self) -> bool:
        return self._fn is not None

    def serves(self, *tensors: Tensor) -> bool:
        """Built, and every tensor float32 on the CPU (what the kernels read)."""
        return self.built and all(t.dtype == torch.float32 and t.device.type == "cpu"
                                  for t in tensors)

    def __call__(self, *args: Any) -> None:
        if self._fn is None:
            raise RuntimeError("this kernel has not been built: call its load() first")
        self._fn(*args)


# The start of a kernel source that reads float32 or bfloat16 vectors: inductor's prefix
# (ATen's `at::vec`, OpenMP), the vector type, its float lanes V and `load` of V values of
# either dtype as float32.
VEC_PRELUDE = r"""
#include <torch/csrc/inductor/cpp_prefix.h>

using Vec = at::vec::Vectorized<float>;
constexpr int64_t V = Vec::size();

static inline Vec load(const float* p) { return Vec::loadu(p); }
static inline Vec load(const at::BFloat16* p) {
    Vec v;
    at::vec::load_fp32_from_bf16(p, v);
    return v;
}
"""


def load_all(kernels: tuple[CppKernel, ...]) -> None:
    """Build `kernels`, or load them from the cache, all or none: a failure forgets those
    already built (a rebuild under another vector ISA, `Compiler.build`, rebuilds all alike)
    and raises what the build raised."""
    try:
        for kernel in kernels:
            kernel.load()
    except Exception:
        for kernel in kernels:
            kernel.unload()
        raise


def threads(work: int) -> int:
    """OpenMP threads for `work` independent pieces: torch's thread count, at most one per
    piece, at least one."""
    return max(1, min(torch.get_num_threads(), work))


def on_cpu(module: nn.Module) -> bool:
    """Whether every parameter of `module` is on the CPU, where the kernels run."""
    return all(p.device.type == "cpu" for p in module.parameters())
