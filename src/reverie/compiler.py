"""`run.compile`: torch.compile (inductor) of an agent's pure tensor functions, with one
way back to eager.

Modes: `off` (nothing), `on` (every unit the agent can compile) and `auto`, the default: only
the units whose compile pays for itself within a default-length run even on a cold cache
(the agent decides which; bench/compile.py measured them). `TORCH_COMPILE_DISABLE=1`, torch's
own switch, turns every mode into eager execution.

An agent that can be compiled has a `compile(compiler)` method: it swaps the functions that
do its tensor work (a loss's forward, one imagined step) for `compiler.wrap(fn)` and runs
the code that calls them — forward and backward, up to but not including any optimiser step
— as `compiler.run(unit, ...)`. Such a unit may change nothing but the random stream and
`.grad`s before it can fail, so when compiling fails anywhere in it (torch.compile missing,
no C++ compiler, an op inductor cannot lower, any exception), the random state is put back,
every wrapped function turns eager for good, the unit runs again eagerly, and one note says
so: the run goes on as with `run.compile=off`.

The CPU's vector ISA: inductor would first dry-compile and load a probe library for every ISA
the CPU's flags name (AMX, AVX-512, AVX2 here: ~8 s of a first compile on this machine, and
~1 s of every later process's), to learn which of them the C++ compiler can build. reverie
trusts the CPU's flags instead (inductor's `cpp.vec_isa_ok`) and pays for the probes only
where that fails: when a compile fails with a C++ compile error, the unit is compiled once more
with the probes (which pick an ISA the compiler can build), then falls back to eager as above.
inductor keeps the ISA list it made for the whole process, so a library user's own
torch.compile after reverie's in the same process trusts it too.

Compiled graphs are cached on disk by inductor (its FX-graph and AOT-autograd caches), in
`~/.cache/reverie/inductor` unless `TORCHINDUCTOR_CACHE_DIR` names another folder, so a
second run of the same model pays tracing but not code generation and C++ compilation.

Random numbers: inductor's own generator would draw other numbers than eager PyTorch, so
`fallback_random` keeps torch's (the same draws, in the same order, from the same
generator, which the checkpoints capture); compile on and off then differ only by float
rounding (README, "Compiled kernels").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# inductor options of every compiled function: torch's random stream, not inductor's
OPTIONS = {"fallback_random": True}
# ... and, until a C++ compile fails, the vector ISA the CPU's flags name, unprobed (module doc)
TRUSTING = {**OPTIONS, "cpp.vec_isa_ok": True}

T = TypeVar("T")


def default_cache_dir() -> Path:
    """reverie's inductor cache: $XDG_CACHE_HOME/reverie/inductor (~/.cache by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reverie" / "inductor"


def use_cache_dir() -> str:
    """Point inductor's caches at reverie's folder unless the user set TORCHINDUCTOR_CACHE_DIR
    (torch sets it to its own /tmp default when torch._dynamo is imported: that one is
    replaced, since a folder in /tmp is lost at a reboot)."""
    import reverie

    current = os.environ.get(CACHE_ENV)
    if current is None or (current == _torch_default_cache_dir()
                           and not reverie._INDUCTOR_CACHE_CHOSEN):
        os.environ[CACHE_ENV] = str(default_cache_dir())
    return os.environ[CACHE_ENV]


def _torch_default_cache_dir() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

        return os.path.abspath(torch_default())
    except Exception:  # noqa: BLE001 - a torch without it: nothing of torch's to replace
        return None


def run_eagerly(unit: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`Compiler.run` without a compiler: unit(*args, **kwargs) (run.compile=off)."""
    return unit(*args, **kwargs)


def _reason(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _cpp_compile_failure(e: BaseException) -> bool:
    """Whether `e` (or an exception it was raised from) is inductor's C++ compile error."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if type(cur).__name__ == "CppCompileError" or "CppCompileError" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _forget_isa_list() -> None:
    """Drop what inductor remembers of the vector ISAs it trusted (its ISA list and each ISA's
    verdict, functools caches of torch._inductor.cpu_vec_isa), so the next compile probes."""
    try:
        from torch._inductor import cpu_vec_isa
    except Exception:  # noqa: BLE001 - a torch without it: nothing to drop
        return
    for obj in vars(cpu_vec_isa).values():
        for fn in [obj, *(vars(obj).values() if isinstance(obj, type) else ())]:
            if callable(getattr(fn, "cache_clear", None)):
                fn.cache_clear()


class Compiler:
    """Wraps functions with torch.compile and runs the units that call them (module doc).

    `note(text)` receives the one line said on falling back (the driver prints it)."""

    def __init__(self, note: Callable[[str], None], mode: str = "on") -> None:
        self.note = note
        self.mode = mode  # "on": compile every unit; "auto": those that pay on a cold cache
        self.eager = False  # True once compiling failed: every wrapped function runs eagerly
        self.reason: str | None = None
        self.announced = False  # the "compiling" note is said once, at the first compile
        self.cache_dir = use_cache_dir()
        self.options = TRUSTING  # OPTIONS once a C++ compile failed (module doc)
        self._compiled: list[list[Any]] = []  # [fn, dynamic, compiled fn] per wrapped fn

    def _compile(self, fn: Callable[..., T], dynamic: bool | None) -> Callable[..., T]:
        try:
            return torch.compile(fn, dynamic=dynamic, options=self.options)
        except Exception as e:  # torch.compile itself unavailable on this platform
            self.fall_back(e)
            return fn

    def wrap(self, fn: Callable[..., T], dynamic: bool | None = False) -> Callable[..., T]:
        """fn compiled at its first call, or fn itself once eager. dynamic=False: one graph
        per input shape, for functions whose shapes the config fixes; None: torch's default
        (static until a size changes, then symbolic)."""
        entry = [fn, dynamic, self._compile(fn, dynamic)]
        self._compiled.append(entry)

        def call(*args: Any, **kwargs: Any) -> T:
            if self.eager:
                return fn(*args, **kwargs)
            self.announce()
            return entry[2](*args, **kwargs)

        return call

    def _probe_isa(self) -> None:
        """Compile every wrapped function anew with inductor's ISA probes (module doc)."""
        self.options = OPTIONS
        _forget_isa_list()
        for entry in self._compiled:
            entry[2] = self._compile(entry[0], entry[1])

    def announce(self) -> None:
        """Say once, before the first compile, why the first update takes longer (a user
        otherwise sees the progress bar stall for half a minute)."""
        import torch._dynamo

        if self.announced or torch._dynamo.config.disable:  # TORCH_COMPILE_DISABLE=1: eager
            return
        self.announced = True
        pause = "~30 s" if self.mode == "auto" else "~2 min"  # bench/compile.py: 32 s, 94 s
        self.note(f"note: run.compile={self.mode} compiles at the first update: up to {pause} "
                  f"for a new model, seconds once cached in {self.cache_dir} "
                  "(run.compile=off skips it)")

    def run(self, unit: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """unit(*args, **kwargs); if it fails while compiled, again eagerly from the same
        random state. An error that the eager run raises too is the unit's own: it
        propagates, with no note."""
        if self.eager:
            return unit(*args, **kwargs)
        rng = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

        def rewind() -> None:
            torch.set_rng_state(rng)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)

        try:
            return unit(*args, **kwargs)
        except Exception as e:
            if self.options is TRUSTING and _cpp_compile_failure(e) and not self.eager:
                rewind()  # maybe the ISA the CPU's flags name: once more, with the probes
                self._probe_isa()
                try:
                    return unit(*args, **kwargs)
                except Exception as again:  # noqa: BLE001 - not the ISA: eager below
                    e = again
            rewind()
            self.eager = True
            out = unit(*args, **kwargs)
            self.fall_back(e)
            return out

    def fall_back(self, e: BaseException) -> None:
        """Turn every wrapped function eager; say why, once."""
        self.eager = True
        if self.reason is None:
            self.reason = _reason(e)
            self.note(f"note: run.compile={self.mode} fell back to eager ({self.reason})")
