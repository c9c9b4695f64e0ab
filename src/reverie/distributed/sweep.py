"""`reverie sweep`: a grid of `reverie train` runs on local processes or Ray, then a report.

    reverie sweep --preset cartpole --env CartPole-v1 --seeds 5 \\
        --grid imagine.world.backbone=gru,mamba2 --out sweeps/bb

The sweep folder holds one ordinary run folder per trial, `logs/<trial>.log` (each attempt's
output), `sweep.json` (every trial's outcome) and `report/` (`reverie report` of the grid).
Re-running the same command skips finished trials and resumes unfinished ones; a re-run
with another grid (or envs, seeds) adds its trials, and sweep.json and the report keep
the earlier ones.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reverie.config import is_preset_file
from reverie.distributed.grid import Trial, make_trials, parse_grid
from reverie.distributed.trial import (
    DONE,
    PARTIAL,
    UNEVALUATED,
    reset_stop,
    run_trial,
    signal_trials,
    trial_state,
)
from reverie.errors import Busy, Stopped, UserError
from reverie.run.machine import usable_cores
from reverie.run.stop import StopOnSignal


@dataclass
class Sweep:
    preset: str | None = None
    envs: list[str] = field(default_factory=list)
    seeds: int = 1
    steps: int | None = None
    overrides: list[str] = field(default_factory=list)
    grid: list[str] = field(default_factory=list)
    out: str | None = None
    workers: int | None = None
    retries: int = 2


def default_workers() -> int:
    return max(1, usable_cores() // 2)


def _run_local(trials: list[Trial], workers: int, retries: int,
               on_result: Callable[[dict], None],
               on_start: Callable[[], None] = lambda: None) -> list[dict]:
    """Every trial in a pool of `workers` threads, each waiting on one trial process.

    The first Ctrl-C or SIGTERM starts no more trials and passes the signal on to the
    running ones, once (they stop with a checkpoint; a sweep killed outright ends them by
    `follow_parent`); a second one passes it on again (they stop at once). Either way the
    sweep then ends with `Stopped`: its next run resumes them."""
    stop = threading.Event()

    def stopping(name: str) -> None:
        stop.set()
        for f in futures:
            f.cancel()  # those not started yet
        signal_trials(signal.Signals[name])

    on_start()
    reset_stop()
    results = []
    pool = ThreadPoolExecutor(max_workers=workers)
    futures = [pool.submit(run_trial, t, retries, stop.is_set) for t in trials]
    at_once = False
    recorded: set = set()
    with StopOnSignal(stopping) as stopper:
        try:
            for future in as_completed(futures):
                if not future.cancelled():
                    results.append(future.result())
                    recorded.add(future)
                    on_result(results[-1])
        except KeyboardInterrupt:  # a second signal, or a Ctrl-C this process could not catch
            at_once = stopper.requested is not None
            stopper.requested = stopper.requested or "SIGINT"
            stopping(stopper.requested)  # again: the trials stop at once
        pool.shutdown(wait=True)
    for future in futures:  # those that ended after a second signal left the loop
        if future.done() and not future.cancelled() and future not in recorded \
                and future.exception() is None:
            results.append(future.result())
            on_result(results[-1])
    if stopper.requested:
        how = ("at once, from their last checkpoints" if at_once else
               "with their checkpoints")
        raise Stopped(f"sweep stopped by {stopper.requested}; its running trials stopped {how}: "
                      "run the same command again to resume them (finished trials are kept)",
                      stopper.requested)
    return results


SWEEP_MARKER = ".reverie-sweep"  # written first into every folder a sweep runs in


def _is_sweep(out: Path) -> bool:
    """An earlier sweep's folder: its marker, its sweep.json, or (a sweep of a version before
    the marker, stopped before its sweep.json) a trial's log in logs/ beside that trial's
    run folder. A logs/ folder alone is anybody's."""
    from reverie.run.folder import MARKER

    if (out / SWEEP_MARKER).is_file() or (out / "sweep.json").is_file():
        return True
    logs = out / "logs"
    return logs.is_dir() and any((out / log.stem / MARKER).is_file()
                                 for log in logs.glob("*.log"))


def check_sweep_folder(out: Path) -> None:
    """May a sweep write into `out`? A new or empty folder, or an earlier sweep's to resume
    (`_is_sweep`); never a run folder or someone else's."""
    from reverie.run.folder import CONFIG, check_no_links

    if out.is_symlink():
        raise UserError(f"--out '{out}' is a link; a sweep folder is never followed through "
                        "one: give the folder it points to, or a new one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; choose a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if (out / CONFIG).exists():
        raise UserError(f"--out '{out}' is a run folder (it has {CONFIG}); a sweep makes its "
                        "runs inside its own folder: choose a new or empty --out")
    if not _is_sweep(out):
        raise UserError(f"'{out}' is not empty and is not a reverie sweep; choose a new or "
                        "empty --out (or the folder of the sweep to continue)")
    check_no_links(out)


LOCK = ".sweep-lock"


def _lock(out: Path):
    """Hold the sweep folder for this process (released when the returned file is closed):
    a second copy of the sweep started on the same folder would resume the same trials
    and overwrite sweep.json."""
    import fcntl

    f = open(out / LOCK, "a")  # noqa: SIM115 - closed by the caller, which holds it
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise Busy(f"another reverie sweep is running in '{out}'; wait for it to end (or stop "
                   "it), then run this command again") from None
    return f


def run_sweep(sweep: Sweep, backend: str = "local", address: str | None = None,
              on_result: Callable[[dict], None] | None = None,
              on_note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Validate every trial, run them all, write sweep.json and the report; returns a summary.
    `on_note` gets, before any trial starts, one line per note `reverie train` would print
    for a trial (a trial that will train nothing, ...), naming the trials it concerns."""
    if sweep.retries < 0:
        raise UserError(f"--retries must be >= 0, got {sweep.retries}")
    if backend not in ("local", "ray"):
        raise UserError(f"unknown backend '{backend}'; choose local or ray")
    if address is not None and backend != "ray":
        raise UserError("--address joins a Ray cluster; add --backend ray")
    name = sweep.preset or "cartpole"
    out = Path(sweep.out or Path("sweeps") / (Path(name).stem if is_preset_file(name) else name))
    check_sweep_folder(out)
    workers = sweep.workers or default_workers()
    threads = max(1, usable_cores() // workers)
    notes: dict[str, list[str]] = {}
    trials = make_trials(sweep.preset, sweep.envs, sweep.seeds, sweep.steps, sweep.overrides,
                         sweep.grid, out, threads, notes,
                         reusable=_trial_folders(out, _previous_sweep(out)))
    states = {t.name: trial_state(t) for t in trials}
    done = {n for n, state in states.items() if state == DONE}  # skipped: nothing to say
    # resumed, extended, or left to run a missing final evaluation
    partial = sum(state in (PARTIAL, UNEVALUATED) for state in states.values())
    say = on_note or (lambda line: None)
    for note, names in notes.items():
        names = [n for n in names if n not in done]
        if not names:
            continue
        say(f"{_trials(names, len(trials))}: {note}")
    _say_changed(trials, done, say)
    aliased = [t for t in trials if t.alias]
    if aliased:
        say(f"{_trials([t.alias for t in aliased], len(trials))} of this grid "
            f"{'has' if len(aliased) == 1 else 'have'} the settings of an earlier run's "
            f"trial{'s' if len(aliased) > 1 else ''} ({aliased[0].alias} = {aliased[0].name}"
            f"{', ...' if len(aliased) > 1 else ''}): "
            f"{'its folder is' if len(aliased) == 1 else 'their folders are'} used, not "
            "trained again")

    def started() -> None:  # once the backend is up: what to expect before a trial ends
        if len(done) < len(trials):
            # "1 of them continued" read as if said of the finished ones
            folders = "its run folder" if partial == 1 else "their run folders"
            resumed = f"{partial} continued from {folders}, " if partial else ""
            say(f"{len(trials) - len(done)} of {len(trials)} trial(s) to run ({resumed}"
                f"{len(done)} finished before), {min(workers, len(trials))} at a time on "
                f"{backend}; each "
                f"writes {out / 'logs'}/<trial>.log and a line here when it ends")

    on_result = on_result or (lambda r: None)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_MARKER).write_text("a reverie sweep folder\n")
    lock = _lock(out)
    ended: list[dict] = []  # the trials' outcomes as they come: a stopped sweep keeps them

    def record(result: dict) -> None:
        ended.append(result)
        on_result(result)

    try:
        try:
            if backend == "ray":
                from reverie.distributed.ray_backend import run_ray

                results = run_ray(trials, workers, sweep.retries, address, record, started)
            else:
                results = _run_local(trials, workers, sweep.retries, record, started)
        except Stopped as e:
            try:
                _finish(sweep, out, backend, trials, ended, stopped=e.signal_name)
            except OSError:  # e.g. a full disk: the stop's own line and exit code stand
                pass
            if (out / "report").is_dir():  # a stopped sweep writes none: that one is older
                raise Stopped(f"{e}; {out / 'report'} is still the report of an earlier run "
                              "of this sweep", e.signal_name) from None
            raise
        except UserError:
            if created and {p.name for p in out.iterdir()} <= {SWEEP_MARKER, LOCK}:
                shutil.rmtree(out)  # e.g. Ray unreachable: leave no empty sweep folder behind
            raise
        return _finish(sweep, out, backend, trials, results)
    finally:
        lock.close()


def _trials(names: list[str], total: int) -> str:
    return ("every trial" if len(names) == total else f"trial {names[0]}" if len(names) == 1
            else f"{len(names)} trials ({names[0]}, ...)")


def _say_changed(trials: list[Trial], done: set[str], say: Callable[[str], None]) -> None:
    """Settings a resume may change that this run of the sweep gives other values than its
    trials' folders have: an unfinished trial resumes with them; a finished one keeps what
    it ran with, which is said (a changed evaluation protocol was dropped in silence)."""
    by_change: dict[tuple[bool, tuple[str, ...]], list[str]] = {}
    for t in trials:
        changed = tuple(c for c in t.changed if not c.startswith("run.threads:"))
        if changed:
            by_change.setdefault((t.name in done, changed), []).append(t.name)
    for (finished, changed), names in by_change.items():
        which = _trials(names, len(trials))
        if finished:
            say(f"{which} finished before with other settings ({'; '.join(changed)}): kept "
                "as they are (a finished trial is not run again; a new --out runs the grid "
                "with this sweep's)")
        else:
            say(f"{which} will resume with this sweep's settings ({'; '.join(changed)})")


def _finish(sweep: Sweep, out: Path, backend: str, trials: list[Trial],
            results: list[dict], stopped: str | None = None) -> dict[str, Any]:
    """sweep.json and the report of a sweep whose trials have run; returns the summary.
    `stopped` (the signal that stopped the sweep): sweep.json of the trials that ended
    before it (so that their records outlive the stop: the next run, which skips them,
    carries them on), marked stopped, and no report."""
    order = {t.name: i for i, t in enumerate(trials)}
    results.sort(key=lambda r: order[r["name"]])
    previous = _previous_sweep(out)
    earlier, earlier_keys = _earlier_trials(out, previous, set(order))
    _keep_history(results, previous)
    counts = {s: sum(r["status"] == s for r in results) for s in ("finished", "skipped", "failed")}
    summary: dict[str, Any] = {"sweep": str(out), "backend": backend, "trials": len(trials),
                               **counts, "resumed": sum(r["resumes"] > 0 for r in results)}
    if stopped is not None:
        summary["stopped"] = stopped
        # stopped on their way (a local sweep's records say "stopped") or not started
        summary["unfinished"] = len(trials) - sum(counts.values())
        # this sweep's trials that the stop came before: their earlier records, if any, stay
        ended = {r["name"] for r in results}
        results = results + [r for r in _records(previous)
                             if r.get("name") in order and r["name"] not in ended]
    if earlier:
        summary["earlier_trials"] = len(earlier)
    grid_keys = list(dict.fromkeys([*earlier_keys, *(k for k, _ in parse_grid(sweep.grid))]))
    (out / "sweep.json").write_text(json.dumps(
        {**summary, "grid_keys": grid_keys, "results": results + earlier}, indent=1) + "\n")
    if stopped is not None:
        return summary
    try:
        from reverie.eval.report import write_report

        # a trial that failed before writing its folder (a bad --set) is in the Sweep
        # section as failed, with its error: not also "skipped: no such file or folder"
        failed = {r["name"] for r in results if r["status"] == "failed"}
        folders = [t.folder for t in trials if t.name not in failed or Path(t.folder).exists()]
        report, _ = write_report(folders + [r["folder"] for r in earlier],
                                 out / "report", notes=trial_notes(results, earlier),
                                 also_group_by=[k for k in grid_keys
                                                if k.rsplit(".", 1)[-1] != "backbone"])
        summary["report"] = str(report)
    except UserError as e:
        summary["report_error"] = str(e)
    return summary


def _previous_sweep(out: Path) -> dict:
    """The sweep.json an earlier run of the sweep left ({} if none or unreadable)."""
    try:
        earlier = json.loads((out / "sweep.json").read_text())
        return earlier if isinstance(earlier, dict) else {}
    except (OSError, ValueError):
        return {}


def _trial_folders(out: Path, previous: dict) -> list[Path]:
    """The run folders of an earlier sweep.json's trials inside `out` (a name that is not one
    plain folder name, or a link, is not followed: sweep.json is a file anyone may edit)."""
    return [out / r["name"] for r in _records(previous) if _inside(out, r.get("name"))]


def _inside(out: Path, name: object) -> bool:
    """Whether a trial name from sweep.json is one plain folder name inside `out`, not a
    link (not '..', a path, an absolute path)."""
    return (isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name
            and not (out / name).is_symlink())


def _records(previous: dict) -> list[dict]:
    """The trial records of an earlier sweep.json ([] where it holds none)."""
    records = previous.get("results")
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def _keep_history(results: list[dict], previous: dict) -> None:
    """A trial skipped now (finished before) keeps the record of the run that trained it under
    'trained' (its attempts, exit codes, wall time), instead of the skip's zeros.
    `previous`: the earlier sweep.json."""
    by_name = {r.get("name"): r for r in _records(previous)}
    for r in results:
        before = by_name.get(r["name"])
        if r["status"] != "skipped" or before is None:
            continue
        # the earlier run trained it (finished), or it was skipped then too and carries the
        # record of the run before; a failed record (finished since by hand) is not that
        trained = {"finished": before, "skipped": before.get("trained")}.get(before.get("status"))
        if isinstance(trained, dict):
            r["trained"] = {k: v for k, v in trained.items() if k not in ("name", "folder")}


def _earlier_trials(out: Path, earlier: dict, current: set[str]) -> tuple[list[dict], list[str]]:
    """Trials that an earlier run of a sweep into `out` (its sweep.json: `earlier`) made and
    this one does not name (another --grid, --env or --seeds), whose run folders are still
    there, with the earlier grid keys: they stay in sweep.json and the report instead of
    dropping out of both."""
    try:
        kept = [{**r, "folder": str(out / r["name"])} for r in earlier["results"]
                if _inside(out, r["name"]) and r["name"] not in current
                and (out / r["name"] / "config.yaml").is_file()]
        # a sweep.json of an older version lists no grid keys: they are in the trial names
        keys = earlier.get("grid_keys") or [part.split("=", 1)[0] for r in earlier["results"]
                                            for part in r["name"].split("__") if "=" in part]
        return kept, list(dict.fromkeys(str(k) for k in keys))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none, or malformed
        return [], []


def trial_notes(results: list[dict], earlier: Sequence[dict] = ()) -> list[str]:
    """The report's 'Sweep' section: every trial that was resumed or failed, by name, and the
    trials of earlier runs of the sweep that this run did not name."""
    from reverie.eval.report import _n  # the report's plural, for the report's section
    resumed = [r for r in results if r["resumes"] > 0 and r["status"] == "finished"]
    failed = [r for r in results if r["status"] == "failed"]
    lines = ["## Sweep", "",
             f"{_n(len(results), 'trial')}: "
             f"{sum(r['status'] == 'finished' for r in results)} run now ({len(resumed)} of "
             f"them after a resume), {sum(r['status'] == 'skipped' for r in results)} already "
             f"finished (skipped), {len(failed)} failed.", ""]
    if resumed or failed:
        lines += ["| trial | outcome | attempts | exit codes | last error |",
                  "|---|---|---:|---|---|"]
        for r in resumed + failed:
            outcome = "failed" if r["status"] == "failed" else f"resumed {r['resumes']}x, finished"
            lines.append(f"| {r['name']} | {outcome} | {r['attempts']} | "
                         f"{', '.join(map(str, r['returncodes']))} | {r['error'] or '-'} |")
        lines.append("")
    if earlier:
        lines += [f"Also reported: {len(earlier)} trial(s) that an earlier run of this sweep made "
                  "with other arguments (another --grid, --env or --seeds): "
                  f"{', '.join(r['name'] for r in earlier)}.", ""]
    return lines
