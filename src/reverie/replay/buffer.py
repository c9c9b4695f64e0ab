"""Sequence replay: a ring buffer per environment stream, in memory or memory-mapped on disk.

Row t holds (obs_t, action_t, reward_t, terminal_t, truncated_t, first_t) — the STORM/Drama
convention, plus a time-limit flag (truncated_t: the episode was cut after action_t, so its
value still counts; terminal_t stays False there):
action_t is taken at obs_t, reward_t and terminal_t follow it, first_t marks obs_t as the
start of an episode. `sample` returns [B, T] windows of consecutive rows; windows may cross
episode boundaries and their "reset" flags (= first) mark where.

    replay = Replay(100_000, {"image": ((64, 64, 3), "uint8"), "action": ((), "int64")},
                    directory="run/replay", sampler="dfs")
    replay.add({"image": img, "action": 3, "reward": 0.0, "terminal": False, "first": True})
    batch = replay.sample(16, 64, purpose="train")     # batch["image"]: [16, 64, 64, 64, 3] uint8

On disk every field is one `.npy` file of full capacity, written in place through a memory
map, so the data persists row by row and a checkpoint only needs `state_dict()` (positions,
sampler counters, RNG state). Resuming (`Replay.open` + `load_state_dict`) rolls the write
position back to the checkpoint: rows the killed run wrote after its last checkpoint are
not sampled and get overwritten as the resumed run writes again. A per-slot stamp (global
index of the row stored there) detects slots such later rows already overwrote, so a resumed
replay never samples a row the checkpoint does not know about; their number is reported in
`dropped_on_resume`.

Several env streams (`streams=N`, one per env of a vector run) split the capacity into N
equal segments, one ring each (stream i holds slots i·S .. i·S + S − 1, S = capacity / N):
a window never mixes two envs' steps, and the sampler draws each batch from the valid starts
of all streams together (DFS's counters and weights stay per slot, so its law is the one
over all starts). Stamps count each stream's own rows.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reverie.errors import suggest
from reverie.replay.dfs import PURPOSES, DFSSampler, window_slots
from reverie.replay.uniform import UniformSampler
from reverie.rng import generator_state, numpy_generator, set_generator_state

Spec = dict[str, tuple[tuple[int, ...], str]]
SAMPLERS = {"uniform": UniformSampler, "dfs": DFSSampler}
# Fields the buffer adds itself; `_stamp` is the global index of the row held by each slot.
OWN_FIELDS: Spec = {
    "reward": ((), "float32"),
    "terminal": ((), "bool"),
    "truncated": ((), "bool"),
    "first": ((), "bool"),
    "_stamp": ((), "int64"),
}
RESERVED = (*OWN_FIELDS, "reset", "start")


def _parse_spec(spec: Spec) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Check a user spec and add the buffer's own fields."""
    if "action" not in spec:
        raise ValueError("replay spec needs an 'action' entry, e.g. 'action': ((), 'int64')")
    parsed = {}
    for name, entry in spec.items():
        if name in RESERVED:
            raise ValueError(f"replay spec key '{name}' is reserved; rename that field")
        try:
            shape, dtype = entry
            parsed[name] = (tuple(int(s) for s in shape), np.dtype(dtype))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"replay spec['{name}'] must be (shape tuple, dtype name) like "
                f"((64, 64, 3), 'uint8'), got {entry!r}"
            ) from err
    for name, (shape, dtype) in OWN_FIELDS.items():
        parsed[name] = (shape, np.dtype(dtype))
    return parsed


def _open_existing(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
    """Reattach one field file, checking its header and length against what the spec needs."""
    fix = "resume with the capacity and spec the run was created with, or use a new directory"
    if not path.is_file():
        raise ValueError(f"replay file {path} is missing; {fix}")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }[version]
            file_shape, fortran, file_dtype = read_header(f)
        except (ValueError, KeyError) as err:
            raise ValueError(f"replay file {path} is not a valid .npy file; {fix}") from err
        offset = f.tell()
    if tuple(file_shape) != shape or np.dtype(file_dtype) != dtype or fortran:
        raise ValueError(
            f"replay file {path} holds {file_dtype} {tuple(file_shape)} but the replay needs "
            f"{dtype} {shape}; {fix}"
        )
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size < needed:
        raise ValueError(
            f"replay file {path} is truncated ({path.stat().st_size} of {needed} bytes); {fix}"
        )
    return np.lib.format.open_memmap(path, mode="r+")


def _reserve(path: Path) -> None:
    """Allocate the file's blocks now: a memory-mapped write to a sparse file on a full disk
    kills the process with SIGBUS later, where this fails at once with a clear message."""
    if not hasattr(os, "posix_fallocate"):
        return
    size = path.stat().st_size
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystems without it
                return
            raise ValueError(
                f"cannot reserve {size / 2**20:.0f} MiB for replay file {path} ({e.strerror}); "
                "free disk space or lower replay.capacity"
            ) from None


def file_rows(path: Path) -> int:
    """Rows (first dimension) of a replay field file, from its .npy header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        return int(read(f)[0][0])


def grow(directory: str | Path, spec: Spec, state: dict[str, Any],
         capacity: int) -> dict[str, Any]:
    """Give an on-disk replay more rows: its files are rewritten at `capacity` rows and the
    checkpoint's `state` (from `Replay.state_dict`, the smaller capacity) is returned remapped,
    ready for `Replay.open(directory, capacity, spec, ...).load_state_dict(...)`.

    The rows the checkpoint knows (global indices total_added − size ... total_added − 1 of
    each stream) move to the slots a replay of `capacity` rows would have written them to
    (global index mod the stream's segment), with their per-slot sampler counters, so the
    grown replay samples exactly as one created with `capacity` rows would. Each file is
    replaced whole (written beside it, then renamed) and a file already at `capacity` rows is
    left as it is, so an interrupted growth is finished by running it again.
    """
    directory = Path(directory)
    old, total, size = int(state["capacity"]), state["total_added"], state["size"]
    if capacity < old:
        raise ValueError(f"a replay of {old} rows cannot shrink to {capacity}")
    streams = int(state.get("streams", 1))
    if old % streams or capacity % streams:
        raise ValueError(f"a replay of {streams} streams needs capacities that are multiples "
                         f"of {streams}, got {old} and {capacity}")
    # each stream's known rows (its global indices total − size ... total − 1)
    known = [(i, np.arange(t - n, t, dtype=np.int64))
             for i, (t, n) in enumerate(zip(np.atleast_1d(total), np.atleast_1d(size)))]

    def slots(rows: int) -> np.ndarray:
        """Where a replay of `rows` rows (and this many streams) holds the known rows."""
        seg = rows // streams
        return np.concatenate([i * seg + g % seg for i, g in known])

    src_old, dst = slots(old), slots(capacity)
    for name, (shape, dtype) in _parse_spec(spec).items():
        path = directory / f"{name}.npy"
        rows = file_rows(path) if path.is_file() else old
        if rows == capacity:
            continue
        src = _open_existing(path, (rows, *shape), dtype)
        tmp = path.with_name(path.name + ".grow")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(capacity, *shape))
        try:
            _reserve(tmp)  # a full disk fails here, not with SIGBUS on a mapped write
        except ValueError:
            del out
            tmp.unlink()
            raise
        if name == "_stamp":
            out[:] = -1
        out[dst] = src[slots(rows)]
        out.flush()
        del out, src
        os.replace(tmp, path)
    remapped = dict(state, capacity=capacity)
    sampler = {}
    for key, value in state["sampler"].items():  # per-slot arrays move with their rows
        if isinstance(value, torch.Tensor) and value.shape == (old,):
            moved = torch.zeros(capacity, dtype=value.dtype)
            moved[torch.from_numpy(dst)] = value[torch.from_numpy(src_old)]
            value = moved
        sampler[key] = value
    remapped["sampler"] = sampler
    return remapped


class Replay:
    """Ring buffer of `capacity` rows of `streams` environment streams (a ring of capacity /
    streams rows each), sampled as [B, T] sequences of one stream each.

    spec: field -> (shape, dtype name) for the obs keys and "action"; "reward" float32,
    "terminal" bool and "first" bool are added. directory: None keeps numpy arrays in
    memory; a path stores one memory-mapped `.npy` per field there. resume: reattach the
    files already in `directory` (then call `load_state_dict`) instead of creating them.
    sampler: "uniform" or "dfs" (extra keyword arguments go to the sampler, e.g. tau=10).
    seed: all sampling randomness comes from one PCG64 generator owned by the replay.
    streams: env streams (`add(row, stream=i)`); capacity must be a multiple of it.
    """

    def __init__(
        self,
        capacity: int,
        spec: Spec,
        directory: str | Path | None = None,
        sampler: str = "uniform",
        seed: int = 0,
        resume: bool = False,
        streams: int = 1,
        **sampler_kwargs: Any,
    ) -> None:
        if not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"replay capacity must be a positive integer, got {capacity!r}")
        if not isinstance(streams, int) or streams <= 0 or capacity % streams:
            raise ValueError(f"replay streams must be a positive integer dividing the capacity "
                             f"{capacity}, got {streams!r}")
        if sampler not in SAMPLERS:
            hint = suggest(sampler, SAMPLERS)
            raise ValueError(
                f"unknown replay sampler '{sampler}'{hint}; choose one of: {', '.join(SAMPLERS)}"
            )
        self.capacity = capacity
        self.streams, self.segment = streams, capacity // streams
        self.fields = _parse_spec(spec)
        self.spec = {k: v for k, v in self.fields.items() if k not in OWN_FIELDS}
        self.directory = None if directory is None else Path(directory)
        self.sampler = SAMPLERS[sampler](capacity, **sampler_kwargs)
        self.rng = numpy_generator(seed)
        self.totals = np.zeros(streams, dtype=np.int64)  # rows each stream ever added
        self.sizes = np.zeros(streams, dtype=np.int64)  # rows each stream holds
        self.dropped_on_resume = 0
        self.data = self._allocate(resume)

    @classmethod
    def open(cls, directory: str | Path, capacity: int, spec: Spec, **kwargs: Any) -> Replay:
        """Reattach the replay files of an earlier run; follow with `load_state_dict`."""
        return cls(capacity, spec, directory=directory, resume=True, **kwargs)

    def _allocate(self, resume: bool) -> dict[str, np.ndarray]:
        if self.directory is None:
            if resume:
                raise ValueError("resume=True needs the directory of the replay files")
            data = {
                name: np.zeros((self.capacity, *shape), dtype)
                for name, (shape, dtype) in self.fields.items()
            }
            data["_stamp"][:] = -1
            return data
        paths = {name: self.directory / f"{name}.npy" for name in self.fields}
        if resume:
            return {
                name: _open_existing(paths[name], (self.capacity, *shape), dtype)
                for name, (shape, dtype) in self.fields.items()
            }
        existing = [p.name for p in paths.values() if p.exists()]
        if existing:
            raise ValueError(
                f"{self.directory} already holds replay files ({', '.join(existing)}); "
                "reattach them with Replay.open(...) / resume=True, or use an empty directory"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {}
        for name, (shape, dtype) in self.fields.items():
            data[name] = np.lib.format.open_memmap(
                paths[name], mode="w+", dtype=dtype, shape=(self.capacity, *shape)
            )
            _reserve(paths[name])
        data["_stamp"][:] = -1
        return data

    def __len__(self) -> int:
        return self.size

    @property
    def size(self) -> int:
        """Rows held, all streams together."""
        return int(self.sizes.sum())

    @property
    def total_added(self) -> int:
        """Rows ever added, all streams together."""
        return int(self.totals.sum())

    def head(self, stream: int = 0) -> int:
        """Write head of a stream: the slot its next `add` writes."""
        return stream * self.segment + int(self.totals[stream]) % self.segment

    @property
    def pos(self) -> int:
        """Write head of stream 0 (the only one of a one-stream replay)."""
        return self.head(0)

    def add(self, row: dict[str, Any], stream: int = 0) -> None:
        """Append one transition of env stream `stream`: the spec keys plus "reward",
        "terminal", "first".

        Shapes must match the spec exactly; uint8 fields only take uint8 arrays (an image
        given as float would be silently truncated otherwise). Extra keys are ignored.
        """
        row = {"truncated": False, **row}  # only time-limited episodes need to say it
        missing = [name for name in self.fields if name != "_stamp" and name not in row]
        if missing:
            raise ValueError(
                f"replay.add row lacks {missing}; pass every spec key and "
                "'reward', 'terminal', 'first'"
            )
        values = {}
        for name, (shape, dtype) in self.fields.items():
            if name == "_stamp":
                continue
            value = np.asarray(row[name])
            if value.shape != shape:
                raise ValueError(
                    f"replay.add: '{name}' has shape {value.shape}, the spec says {shape}"
                )
            if dtype == np.uint8 and value.dtype != np.uint8:
                raise ValueError(
                    f"replay.add: '{name}' is {value.dtype} but stored as uint8; "
                    "pass the raw uint8 image"
                )
            values[name] = value
        if not 0 <= stream < self.streams:
            raise ValueError(f"replay.add: stream {stream} of a replay of {self.streams}")
        slot = self.head(stream)
        # Stamp first: a slot whose write was interrupted already reads as "newer than the
        # checkpoint" on resume and is dropped instead of sampled half-written.
        self.data["_stamp"][slot] = self.totals[stream]
        for name, value in values.items():
            self.data[name][slot] = value
        self.sampler.on_write(slot)
        self.totals[stream] += 1
        self.sizes[stream] = min(self.sizes[stream] + 1, self.segment)

    def valid_starts(self, seq_len: int, stream: int = 0) -> tuple[int, int]:
        """(oldest slot, count) of a stream: starts of windows of seq_len rows not crossing
        its write head.

        The stream's rows in age order are slots oldest, oldest+1, ... (mod its segment), so
        the starts at age offsets 0 .. size − seq_len leave the whole window before the head.
        """
        base, size = stream * self.segment, int(self.sizes[stream])
        oldest = base + (int(self.totals[stream]) - size) % self.segment
        return oldest, size - seq_len + 1

    def can_sample(self, seq_len: int) -> bool:
        """Whether some stream holds a window of `seq_len` rows (what `sample` needs)."""
        return int(self.sizes.max()) >= seq_len

    def _slots(self, stream: int, oldest: int, count: int) -> np.ndarray:
        """`count` consecutive slots of a stream's ring from slot `oldest`: [count]."""
        base = stream * self.segment
        return base + window_slots(oldest - base, count, self.segment)

    def sample(
        self, batch_size: int, seq_len: int, purpose: str = "train"
    ) -> dict[str, torch.Tensor]:
        """Sample B windows of T consecutive rows -> dict of CPU tensors [B, T, ...].

        Keys: the obs keys and "action" (stored dtypes, images uint8 [B, T, H, W, C]),
        "reward" [B, T] float32, "terminal" [B, T] bool, "truncated" [B, T] bool,
        "reset" [B, T] bool (= first),
        "start" [B] int64 (slot of each window's first row).
        """
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(seq_len, int) or not 0 < seq_len <= self.segment:
            where = "capacity" if self.streams == 1 else "capacity / streams"
            raise ValueError(
                f"seq_len must be an integer in [1, {where}={self.segment}], got {seq_len!r}"
            )
        if not self.can_sample(seq_len):
            most = int(self.sizes.max())
            held = (f"replay holds {most} rows" if self.streams == 1
                    else f"each env stream of the replay holds at most {most} rows")
            more = (f"{seq_len - most} more steps" if self.streams == 1 else
                    f"{seq_len - most} more steps per stream ({self.streams} streams)")
            raise ValueError(
                f"{held} but seq_len={seq_len} needs at least {seq_len}; "
                f"add {more} before sampling (raise the prefill)"
            )
        if self.streams == 1:  # the one ring: the sampler's own window form
            oldest, count = self.valid_starts(seq_len)
            starts = self.sampler.choose(oldest, count, batch_size, purpose, self.rng)
        else:
            valid = [(i, *self.valid_starts(seq_len, i)) for i in range(self.streams)]
            slots = np.concatenate([self._slots(i, oldest, count)
                                    for i, oldest, count in valid if count > 0])
            starts = self.sampler.choose_from(slots, batch_size, purpose, self.rng)
        base = starts - starts % self.segment
        index = base[:, None] + (starts[:, None] - base[:, None]
                                 + np.arange(seq_len)) % self.segment  # [B, T]
        batch = {
            name: torch.from_numpy(np.asarray(self.data[name][index]))
            for name in (*self.spec, "reward", "terminal", "truncated")
        }
        batch["reset"] = torch.from_numpy(np.asarray(self.data["first"][index]))
        batch["start"] = torch.from_numpy(starts.astype(np.int64))
        return batch

    def flush(self) -> None:
        """Write memory-mapped rows through to disk (no-op in memory)."""
        if self.directory is not None:
            for array in self.data.values():
                array.flush()

    def state_dict(self) -> dict[str, Any]:
        """Positions, sampler counters and RNG state; flushes first so the rows it names are
        on disk. Only ints, strings, lists and tensors (safe for torch.load(weights_only))."""
        self.flush()
        one = self.streams == 1  # a one-stream replay keeps the format of before streams
        return {
            "capacity": self.capacity,
            "fields": list(self.fields),
            "streams": self.streams,
            "size": self.size if one else [int(n) for n in self.sizes],
            "total_added": self.total_added if one else [int(t) for t in self.totals],
            "rng": generator_state(self.rng),
            "sampler_name": self.sampler.name,
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore a checkpoint; the write position rolls back to it (see the module doc)."""
        fix = "resume with the capacity, spec and sampler the run was created with"
        if int(d["capacity"]) != self.capacity or list(d["fields"]) != list(self.fields):
            raise ValueError(
                f"replay checkpoint has capacity {d['capacity']} and fields {list(d['fields'])}"
                f", this replay {self.capacity} and {list(self.fields)}; {fix}"
            )
        if int(d.get("streams", 1)) != self.streams:
            raise ValueError(
                f"replay checkpoint has {d.get('streams', 1)} env streams, this replay "
                f"{self.streams}; resume with the run.num_envs the run was created with"
            )
        if d["sampler_name"] != self.sampler.name:
            raise ValueError(
                f"replay checkpoint used sampler '{d['sampler_name']}', this replay "
                f"'{self.sampler.name}'; {fix}"
            )
        totals = np.atleast_1d(np.asarray(d["total_added"], dtype=np.int64))
        sizes = np.atleast_1d(np.asarray(d["size"], dtype=np.int64))
        if (totals.shape != (self.streams,) or sizes.shape != (self.streams,)
                or np.any(sizes < 0) or np.any(sizes > np.minimum(totals, self.segment))):
            raise ValueError(f"replay checkpoint's row counts ({d['total_added']}, {d['size']}) "
                             f"do not fit {self.streams} stream(s) of {self.segment} rows; {fix}")
        self.dropped_on_resume = 0
        for i, (total, size) in enumerate(zip(totals.tolist(), sizes.tolist())):
            expected = np.arange(total - size, total, dtype=np.int64)
            oldest = i * self.segment + (total - size) % self.segment
            stamps = self.data["_stamp"][self._slots(i, oldest, size)]
            if np.any(stamps < expected):
                where = self.directory if self.directory is not None else "memory"
                raise ValueError(
                    f"the replay rows of this checkpoint are not in {where}; reattach the "
                    "run's own replay directory with Replay.open(directory, ...) (an "
                    "in-memory replay cannot restore its rows: create it with directory=... "
                    "to resume with data)"
                )
            newer = np.nonzero(stamps > expected)[0]
            # Rows written after the checkpoint overwrote the oldest end of its window; keep
            # only the rows after the last overwritten slot so every sampled window is one era.
            keep = size - (int(newer[-1]) + 1 if newer.size else 0)
            self.totals[i], self.sizes[i] = total, keep
            self.dropped_on_resume += size - keep
        self.sampler.load_state_dict(d["sampler"])
        set_generator_state(self.rng, torch.as_tensor(d["rng"]))
