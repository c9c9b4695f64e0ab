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

The CPU's vector ISA: before its first compile, inductor dry-compiles and loads a probe
library for each vector ISA the CPU's flags name (AMX, AVX-512, AVX2 here), to learn which
ones the C++ compiler can build and torch's libraries can load. reverie lets inductor trust
the CPU's flags for the base ISAs (its `cpp.vec_isa_ok`; the probes of AMX, VNNI and
AVX-512 bf16 still run: 6 probe builds instead of 10), which saves ~6 s of a first compile
on this machine and ~1 s of every later process's (bench/compile.py --isa). Where that fails
before any compiled call has succeeded — a C++ compile error, or a compiled library that
does not load — the probes are run after all (inductor's ISA caches cleared); if they pick
another ISA, the unit is compiled once more with it, and trusting is off from then on for
the process and, through a marker file in the inductor cache folder, for later processes
with this torch; if they pick the same one, the ISA was not the fault and the run falls back
to eager as above. A user's own `TORCHINDUCTOR_VEC_ISA_OK` (or inductor config) is left as
it is: no trusting then. inductor keeps its ISA list for the whole process, so a library
user's own torch.compile after reverie's in the same process trusts it too.

Compiled graphs are cached on disk by inductor (its FX-graph and AOT-autograd caches), in
`~/.cache/reverie/inductor` unless `TORCHINDUCTOR_CACHE_DIR` names another folder, so a
second run of the same model pays tracing but not code generation and C++ compilation.

Random numbers: inductor's own generator would draw other numbers than eager PyTorch, so
`fallback_random` keeps torch's (the same draws, in the same order, from the same
generator, which the checkpoints capture); compile on and off then differ only by float
rounding (README, "Compiled kernels").
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# inductor options of every compiled function: torch's random stream, not inductor's
OPTIONS = {"fallback_random": True}
# ... and, until that fails, the vector ISA the CPU's flags name, unprobed (module doc)
TRUSTING = {**OPTIONS, "cpp.vec_isa_ok": True}
ISA_MARKER = "reverie-isa-untrusted.json"  # in the inductor cache: trusting failed there
_trust_failed = False  # ... or in this process

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


def _isa_failure(e: BaseException) -> bool:
    """Whether `e` (or an exception it was raised from) may come from the vector ISA: inductor's
    C++ compile error, or a compiled library that does not load (a torch built without the
    AVX-512 symbols)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = str(cur)
        if type(cur).__name__ == "CppCompileError" or "CppCompileError" in text:
            return True
        if isinstance(cur, (ImportError, OSError)) and (".so" in text
                                                        or "undefined symbol" in text):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _forget_isa_list() -> None:
    """Drop what inductor remembers of the vector ISAs (its ISA list and each ISA's verdict:
    the functools caches of what torch._inductor.cpu_vec_isa defines), so the next compile
    probes. Only this process's: a torch without that module has nothing to drop."""
    try:
        from torch._inductor import cpu_vec_isa
    except Exception:  # noqa: BLE001
        return
    ours = cpu_vec_isa.__name__
    for obj in vars(cpu_vec_isa).values():
        if getattr(obj, "__module__", None) != ours:  # imported there, not its own
            continue
        for fn in [obj, *(vars(obj).values() if isinstance(obj, type) else ())]:
            if callable(getattr(fn, "cache_clear", None)):
                fn.cache_clear()


def _picked_isa(trusting: bool) -> str:
    """The vector ISA inductor picks, trusting the CPU's flags or probing (its caches may
    answer without probing again)."""
    from torch._inductor import config
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    with config.patch({"cpp.vec_isa_ok": True if trusting else None}):
        return str(pick_vec_isa())


def _trusting(cache_dir: str) -> bool:
    """Whether to trust the CPU's flags for the ISA: not where the user set inductor's
    vec_isa_ok, nor once trusting failed in this process or, with this torch, on this
    machine (the marker in the cache folder)."""
    try:
        from torch._inductor import config

        if config.cpp.vec_isa_ok is not None or _trust_failed:
            return False
    except Exception:  # noqa: BLE001 - a torch without inductor: nothing compiles anyway
        return False
    try:
        marker = json.loads((Path(cache_dir) / ISA_MARKER).read_text())
        return marker.get("torch") != torch.__version__
    except (OSError, ValueError, AttributeError):  # none (or unreadable): trust
        return True


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
        # inductor's options: TRUSTING until trusting the ISA fails, or OPTIONS (module doc)
        self.options = TRUSTING if _trusting(self.cache_dir) else OPTIONS
        self.trust_proven = False  # a compiled call returned while trusting: the ISA works
        self._compiled: list[list[Any]] = []  # [fn, dynamic, compiled fn] per wrapped fn
        self._kernels: list[Callable[[bool], None]] = []  # the built kernels' switches
        # kernels `build` could not build, by reason, until `say_unbuilt` says so
        self._unbuilt: dict[str, list[tuple[str, str]]] = {}

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
            self.say_unbuilt()
            out = entry[2](*args, **kwargs)
            self.trust_proven = True
            return out

        return call

    def _stop_trusting(self) -> bool:
        """After a failure that may be the trusted ISA's: probe (module doc). True when the
        probes pick another ISA, and every wrapped function is compiled anew for it; False
        when they pick the same (the ISA is not the fault)."""
        global _trust_failed

        self.options = OPTIONS
        try:
            trusted = _picked_isa(trusting=True)  # what the failed compile was built for
            _forget_isa_list()
            probed = _picked_isa(trusting=False)
        except Exception:  # noqa: BLE001 - inductor's ISA code changed: eager, as before
            return False
        if probed == trusted:
            return False
        _trust_failed = True
        try:  # later processes of this torch need not fail first (a full disk: they will)
            (Path(self.cache_dir) / ISA_MARKER).write_text(json.dumps(
                {"torch": torch.__version__, "trusted": trusted, "probed": probed}) + "\n")
        except OSError:
            pass
        for entry in self._compiled:
            entry[2] = self._compile(entry[0], entry[1])
        return True

    def announce(self) -> None:
        """Say once, before the first compile, why training's first steps take longer (a
        user otherwise sees the progress bar stall for half a minute)."""
        import torch._dynamo

        if self.announced or torch._dynamo.config.disable:  # TORCH_COMPILE_DISABLE=1: eager
            return
        self.announced = True
        pause = "~30 s" if self.mode == "auto" else "~2 min"  # bench/compile.py: 32 s, 94 s
        # auto compiles a unit of the update only; on acting too, one env step earlier
        when = "at the first update" if self.mode == "auto" else "as training starts"
        self.note(f"note: run.compile={self.mode} compiles {when}: up to {pause} "
                  f"for a new model, seconds once cached in {self.cache_dir} "
                  "(run.compile=off skips it)")

    def build(self, load: Callable[[], None], what: str, instead: str,
              use: Callable[[bool], None]) -> bool:
        """Build one of reverie's own C++ kernels (`what`) with `load()` (inductor's code
        cache, under this compiler's ISA setting) and turn it on with `use(True)`; True once
        built. A fall-back to eager later turns it off again (`use(False)`: the run goes on
        as with run.compile=off). A C++ compile error while trusting the CPU's vector ISA
        probes, as a compile's would (`_stop_trusting`), and builds once more where the probes
        pick another ISA. False where the build fails (`say_unbuilt` then says that
        `instead`, "the dense product runs", runs); False, silently, once compiling fell
        back to eager or under TORCH_COMPILE_DISABLE."""
        import torch._dynamo
        import torch._inductor.config

        if self.eager or torch._dynamo.config.disable:
            return False
        self.announce()

        def build() -> None:
            cpp = {k: v for k, v in self.options.items() if k.startswith("cpp.")}
            with torch._inductor.config.patch(cpp):
                load()

        try:
            try:
                build()
            except Exception as e:
                if not (self.options is TRUSTING and not self.trust_proven
                        and _isa_failure(e) and self._stop_trusting()):
                    raise
                build()  # with the ISA the probes picked
        except Exception as e:  # noqa: BLE001 - any failure leaves the torch code
            self._unbuilt.setdefault(_reason(e), []).append((what, instead))
            return False
        use(True)
        self._kernels.append(use)
        return True

    def say_unbuilt(self) -> None:
        """One note per reason for the kernels `build` could not build (a missing C++
        compiler fails them all alike): the agent calls it once its builds are done, and the
        first call of a wrapped function says what is still unsaid."""
        for reason, kernels in self._unbuilt.items():
            if len(kernels) == 1:
                what, instead = kernels[0]
                self.note(f"note: run.compile={self.mode}: {what} was not built ({reason}); "
                          f"{instead} instead")
            else:
                names = ", ".join(what for what, _ in kernels[:-1]) + f" and {kernels[-1][0]}"
                self.note(f"note: run.compile={self.mode}: {names} were not built ({reason}); "
                          "the torch ops run in their place")
        self._unbuilt.clear()

    def run(self, unit: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """unit(*args, **kwargs); if it fails while compiled, again eagerly from the same
        random state. An error that the eager run raises too is the unit's own (a caller's
        bad input): it propagates, with no note, and compiling stays on."""
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
            if (self.options is TRUSTING and not self.trust_proven and not self.eager
                    and _isa_failure(e)):
                rewind()  # maybe the ISA the CPU's flags name: probe, maybe compile again
                if self._stop_trusting():
                    try:
                        return unit(*args, **kwargs)
                    except Exception as again:  # noqa: BLE001 - not the ISA: eager below
                        e = again
            rewind()
            self._go_eager()
            try:
                out = unit(*args, **kwargs)
            except Exception:
                self._go_compiled()  # not the compile's fault
                raise
            self.fall_back(e)
            return out

    def _go_eager(self) -> None:
        """Every wrapped function eager from now on, every built kernel off."""
        self.eager = True
        for use in self._kernels:
            use(False)

    def _go_compiled(self) -> None:
        """Undo `_go_eager` (before any fall-back was said)."""
        self.eager = False
        for use in self._kernels:
            use(True)

    def fall_back(self, e: BaseException) -> None:
        """Turn every wrapped function eager; say why, once."""
        self._go_eager()
        if self.reason is None:
            self.reason = _reason(e)
            self.note(f"note: run.compile={self.mode} fell back to eager ({self.reason})")
