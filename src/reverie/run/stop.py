"""Stop a training run cleanly on Ctrl-C or SIGTERM: finish the current env step, save a
checkpoint, then exit, so that an interrupted run loses nothing.

Inside `StopOnSignal`, the first SIGINT or SIGTERM only records the request; the training
loop checks `requested` between env steps (where a checkpoint is exact, see `driver.py`).
A second signal raises KeyboardInterrupt at once, for a user who cannot wait for the step
to end (the run then resumes from its previous checkpoint, as after a kill).

Handlers are installed only from the main thread and only over Python's defaults: a signal
the process ignores (a background job's SIGINT) stays ignored, and a handler that the
calling program installed is left in place.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What a run started by a sweep or a benchmark gets when its parent dies
# (`trial.follow_parent`). Linux sends it each time the run is handed to a new parent, once
# per exiting thread of a parent killed with SIGKILL: it asks for a stop like SIGTERM (and
# the run then ends with SIGTERM's exit code), and its repeats are ignored, where a second
# SIGTERM means "stop at once" and loses the steps since the last checkpoint.
PARENT_GONE = getattr(signal, "SIGUSR2", None)
follows_parent = False  # set by `trial.follow_parent` in such a run


class StopOnSignal:
    """Context manager: `requested` becomes the signal's name ('SIGINT', 'SIGTERM') on the
    first one; `on_request(name)` is called then (from the signal handler, in the main
    thread, between two Python bytecodes)."""

    def __init__(self, on_request: Callable[[str], None] | None = None) -> None:
        self.requested: str | None = None
        self._on_request = on_request
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        handlers = {sig: self._handle for sig in SIGNALS}
        if follows_parent and PARENT_GONE is not None:
            defaults[PARENT_GONE], handlers[PARENT_GONE] = signal.SIG_DFL, self._parent_gone
        for sig, handler in handlers.items():
            previous = signal.getsignal(sig)
            if previous is defaults[sig]:
                self._saved[sig] = previous
                signal.signal(sig, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._saved.items():
            signal.signal(sig, previous)
        self._saved = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self._request(signal.Signals(signum).name)

    def _parent_gone(self, signum: int, frame: FrameType | None) -> None:
        # its repeats (the same parent's death, reported again) are ignored from now on, also
        # after this context, while the run saves its checkpoint and exits
        signal.signal(signum, signal.SIG_IGN)
        self._saved.pop(signum, None)
        if self.requested is None:
            self._request("SIGTERM")

    def _request(self, name: str) -> None:
        self.requested = name
        if self._on_request is not None:
            try:  # e.g. a closed pipe (`reverie train | tee`, Ctrl-C ended tee): still stop
                self._on_request(self.requested)
            except Exception:  # noqa: BLE001 - a message must not break the clean stop
                pass
