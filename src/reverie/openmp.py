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

The short spin has a price alone on a machine that wakes a sleeping thread slowly (a virtual
machine): every parallel region then pays a wake-up, and on 2026-12-08 a `cartpole` update took
1.9x as long with it as with libgomp's own spin (bench/omp_wait.py), the default run 1.58x as
long as with `run.share_cores` (bench/default_run.py --alt run.share_cores=true).
`run.share_cores=true` (off by default) takes the other path: libgomp's own spin, with a
`ThreadGovernor` that lowers torch's threads to the cores other processes leave free while they
run (a count that fits the free cores has no descheduled partner to wait for) and raises them
again after; the `reverie` command keeps the long spin for a `train` that asks for it
(`wants_long_spin`). It is off by default because torch's reductions split their work by thread
count, so a run's float rounding would depend on the machine's load: two runs of one seed would
be bit-identical only if the load was alike, as a resumed run would be with the run before it.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path

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


def running_elsewhere(proc: str = "/proc") -> int | None:
    """How many threads of other processes are running or runnable now (/proc/stat's
    procs_running less this process's threads in state R); None where /proc cannot say."""
    try:
        with open(f"{proc}/stat", "rb") as f:
            running = next(int(line.split()[1]) for line in f
                           if line.startswith(b"procs_running"))
        mine = 0
        for tid in os.listdir(f"{proc}/self/task"):
            try:
                with open(f"{proc}/self/task/{tid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:  # the thread ended since the listing
                continue
            mine += stat[stat.rfind(b")") + 2:][:1] == b"R"
        return max(running - mine, 0)
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def governable() -> bool:
    """Whether a `ThreadGovernor` can see this machine's load: /proc says what runs, and this
    process may use every core (under a narrower CPU affinity, busy threads elsewhere may be
    on cores it cannot use, so they would say nothing about its own)."""
    cores = os.cpu_count() or 1
    try:
        mine = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return False
    return cores > 1 and mine == cores and running_elsewhere() is not None


def fitting_threads(wanted: int, cores: int, elsewhere: float) -> int:
    """Threads to run so that this process and the `elsewhere` busy threads (a mean over the
    last samples) fit the cores: `wanted`, less one per busy thread (rounded), at least 1."""
    return max(1, min(wanted, cores - int(elsewhere + 0.5)))


class ThreadGovernor:
    """torch's intra-op threads that fit the cores other processes leave free, for a process
    whose OpenMP threads spin long at barriers (libgomp's own setting: fast alone, but beside
    a busy neighbour each parallel region waits for a descheduled thread, 16-21x slower; see
    the module's docstring). A daemon thread samples `running_elsewhere` every `period`
    seconds; `apply()`, called by the training loop's thread (torch's thread count is that
    thread's), sets the count the mean of the last `window` samples allows. inductor's
    compiled kernels (`#pragma omp parallel` without a count) and reverie's own (their count
    is torch's at each call) follow it."""

    def __init__(self, wanted: int, cores: int | None = None, period: float = 0.2,
                 window: int = 10, sample: Callable[[], int | None] = running_elsewhere
                 ) -> None:
        self.wanted, self.period, self.sample = wanted, period, sample
        self.cores = cores or os.cpu_count() or 1  # governable(): the process may use them all
        self.samples: deque[int] = deque(maxlen=window)
        self.allowed = wanted
        self.changes = 0  # how often apply() changed torch's thread count
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Starts sampling; False (and nothing started) where /proc cannot say what runs."""
        if self.wanted < 2 or self.sample() is None:
            return False
        self._thread = threading.Thread(target=self._watch, name="reverie-threads",
                                        daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.period):
            seen = self.sample()
            if seen is None:
                continue
            self.samples.append(seen)
            self.allowed = fitting_threads(self.wanted, self.cores,
                                           sum(self.samples) / len(self.samples))

    def apply(self) -> int | None:
        """On the training thread: torch's thread count set to what fits now; the new count
        where it changed, else None."""
        import torch

        allowed = self.allowed
        if allowed == torch.get_num_threads():
            return None
        torch.set_num_threads(allowed)
        self.changes += 1
        return allowed


_SHARE_SET = re.compile(r"^\s*run\.share_cores\s*=\s*(\S*)\s*$", re.IGNORECASE)
_SHARE_SAVED = re.compile(r"^\s+share_cores:\s*(\S+)\s*$", re.MULTILINE)


def wants_long_spin(argv: Sequence[str]) -> bool:
    """Whether a `reverie train` command line runs with run.share_cores (its last `--set`
    of it, else the config.yaml of the run it resumes), on a machine where a ThreadGovernor
    can see the load: the command then keeps libgomp's long spin. Read before torch loads,
    from the command line's text; where it cannot tell, the short spin (the safe one)."""
    if not argv or argv[0] != "train":
        return False
    chosen = None
    for i, arg in enumerate(argv):
        if (m := _SHARE_SET.match(arg)) is not None:
            chosen = m.group(1).lower() in ("true", "yes", "on", "1")
        elif arg == "--resume" and chosen is None and i + 1 < len(argv):
            try:
                text = (Path(argv[i + 1]) / "config.yaml").read_text()
            except (OSError, UnicodeDecodeError):
                continue
            saved = _SHARE_SAVED.search(text)
            chosen = saved is not None and saved.group(1).lower() == "true"
    return bool(chosen) and governable()
