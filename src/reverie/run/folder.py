"""The run folder's lifecycle: which folders may become a run, which are one, and their lock.

Everything inside a run folder is untrusted input (a colleague may hand one over, a user may
edit it), so these checks run before reverie writes or deletes anything there:
- a new run goes only into a missing or empty folder, or into the half-made leftovers of a
  reverie start that died before it wrote `config.yaml` (recognised by the `MARKER` file it
  writes first); any other non-empty folder is refused, never cleared;
- a folder that holds a link anywhere is refused: reverie never writes through a link, so
  nothing outside the run can be touched through one.
"""

from __future__ import annotations

import fcntl
import gc
import json
import shutil
from pathlib import Path
from typing import IO

from reverie.errors import Busy, UserError
from reverie.run.logger import LOGS, MACHINE

MARKER = ".reverie-run"  # written first into every folder reverie makes a run in
CONFIG = "config.yaml"
# {"env_steps": N}: the step of the run's newest checkpoint, rewritten at every checkpoint.
# A report reads how far a run got from it when the checkpoints are not there (a copy of a
# run's logs, such as bench/results/runs/): the last log row can come before the last step.
PROGRESS = "progress.json"
# What a start writes before config.yaml exists (the lock, the marker, the preallocated replay).
_START_LEFTOVERS = {MARKER, ".lock", ".write-probe", "replay"}


def check_no_links(folder: Path) -> None:
    """Refuse a run folder that holds a symbolic link anywhere inside it."""
    folder = Path(folder)
    if folder.is_symlink():
        raise UserError(f"run folder '{folder}' is a link; point at the real folder "
                        f"('{folder.resolve()}')")
    if not folder.is_dir():
        return
    for path in folder.rglob("*"):
        if path.is_symlink():
            raise UserError(
                f"run folder '{folder}' holds a link ({path.relative_to(folder)}); reverie never "
                "writes through links: replace it with the real file or folder"
            )


def _half_made(folder: Path) -> bool:
    """A reverie start that died before writing config.yaml left only these files behind."""
    names = {p.name for p in folder.iterdir()}
    if MARKER not in names or not names <= _START_LEFTOVERS:
        return False
    replay = folder / "replay"
    return not replay.exists() or all(p.suffix == ".npy" for p in replay.iterdir())


def check_new(folder: Path) -> None:
    """Read-only: may a new run be created in `folder`? Raises a UserError naming the fix."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"'{folder}' is a file, not a folder; choose another run folder (--out)")
    check_no_links(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if (folder / CONFIG).exists():
        raise UserError(
            f"run folder '{folder}' already holds a run; continue it with "
            f"`reverie train --resume {folder}` (Trainer.resume in Python) or choose another "
            "run folder (--out)"
        )
    if not _half_made(folder):
        raise UserError(
            f"'{folder}' is not empty and is not a reverie run; choose a new or empty run "
            "folder (--out) (reverie never clears a folder it did not create)"
        )


def create(folder: Path) -> None:
    """Make `folder` a run in the making: create it, mark it, clear a dead start's leftovers."""
    folder = Path(folder)
    check_new(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / MARKER).exists():  # a start that died before config.yaml: ours to clear
            shutil.rmtree(folder / "replay", ignore_errors=True)
        (folder / MARKER).write_text("a reverie run folder\n")
        probe = folder / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"run folder '{folder}' is not writable ({e.strerror}); choose another run "
            "folder (--out)"
        ) from None


def has_history(folder: Path) -> bool:
    """Anything a user could lose: logged rows or checkpoint files."""
    folder = Path(folder)
    if any((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in LOGS):
        return True
    return has_checkpoint(folder)


def has_checkpoint(folder: Path) -> bool:
    """Whether the run in `folder` kept a checkpoint file (a resume can start from it)."""
    ckpts = Path(folder) / "checkpoints"
    return ckpts.is_dir() and any(p.name.startswith("ckpt-") for p in ckpts.iterdir())


def manifest_newest(folder: Path) -> tuple[object | None, int | None]:
    """(format, env step of the newest checkpoint) as the run's checkpoint manifest lists
    them, read without verifying any file: (None, None) where the manifest is missing or not
    a JSON object, a None step where it lists no readable entry. For readers of a run folder
    that must not fail on a damaged one (report, sweep); loading goes through
    `reverie.run.checkpoint.CheckpointStore`, which checks everything."""
    try:
        data = json.loads((Path(folder) / "checkpoints" / "manifest.json").read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return None, None
    if not isinstance(data, dict):
        return None, None
    try:
        return data.get("format"), max(int(e["step"]) for e in data["checkpoints"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return data.get("format"), None


def clear_start(folder: Path) -> None:
    """Delete what a run killed during start-up wrote after config.yaml (no history: checked)."""
    for name in ("replay", "tb", *LOGS, MACHINE):
        target = Path(folder) / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


_HELD: dict[str, IO[str]] = {}  # run folder -> this process's lock file on it (closed: freed)


def lock(folder: Path):
    """Hold an exclusive lock on a run folder for this process's lifetime (the kernel drops
    it when the process dies, even by SIGKILL), so two processes never write one run."""
    try:
        handle = open(Path(folder) / ".lock", "a+")  # noqa: SIM115 - held until exit
    except OSError as e:
        raise UserError(
            f"run folder '{folder}' is not writable ({e.strerror}); choose another run "
            "folder (--out)"
        ) from None
    key = str(Path(folder).resolve())
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if _HELD.get(key) is None or _HELD[key].closed:
                raise
            gc.collect()  # a Trainer of this process dropped untrained lets go when collected
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        mine = _HELD.get(key)
        if mine is not None and not mine.closed:  # a Trainer of this process, never trained
            raise Busy(f"run folder '{folder}' is held by a Trainer in this process that was "
                       "neither trained nor released; call its release() (train() releases "
                       "it when it ends)") from None
        raise Busy(
            f"run folder '{folder}' is in use by another reverie process; stop that process "
            "(or let it finish) before resuming"
        ) from None
    _HELD[key] = handle
    return handle


def check_out_parent(out: Path) -> None:
    """A file a command writes (`--out`) must go into a folder that exists: said before any
    work is done, not as a failed save after it."""
    if not out.parent.is_dir():
        raise UserError(f"--out's folder '{out.parent}' does not exist; create it or choose "
                        "another path")
