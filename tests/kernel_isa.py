"""Shared by the kernel tests: reverie's C++ kernels built for another vector ISA than the
machine's (AVX2 is the ISA of most laptops, while the machine that runs the tests may pick
AVX-512, and the kernels' vector code differs between them: lane counts, the per-channel
patterns, the shuffles), and kernels run on a given number of threads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from reverie.nets.cpp_kernel import CppKernel


def built_for(simdlen: int | None, argtypes: list[str], source: str) -> CppKernel:
    """`source` built for inductor's vector ISA of `simdlen` bits (None: the machine's own,
    as run.compile builds it), or a skip where this CPU has no such ISA."""
    from torch._inductor.cpu_vec_isa import valid_vec_isa_list

    kernel = CppKernel(argtypes, source)
    if simdlen is None:
        kernel.load()
        return kernel
    if simdlen not in [isa.bit_width() for isa in valid_vec_isa_list()]:
        pytest.skip(f"this CPU has no {simdlen}-bit vector ISA for inductor")
    with torch._inductor.config.patch({"cpp.simdlen": simdlen}):
        kernel.load()
    return kernel


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's (and so the kernels') thread count set to `n` inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
