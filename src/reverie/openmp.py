"""Short spin waits for torch's OpenMP threads, set before torch is loaded.

torch's CPU build runs its parallel regions on GNU OpenMP (libgomp), whose threads spin at
every barrier for `GOMP_SPINCOUNT` iterations (300,000 by default) before they sleep. On cores
that nothing else uses, that saves a wake-up; on cores shared with any other busy process (a
second run, a sweep's other trial, a build), a spinning thread burns the time slice its
partner needs, and each of a training step's many small parallel regions then waits for a
descheduled thread. Beside one single-thread training run on 2 cores, every short default
`reverie train` run (2 threads) took 16–21x as long with libgomp's spin as with
`GOMP_SPINCOUNT=1000` (8 rounds), and alone the two were level (README, "Two runs on one machine";
bench/omp_wait.py, bench/default_run.py --alt-env).

The `reverie` command sets `GOMP_SPINCOUNT=1000` at start-up, before torch loads (libgomp
reads its settings once, when it is loaded), unless the environment already sets
`GOMP_SPINCOUNT` or `OMP_WAIT_POLICY`: the user's choice wins. A library user gets the same by
starting Python with `GOMP_SPINCOUNT=1000` in the environment (setting it after `import torch`
changes nothing).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

USER_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")  # libgomp's own variables
SPINCOUNT = "1000"


def shorten_spin_waits(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set GOMP_SPINCOUNT=1000 in `environ` (the process's, by default) where neither
    libgomp variable is set and torch is not loaded yet. Returns whether it set it."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in USER_SETTINGS) or "torch" in sys.modules:
        return False
    environ["GOMP_SPINCOUNT"] = SPINCOUNT
    return True
