"""Keep freed memory in the process instead of handing it back to the OS (glibc malloc).

With glibc's defaults, blocks above the (dynamic) mmap threshold are mmapped and unmapped on
every free, and the heap top is trimmed past 128 KiB: each forward/backward pass of a model
then page-faults its large activations back in, which shows up as system time and made a
Mamba-2 forward+backward at T=1024 about 2x slower here (README, bench/allocator.py).
Raising both thresholds keeps those pages mapped for the next pass. The `reverie` command
does this at start-up; a library user calls `keep_freed_memory()` once, or starts Python
with `MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647` in the
environment. The cost is a process that keeps its peak memory until it exits.

A process whose environment sets either glibc variable (`MALLOC_MMAP_THRESHOLD_`,
`MALLOC_TRIM_THRESHOLD_`) keeps the user's choice: `keep_freed_memory()` then changes nothing.
That is also how a whole training run is measured without the fix (bench/default_run.py
--alt-env).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")  # glibc's own variables
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP = 2**31 - 1  # mallopt takes an int: 2 GiB, far above any single activation here
DEFAULT_MMAP = 128 * 1024  # glibc's initial thresholds
DEFAULT_TRIM = 128 * 1024


def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def set_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's mmap and trim thresholds; False where malloc is not glibc's."""
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))
    return bool(ok) and bool(libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold)))


def keep_freed_memory() -> bool:
    """Stop returning freed blocks to the OS (see the module doc). Returns whether it took;
    False, changing nothing, where the environment sets glibc's thresholds itself."""
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    return set_thresholds(KEEP, KEEP)
