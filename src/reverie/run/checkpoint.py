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
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reverie.errors import UserError

MANIFEST = "manifest.json"
FORMAT = 1


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
            f"cannot write {path} ({e.strerror or e}); free disk space or choose a writable "
            "--out; the previous checkpoint is intact"
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


class CheckpointStore:
    """The `checkpoints/` folder of a run."""

    def __init__(self, folder: Path, keep: int = 3) -> None:
        self.folder = Path(folder)
        self.keep = max(1, keep)

    # -- manifest ----------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        path = self.folder / MANIFEST
        if not path.exists():
            return []
        try:
            data = json.loads(path.read_text())
            return [Entry(**e) for e in data["checkpoints"]]
        except (ValueError, KeyError, TypeError):
            # the manifest is only ever replaced atomically, so this is outside damage
            raise CheckpointError(
                f"{path} is not a valid manifest; delete it to rebuild from the checkpoint files"
            ) from None

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
        name = f"ckpt-{step:010d}.pt"
        atomic_write_bytes(self.folder / name, data)
        entries = [e for e in self.entries() if e.file != name]
        entries.append(Entry(name, step, sha256(data), len(data)))
        entries.sort(key=lambda e: e.step)
        dropped, entries = entries[: -self.keep], entries[-self.keep :]
        self._write_manifest(entries)
        for e in dropped:  # only after the manifest no longer points at them
            with contextlib.suppress(OSError):
                (self.folder / e.file).unlink()
        return self.folder / name

    def load_latest(self) -> tuple[dict[str, Any], Entry, list[str]]:
        """The newest checkpoint whose checksum verifies, and warnings about skipped ones."""
        warnings: list[str] = []
        entries = self.entries()
        if not entries:
            raise CheckpointError(f"no checkpoint in {self.folder}; start a new run instead")
        for e in reversed(entries):
            path = self.folder / e.file
            try:
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
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(
            f"{path} is not a reverie checkpoint ({type(e).__name__}); point at a run folder "
            "or a checkpoint it wrote"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a reverie checkpoint (format mismatch)")
    return payload


def load_file(path: Path) -> dict[str, Any]:
    """Load one checkpoint file directly (no manifest): used by `reverie.load(file)`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror}); check the path") from None
    return load_bytes(data, Path(path))
