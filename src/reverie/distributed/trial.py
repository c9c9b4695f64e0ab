"""Run one trial to completion: `python -m reverie train` in a subprocess, resumed from its
last checkpoint (`--resume`) when it crashes or is killed, up to `retries` times.

This function is what a worker runs, in a local thread or as a Ray task, so it takes and
returns plain data. Each attempt's output is appended to `<sweep>/logs/<trial>.log`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reverie.errors import USAGE_EXIT, Busy
from reverie.run.folder import manifest_newest

if TYPE_CHECKING:  # annotations only: `reverie` imports this module at start-up (follow_parent)
    from reverie.distributed.grid import Trial

NEW, PARTIAL, UNEVALUATED, DONE = "new", "partial", "unevaluated", "done"
# Set by whoever starts `reverie train` as a child (`child_env`): the child ends with it.
PARENT_ENV = "REVERIE_PARENT_PID"
BUSY_WAIT_S = 10.0  # before retrying a trial whose run folder another process held


def child_env() -> dict[str, str]:
    """The environment for a `reverie` child process that must not outlive this process:
    a sweep (or a benchmark) killed with SIGTERM or SIGKILL would otherwise leave its trials
    training unseen, holding their run folders' locks, so that a rerun fails on them."""
    return {**os.environ, PARENT_ENV: str(os.getpid())}


def follow_parent() -> None:
    """In a child started with `child_env`: stop with a checkpoint when the parent dies
    (Linux's PR_SET_PDEATHSIG with `run.stop.PARENT_GONE`, which a training run takes as one
    SIGTERM however often it comes), or exit now if the parent is already gone. A no-op
    elsewhere and when the variable is unset; grandchildren do not inherit it."""
    parent = os.environ.pop(PARENT_ENV, None)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    from reverie.run import stop

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(stop.PARENT_GONE)) != 0:
            return
    except (OSError, AttributeError):
        return
    stop.follows_parent = True
    if parent.isdigit() and os.getppid() != int(parent):  # it died before prctl took hold
        os.kill(os.getpid(), signal.SIGTERM)


# The trial processes this process is waiting on, for a sweep to pass a stop on to them:
# each runs in a session of its own, so a Ctrl-C at the terminal reaches the sweep alone,
# which stops each trial exactly once (a second signal would stop it without a checkpoint).
_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()
_stop_signal: int | None = None  # set by `signal_trials`: a trial started after it gets it too


def signal_trials(signum: int) -> None:
    """Send `signum` to every trial process running now, and to any started later by this
    process until `reset_stop` (a sweep's stop)."""
    global _stop_signal
    with _live_lock:
        _stop_signal = signum
        procs = list(_live)
    for proc in procs:
        try:
            proc.send_signal(signum)
        except OSError:  # it has just ended
            pass


def reset_stop() -> None:
    """A new sweep in this process: no stop asked yet."""
    global _stop_signal
    with _live_lock:
        _stop_signal = None


class TrialInterrupted(KeyboardInterrupt):
    """`_run_child` was interrupted and its child has stopped, with exit code `returncode`."""

    def __init__(self, returncode: int) -> None:
        super().__init__()
        self.returncode = returncode


def _run_child(args: list[str], log_file) -> int:
    """`python -m reverie ARGS` with its output in `log_file`; its exit code. Interrupted
    here (a Ray task cancelled by its sweep's Ctrl-C), the child gets SIGTERM and is waited
    for: it stops with a checkpoint."""
    proc = subprocess.Popen([sys.executable, "-m", "reverie", *args], stdout=log_file,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=child_env(), start_new_session=True)
    try:  # from here on an interrupt stops the child (Ray's cancel can come at any line)
        with _live_lock:
            _live.add(proc)
            if _stop_signal is not None:  # the sweep stopped while this one was starting
                proc.send_signal(_stop_signal)
        while True:  # in steps: Ray's cancel interrupts between them, not in a blocking wait
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None:  # its checkpoint; a repeated cancel does not cut it
            try:
                proc.wait(timeout=0.5)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                pass
        raise TrialInterrupted(proc.returncode) from None
    finally:
        with _live_lock:
            _live.discard(proc)


def _wait_busy(seconds: float, stop: Callable[[], bool] | None) -> None:
    """Wait `seconds` for a run folder another process holds, or until the sweep stops."""
    until = time.monotonic() + seconds
    while time.monotonic() < until and not (stop is not None and stop()):
        time.sleep(min(0.2, max(0.0, until - time.monotonic())))


def trial_state(trial: Trial) -> str:
    """'done' (a checkpoint at the full budget, and the final evaluation of a run that
    evaluates), 'partial' (a run to resume), 'unevaluated' (at its own budget, stopped before
    its final evaluation: a resume runs just that) or 'new'."""
    folder = Path(trial.folder)
    if not (folder / "config.yaml").exists():
        return NEW
    last = manifest_newest(folder)[1]
    if last is None or last < trial.steps:
        return PARTIAL
    # the sweep's own run.eval_episodes where it gives one (a resume applies it: 0 evaluates
    # nothing, so the trial is done as it is)
    given = [item.split("=", 1)[1] for item in trial.resume_sets
             if item.startswith("run.eval_episodes=")]
    episodes = int(given[-1]) if given else None
    return UNEVALUATED if final_evaluation_missing_in(folder, last, episodes) else DONE


def final_evaluation_missing_in(folder: Path, last: int,
                                eval_episodes: int | None = None) -> bool:
    """`logger.final_evaluation_missing` of a run folder whose newest checkpoint is at `last`
    (`eval_episodes`: the evaluation a resume would run, `logger.end_episodes`). An
    unreadable config or log: False (done as far as a sweep can tell; the report says what
    it cannot read)."""
    from reverie.config import load_run_config
    from reverie.run.logger import METRICS, end_episodes, final_evaluation_missing, read_jsonl

    try:
        run = load_run_config(folder).run
        return final_evaluation_missing(read_jsonl(Path(folder) / METRICS), last,
                                        int(run.steps),
                                        end_episodes(int(run.eval_episodes), eval_episodes))
    except Exception:  # noqa: BLE001 - see the docstring
        return False


def _own_budget_done(folder: Path, last: int | None) -> bool:
    """Whether the run, with its newest checkpoint at `last`, reached the run.steps in its
    config.yaml (a longer sweep extends it; that is not a resume after a crash)."""
    from reverie.config import load_run_config

    try:
        return last is not None and last >= int(load_run_config(folder).run.steps)
    except Exception:  # noqa: BLE001 - an unreadable config: the resume will say why
        return False


def log_path(trial: Trial) -> Path:
    return Path(trial.folder).parent / "logs" / f"{trial.name}.log"


ATTEMPT_HEADER = "=== attempt "  # starts each attempt's output in a trial's log


def _last_error(log: Path) -> str:
    """The last attempt's error line (or its last line: a stop by a signal, a crash's
    exception); the log holds every attempt of every sweep, appended."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    starts = [i for i, ln in enumerate(lines) if ln.startswith(ATTEMPT_HEADER)]
    lines = lines[starts[-1] + 1:] if starts else lines
    errors = [ln for ln in lines if ln.startswith("reverie: error:")]
    return (errors or lines or [""])[-1].strip()[:300]


def trial_record(trial: Trial, **fields: Any) -> dict[str, Any]:
    """A trial's record before any attempt (`run_trial`'s, or a backend's for a trial it
    ended itself), with `fields` set."""
    return {"name": trial.name, "folder": trial.folder, "attempts": 0, "resumes": 0,
            "returncodes": [], "error": "", **fields}


def run_trial(trial: Trial, retries: int, stop: Callable[[], bool] | None = None,
              interruptible: bool = False) -> dict[str, Any]:
    """Run `trial` until it finishes or has been resumed `retries` times. `interruptible`
    (a Ray task, which its sweep's stop interrupts): an interrupt stops the trial with its
    checkpoint and returns its "stopped" record instead of raising.

    Returns {"name", "status": "skipped" | "finished" | "failed" | "stopped", "attempts",
    "resumes",
    "returncodes", "error", "wall_s"}. A trial already complete is skipped; one with a run
    folder but no complete checkpoint is resumed, counting as its first attempt. A trial
    that exits with code 2 (a bad setting) is not retried; one whose run folder another
    process holds (exit 75) is retried after a wait.
    """
    t0 = time.time()
    result = trial_record(trial)
    state = trial_state(trial)
    last = manifest_newest(Path(trial.folder))[1]
    if state == DONE:
        if last > trial.steps:
            result["note"] = (f"trained to {last} env steps by an earlier sweep (this one asks "
                              f"{trial.steps}); kept as it is")
            if not _own_budget_done(Path(trial.folder), last):
                result["note"] += (" (short of its own run.steps: rerun with that --steps "
                                   "to finish it)")
        return {**result, "status": "skipped", "wall_s": 0.0}
    extends = state == PARTIAL and _own_budget_done(Path(trial.folder), last)
    if extends:
        result["extended"] = True
    log = log_path(trial)
    log.parent.mkdir(parents=True, exist_ok=True)

    def ended(status: str, error: str | None = None) -> dict[str, Any]:
        return {**result, "status": status, **({} if error is None else {"error": error}),
                "wall_s": round(time.time() - t0, 2)}

    interrupted = False  # a Ray task's interrupted child has stopped with its checkpoint
    try:
        while True:
            if stop is not None and stop():  # the sweep stopped before this attempt began
                return ended("stopped", _last_error(log))
            # a run folder that is there is resumed, also one killed after its last checkpoint
            # (UNEVALUATED, or DONE with an exit code not 0): the resume finishes what the kill
            # cut (its final evaluation, its tail row)
            resume = state != NEW
            args = trial.resume_args() if resume else trial.train_args()
            with open(log, "a") as f:
                f.write(f"\n{ATTEMPT_HEADER}{result['attempts'] + 1}: reverie {' '.join(args)}\n")
                f.flush()
                try:
                    rc = _run_child(args, f)
                except TrialInterrupted as e:
                    if not interruptible:
                        raise
                    rc, interrupted = e.returncode, True
            result["attempts"] += 1
            result["resumes"] += int(resume and not extends)  # an extension is not a resume
            extends = False  # a later attempt follows a crash
            result["returncodes"].append(rc)
            state = trial_state(trial)
            if rc == 0 and state == DONE:
                return ended("finished")
            if interrupted or (stop is not None and stop()):  # resumed by the sweep's next run
                return ended("stopped", _last_error(log))
            # exit code 2 is a mistake in the command (reverie's UserError): a retry repeats it
            if result["attempts"] > retries or rc == USAGE_EXIT:
                error = _last_error(log) or (f"killed by {signal.Signals(-rc).name}" if rc < 0
                                             and -rc in signal.valid_signals()
                                             else f"exit code {rc}")
                return ended("failed", error)
            if rc == Busy.exit_code:  # e.g. a killed sweep's trial still saving its checkpoint
                _wait_busy(BUSY_WAIT_S * result["attempts"], stop)
    except KeyboardInterrupt:  # between children (a wait, the log): none runs
        if not interruptible:
            raise
        return ended("stopped", _last_error(log))
