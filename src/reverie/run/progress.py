"""Training progress: env steps, last return, env steps/s and ETA — a rich bar on a terminal,
a plain line every `every_s` seconds otherwise (`make demo | tee log`, CI), so a user always
sees that a run is alive."""

from __future__ import annotations

import sys
import time
from collections import deque

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

RATE_WINDOW_S = 60.0  # the shown rate (and ETA) is over about the last minute


class Progress:
    """Wraps rich's progress bar; a no-op when disabled (tests, CI logs)."""

    def __init__(self, total: int, done: int = 0, enabled: bool = True,
                 every_s: float = 10.0, final_eval: bool = False) -> None:
        self.enabled = enabled
        self.total = total
        # a final evaluation may follow the last step: the plain line of the end waits for
        # it (and is printed on leaving where none came: the cadence's fell on that step)
        self.final_eval = final_eval
        self._end_pending: tuple[int, float] | None = None
        self.every_s = every_s
        self._plain = enabled and not sys.stderr.isatty()
        self._last_line = time.monotonic()
        self.last_return: float | None = None
        self.eval_return: float | None = None
        self._shown: tuple[int, float] | None = None  # (step, steps/s) of the last update
        self._samples: deque[tuple[float, int]] = deque()  # (time, step), for the rate
        self.console = Console(stderr=True)
        self._bar = None
        if enabled:
            # the bar takes what the text leaves (~70 columns: "train", the 12345/100000
            # counter, the info, the ETA), so an 80-column terminal cuts none of the numbers
            self._bar = RichProgress(
                TextColumn("[bold]train"),
                BarColumn(bar_width=max(5, min(40, self.console.width - 70))),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
                disable=not sys.stderr.isatty(),
            )
            self._task = self._bar.add_task("train", total=total, completed=done, info="")

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._end_pending is not None:  # no final evaluation came after the last step
            self._line(*self._end_pending, force=True)
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def episode(self, ret: float) -> None:
        self.last_return = ret

    def evaluation(self, mean_return: float) -> None:
        """Show a new evaluation at once: the final one comes after the run's last step
        was shown, and the last line would keep the evaluation before it."""
        self.eval_return = mean_return
        if self._bar is None or self._shown is None:
            return
        step, steps_per_s = self._shown
        if self._plain:
            if step >= self.total:
                self._line(step, steps_per_s, force=True)
            return
        self.update(step, steps_per_s)

    def _recent_rate(self, step: int, steps_per_s: float) -> float:
        """Env steps/s over about the last RATE_WINDOW_S seconds: the rate since the start
        (`steps_per_s`) counts the random prefill, many times faster than training, and
        made the ETA minutes where hours were left. The given rate until a second passed."""
        now = time.monotonic()
        if not self._samples or now - self._samples[-1][0] >= 0.5:
            self._samples.append((now, step))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        t_old, step_old = self._samples[0]
        return (step - step_old) / (now - t_old) if now - t_old >= 1.0 else steps_per_s

    def update(self, step: int, steps_per_s: float) -> None:
        if self._bar is None:
            return
        steps_per_s = self._recent_rate(step, steps_per_s)
        self._shown = (step, steps_per_s)
        if self._plain:
            self._line(step, steps_per_s)
            return
        self._bar.update(self._task, completed=step, info="  ".join(self._info(steps_per_s)))

    def _info(self, steps_per_s: float) -> list[str]:
        parts = [f"{steps_per_s:.1f} steps/s"]
        if self.last_return is not None:
            parts.append(f"return {self.last_return:.2f}")
        if self.eval_return is not None:
            parts.append(f"eval {self.eval_return:.2f}")
        return parts

    def _line(self, step: int, steps_per_s: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and step >= self.total and self.final_eval:
            self._end_pending = (step, steps_per_s)
            return
        if not force and now - self._last_line < self.every_s and step < self.total:
            return
        self._end_pending = None
        self._last_line = now
        eta = max(0, self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
        info = self._info(steps_per_s)
        parts = [f"step {step}/{self.total}", info[0],
                 f"ETA {eta / 60:.1f} min" if eta != float("inf") else "ETA ?", *info[1:]]
        print("reverie: " + "  ".join(parts), file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """One line, as written: never wrapped to the terminal, no rich markup ([...])."""
        self.console.print(f"reverie: {text}", soft_wrap=True, markup=False, highlight=False)
