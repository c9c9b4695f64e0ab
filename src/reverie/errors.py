"""The one exception type for user mistakes: the CLI prints its message and exits with 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

USAGE_EXIT = 2  # the CLI's exit code for a UserError (a mistake in the command or config)


class UserError(Exception):
    """A mistake the user can fix; its message is one line that names the fix."""


class Busy(UserError):
    """A run folder another process holds: one line, exit code 75 (sysexits' EX_TEMPFAIL,
    "try again later"), so that a sweep retries the trial where it does not retry a 2."""

    exit_code = 75


class Stopped(UserError):
    """A run stopped by a signal (Ctrl-C, SIGTERM): one line like a user mistake, but the
    shell's exit code of that signal (128 + its number: 130, 143), not 2."""

    def __init__(self, message: str, signal_name: str) -> None:
        import signal

        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = 128 + int(signal.Signals[signal_name])


def suggest(value: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid choice, or ''."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
