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
        for sig in SIGNALS:
            previous = signal.getsignal(sig)
            if previous is defaults[sig]:
                self._saved[sig] = previous
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._saved.items():
            signal.signal(sig, previous)
        self._saved = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        if self._on_request is not None:
            try:  # e.g. a closed pipe (`reverie train | tee`, Ctrl-C ended tee): still stop
                self._on_request(self.requested)
            except Exception:  # noqa: BLE001 - a message must not break the clean stop
                pass
