"""Crash-safe checkpoints: temp file + fsync + atomic rename, a checksummed manifest, last K kept.

A kill at any instant leaves either the previous manifest (pointing at complete, verified
files) or the new one; a checkpoint whose bytes do not match the manifest's sha256 (truncated,
corrupted) is skipped in favour of the one before it. Files load with
`torch.load(weights_only=True)`: tensors and plain containers only, never code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reverie.errors import UserError

MANIFEST = "manifest.json"
FORMAT = 2  # 2: any-step checkpoints (env episodes replayed), truncation flags
# The only names a manifest may point at: plain files directly inside `checkpoints/`. Everything
# in a run folder is untrusted input, so an entry naming `../config.yaml` or `/etc/x` must never
# be read, let alone unlinked by pruning.
CHECKPOINT_NAME = re.compile(r"ckpt-(\d{1,19})\.pt")
# The agent of the best evaluation so far, with that evaluation's step and return (weights and
# optimiser state, no replay or RNG: it is for acting, not for resuming).
BEST = "best.pt"


class CheckpointError(UserError):
    """No usable checkpoint (missing, corrupt, or from another agent)."""


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot open directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` so that `path` holds either its old content or all of `data`."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            if _crash_requested(path):
                f.write(data[: len(data) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(
            f"cannot write {path} ({e.strerror or e}); free disk space or choose a writable run "
            "folder (--out); the previous checkpoint is intact"
        ) from None
    _fsync_dir(path.parent)


def _crash_requested(path: Path) -> bool:
    """Fault injection for the kill-during-write test: REVERIE_CRASH_WRITING=<file name>."""
    target = os.environ.get("REVERIE_CRASH_WRITING")
    return bool(target) and path.name == target


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    file: str
    step: int
    sha256: str
    size: int


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:010d}.pt"


def _entry(raw: Any, where: Path) -> Entry:
    """One manifest entry, checked field by field (names, types, ranges)."""
    fields = ("file", "step", "sha256", "size")
    if not isinstance(raw, dict) or set(raw) != set(fields):
        raise CheckpointError(
            f"{where} has an entry that is not {{{', '.join(fields)}}}: {str(raw)[:60]}; "
            "move the manifest aside and reverie rebuilds it from the checkpoint files"
        )
    file, step, digest, size = (raw[k] for k in fields)
    if not isinstance(file, str) or not CHECKPOINT_NAME.fullmatch(file):
        raise CheckpointError(
            f"{where} names {file!r}, which is not a checkpoint file inside this folder "
            "(ckpt-<step>.pt); move the manifest aside and reverie rebuilds it from the "
            "checkpoint files"
        )
    ok = (type(step) is int and step == int(CHECKPOINT_NAME.fullmatch(file).group(1))
          and type(size) is int and size >= 0
          and isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest))
    if not ok:
        raise CheckpointError(
            f"{where} has a bad step, size or sha256 for {file}; move the manifest aside "
            "and reverie rebuilds it from the checkpoint files"
        )
    return Entry(file, step, digest, size)


class CheckpointStore:
    """The `checkpoints/` folder of a run."""

    def __init__(self, folder: Path, keep: int = 3) -> None:
        self.folder = Path(folder)
        self.keep = max(1, keep)
        self.rebuild_notes: list[str] = []
        self._rebuilt: list[Entry] | None = None  # cached until a manifest is written

    # -- manifest ----------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """The manifest's entries, oldest first; rebuilt from the files if it is missing."""
        path = self.folder / MANIFEST
        if not path.exists() and not path.is_symlink():
            if self._rebuilt is None:
                self._rebuilt = self._rebuild()
            return list(self._rebuilt)
        try:
            if path.is_symlink():
                raise ValueError("a link")
            data = json.loads(path.read_text())
            raw = data["checkpoints"]
            if not isinstance(raw, list):
                raise TypeError("not a list")
        except (OSError, ValueError, KeyError, TypeError):
            # the manifest is only ever replaced atomically, so this is outside damage
            raise CheckpointError(
                f"{path} is not a valid manifest; move it aside (e.g. rename it to "
                "manifest.json.bad) and reverie rebuilds it from the checkpoint files"
            ) from None
        entries = [_entry(e, path) for e in raw]
        if len({e.file for e in entries}) != len(entries):
            raise CheckpointError(f"{path} lists a checkpoint file twice; move it aside and "
                                  "reverie rebuilds it from the checkpoint files")
        return sorted(entries, key=lambda e: e.step)

    def checkpoint_files(self) -> list[Path]:
        """Regular (non-link) files named like checkpoints directly inside the folder."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir()
                      if CHECKPOINT_NAME.fullmatch(p.name) and p.is_file()
                      and not p.is_symlink())

    def _rebuild(self) -> list[Entry]:
        """Entries recomputed from the checkpoint files (manifest deleted or never written):
        each file is verified by loading it, and its checksum recomputed."""
        entries = []
        for path in self.checkpoint_files():
            data = path.read_bytes()
            try:
                load_bytes(data, path)
            except CheckpointError:
                self.rebuild_notes.append(f"{path.name} does not load; left out of the rebuilt "
                                          "manifest")
                continue
            step = int(CHECKPOINT_NAME.fullmatch(path.name).group(1))
            entries.append(Entry(path.name, step, sha256(data), len(data)))
        if entries:
            self.rebuild_notes.append(f"no manifest in {self.folder}; rebuilt it from "
                                      f"{len(entries)} verified checkpoint file(s) (in memory: "
                                      "the run's next checkpoint writes it)")
        return sorted(entries, key=lambda e: e.step)

    def _write_manifest(self, entries: list[Entry]) -> None:
        data = {"format": FORMAT, "checkpoints": [e.__dict__ for e in entries]}
        atomic_write_bytes(self.folder / MANIFEST, json.dumps(data, indent=1).encode())

    # -- save / load -----------------------------------------------------------------------
    def save(self, payload: dict[str, Any], step: int) -> Path:
        """Serialise, write atomically, then publish in the manifest; prune to the last K."""
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
        name = checkpoint_name(step)
        atomic_write_bytes(self.folder / name, data)
        entries = [e for e in self.entries() if e.file != name]
        entries.append(Entry(name, step, sha256(data), len(data)))
        entries.sort(key=lambda e: e.step)
        dropped, entries = entries[: -self.keep], entries[-self.keep :]
        self._write_manifest(entries)
        self._rebuilt = None
        for e in dropped:  # only after the manifest no longer points at them
            target = self.folder / e.file  # a checked name: directly inside this folder
            if target.is_file() and not target.is_symlink():
                with contextlib.suppress(OSError):
                    target.unlink()
        return self.folder / name

    def save_best(self, payload: dict[str, Any]) -> Path:
        """Replace best.pt atomically (a kill leaves the previous best or the new one)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(self.folder / BEST, buf.getvalue())
        return self.folder / BEST

    def load_best(self) -> dict[str, Any]:
        """best.pt's payload (its "best" entry holds the step and the evaluation return)."""
        path = self.folder / BEST
        if path.is_symlink() or not path.is_file():
            raise CheckpointError(
                f"no best checkpoint in {self.folder}: it is written at the evaluations of a "
                "run with run.eval_episodes > 0 and run.keep_best=true, from its first "
                "evaluation on (and by reverie versions that keep it); drop --best to load the "
                "latest")
        payload = load_file(path)
        best = payload.get("best")
        if not (isinstance(best, dict) and type(best.get("step")) is int
                and isinstance(best.get("eval_return"), float)):
            raise CheckpointError(f"{path} is not a best checkpoint (no step and return); "
                                  "drop --best to load the latest")
        return payload

    def load_latest(self, at_most: int | None = None) -> tuple[dict[str, Any], Entry, list[str]]:
        """The newest checkpoint whose checksum verifies, and warnings about skipped ones.
        at_most: prefer checkpoints at or before this env step (newer ones are tried only
        when none of those verifies)."""
        entries = self.entries()
        warnings = list(self.rebuild_notes)
        if not entries:
            raise CheckpointError(f"no checkpoint in {self.folder}; start a new run instead")
        if at_most is not None:
            entries = ([e for e in entries if e.step > at_most]
                       + [e for e in entries if e.step <= at_most])
        for e in reversed(entries):
            path = self.folder / e.file
            try:
                if path.is_symlink():
                    raise OSError("a link, never followed")
                data = path.read_bytes()
            except OSError:
                warnings.append(f"checkpoint {e.file} is missing; using an older one")
                continue
            if len(data) != e.size or sha256(data) != e.sha256:
                warnings.append(f"checkpoint {e.file} is corrupt or truncated; using an older one")
                continue
            return load_bytes(data, path), e, warnings
        raise CheckpointError(
            f"every checkpoint in {self.folder} is corrupt or missing; start a new run"
        )


def load_bytes(data: bytes, path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(
            f"{path} is not a reverie checkpoint (it does not load as a torch checkpoint); "
            "point at a run folder or a checkpoint it wrote"
        ) from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"{path} is not a reverie checkpoint (no format)")
    if payload["format"] != FORMAT:
        raise CheckpointError(
            f"{path} was written by another reverie version (checkpoint format "
            f"{payload['format']!r}, this one reads {FORMAT}); use that version to continue it, "
            "or start a new run"
        )
    return payload


def load_file(path: Path) -> dict[str, Any]:
    """Load one checkpoint file directly (no manifest): used by `reverie.load(file)`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror}); check the path") from None
    return load_bytes(data, Path(path))
