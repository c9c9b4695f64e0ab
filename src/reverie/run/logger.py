"""Run logging: a JSONL metrics file, a JSONL timing file, TensorBoard events and a curve.

`metrics.jsonl` holds only quantities that are a function of the seed and config, so two
runs with the same seed give byte-identical files; wall-clock quantities (wall time, env
steps/s) go to `timing.jsonl` and TensorBoard, the machine of each training process to
`machine.jsonl`. On resume the JSONL files are cut back to the
checkpoint's step (a half-written last line from a kill is dropped) and TensorBoard purges
events after it (and a tail row an extension replaces), so no step is duplicated or missing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from reverie.errors import UserError

METRICS = "metrics.jsonl"
# the mark of the final agent's evaluation row where it is off the run.eval_every cadence
END_KEY, END_EVAL = "eval", "end"
TIMING = "timing.jsonl"
LOGS = (METRICS, TIMING)
# the metrics row of a run's last updates, written at its end off the run.log_every cadence
TAIL_KEY, TAIL = "window", "tail"
# one row per training process (`run/machine.py`): it only informs, so a damaged line is
# dropped rather than stopping a resume
MACHINE = "machine.jsonl"


def read_rows(path: Path, lenient: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(line, row) for every row of a JSONL log. The one line a kill can cut (the last, with
    no newline) is left out; any other line that is not a `{"step": int, ...}` object is a
    one-line UserError naming the file and line, so no row is ever silently dropped.
    `lenient` (a log that only informs): damaged lines are dropped instead (bytes that are
    not UTF-8 read as U+FFFD)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(errors="replace" if lenient else "strict")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); restore it or move it "
                        "aside") from None
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and type(row.get("step")) is int
        except ValueError:
            ok = False
        if ok:
            rows.append((line, row))
        elif i < len(lines) - 1 and not lenient:  # a complete line: outside damage
            raise UserError(f"{path} line {i + 1} is not a metrics row ({line[:40]!r}); fix "
                            "or delete that line, then run the command again")
    return rows


def _truncate_jsonl(path: Path, last_step: int, lenient: bool = False,
                    keep_tail: bool = True) -> None:
    """Drop the rows written after the checkpoint at `last_step` (they will be written again),
    and unless `keep_tail`, a run's tail row at that step (a resume that extends the run puts
    those updates in its next row); `lenient`: drop damaged lines too, instead of the
    UserError `read_rows` gives."""
    if not path.exists():
        return
    rows = read_rows(path, lenient)
    # a tail row is a run's last row, so it can only be at `last_step`
    keep = [line for line, row in rows
            if row["step"] <= last_step and (keep_tail or row.get(TAIL_KEY) != TAIL)]
    text = "".join(k + "\n" for k in keep)
    if text.encode() == path.read_bytes():
        return
    from reverie.run.checkpoint import atomic_write_bytes

    # atomic: a kill during the rewrite must not cost the history before the checkpoint
    atomic_write_bytes(path, text.encode())


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    """Append-only metrics for one run folder."""

    def __init__(self, folder: Path, resume_step: int | None = None,
                 tensorboard: bool = True, extends: bool = False) -> None:
        """extends: the resume trains on past `resume_step` (its tail row is replaced)."""
        self.folder = Path(folder)
        if resume_step is not None:
            for name in LOGS:
                _truncate_jsonl(self.folder / name, resume_step, keep_tail=not extends)
            # a process that started at the checkpoint's step left nothing after it
            _truncate_jsonl(self.folder / MACHINE, resume_step - 1, lenient=True)
        self._metrics = open(self.folder / METRICS, "a", buffering=1)
        self._timing = open(self.folder / TIMING, "a", buffering=1)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard hides what an earlier process logged at or past `purge`: past the
            # checkpoint, and for an extension its tail row's points at the checkpoint's step
            # too; that step's other rows (its evaluation) are logged again below
            purge = None if resume_step is None else resume_step + (0 if extends else 1)
            self._tb = SummaryWriter(str(self.folder / "tb"), purge_step=purge)
            for name in LOGS if extends else ():
                path = self.folder / name
                for row in read_jsonl(path) if path.exists() else []:
                    if row["step"] == resume_step:
                        self._scalars(resume_step, {k: v for k, v in row.items() if k != "step"})

    def metrics(self, step: int, values: dict[str, Any]) -> None:
        row = {"step": int(step), **{k: _clean(v) for k, v in sorted(values.items())}}
        self._metrics.write(json.dumps(row) + "\n")
        self._scalars(step, values)

    def timing(self, step: int, values: dict[str, float]) -> None:
        row = {"step": int(step), **{k: round(float(v), 4) for k, v in sorted(values.items())}}
        self._timing.write(json.dumps(row) + "\n")
        self._scalars(step, values)

    def machine(self, step: int, row: dict[str, Any]) -> None:
        """Record the machine of the process that trains from `step` on."""
        with open(self.folder / MACHINE, "a") as f:
            f.write(json.dumps({"step": int(step), **row}) + "\n")

    def _scalars(self, step: int, values: dict[str, Any]) -> None:
        if self._tb is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                self._tb.add_scalar(k, float(v), step)

    def flush(self) -> None:
        self._metrics.flush()
        self._timing.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close the logs; again (a second Ctrl-C during a stop) it does nothing."""
        if self._metrics.closed:
            return
        self.flush()
        self._metrics.close()
        self._timing.close()
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL log (see `read_rows` for what counts as damage)."""
    return [row for _, row in read_rows(path)]


def finite_values(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of the rows whose `key` holds a finite number, in the rows' order."""
    out = []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            out.append((int(r["step"]), float(v)))
    return out


def final_evaluation_missing(rows: list[dict[str, Any]], last: int, steps: int,
                             eval_episodes: int) -> bool:
    """Whether a run that evaluates (`eval_episodes` > 0) and has reached its budget (its
    last env step `last` >= `steps`, its run.steps) has no evaluation at `last` among its
    metrics `rows`: it was stopped or killed between its final checkpoint and its final
    evaluation. The one rule of the driver, sweeps and reports."""
    return (eval_episodes > 0 and last >= steps
            and not any(row["step"] >= last and "eval/return" in row for row in rows))


def end_episodes(saved: int, given: int | None = None) -> int:
    """The episodes of a resumed run's missing final evaluation: the resume's (`given`), or
    the run's own (`saved`); none for a run that does not evaluate (saved 0: it missed none,
    and an evaluation appended to it would be no uninterrupted run's)."""
    return 0 if saved <= 0 else saved if given is None else given


def scored_evaluations(rows: list[dict[str, Any]], last: int | None = None
                       ) -> list[dict[str, Any]]:
    """The evaluation rows (`eval/return`) that score a run whose last env step is `last`
    (default: its last row's): all but an end evaluation it has trained past (END_KEY: the
    end of a shorter budget the run was extended from, which a run trained to the longer
    budget at once never made)."""
    if last is None:
        last = max((int(row["step"]) for row in rows), default=0)
    return [row for row in rows if "eval/return" in row
            and not (row.get(END_KEY) == END_EVAL and int(row["step"]) < last)]


def plot_curve(folder: Path, title: str = "") -> Path | None:
    """curve.png: training episode returns and evaluation returns against env steps."""
    rows = read_jsonl(Path(folder) / METRICS)
    train = [(r["step"], r["episode/return"]) for r in rows if "episode/return" in r]
    evals = [(r["step"], r["eval/return"]) for r in scored_evaluations(rows)]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    if train:
        ax.plot(*zip(*train), ".", ms=3, alpha=0.4, label="train episodes")
    if evals:
        ax.plot(*zip(*evals), "-o", ms=4, label="evaluation (mean)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    out = Path(folder) / "curve.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# the files round seconds to 4 decimals: a process's offset varies by that much at most, and
# the processes before a resume wrote a row, so ran far longer than this
OFFSET_TOLERANCE_S = 1e-3


def training_wall(timing: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(wall seconds, env steps per second) of training over all of a run's processes.

    Each row holds its process's wall time since it started training (`time/wall`) and that
    process's average rate so far; both restart when a run is resumed. A process's rows
    share one offset `time/run_wall - time/wall` (the time of the processes before it), so a
    change of offset, or in older logs without `time/run_wall` a drop in `time/wall`, ends
    one process's segment."""
    segments: list[tuple[float, float]] = []  # (wall, rate) at each segment's last row
    last: tuple[float, float, float | None] | None = None  # (wall, rate, offset)
    for r in timing:
        wall, rate, total = r.get("time/wall"), r.get("time/env_steps_per_s"), \
            r.get("time/run_wall")
        if not isinstance(wall, (int, float)) or not isinstance(rate, (int, float)):
            continue
        offset = float(total) - float(wall) if isinstance(total, (int, float)) else None
        if last is not None and (wall < last[0] or (
                offset is not None and last[2] is not None
                and abs(offset - last[2]) > OFFSET_TOLERANCE_S)):
            segments.append(last[:2])
        last = (float(wall), float(rate), offset)
    if last is None:
        return None, None
    segments.append(last[:2])
    total_wall = sum(w for w, _ in segments)
    steps = sum(w * r for w, r in segments)
    return total_wall, (steps / total_wall if total_wall > 0 else None)
