"""A run's replay: how many rows it gets, its growth when a resume raises run.steps (or
replay.capacity), and its creation in the run folder's `replay/`."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from reverie.config import load_run_config, run_env_steps
from reverie.errors import UserError
from reverie.replay import Replay
from reverie.replay.buffer import file_rows, grow
from reverie.run.folder import has_checkpoint


def replay_rows(cfg: DictConfig, out: Path, saved: dict[str, Any] | None,
                note: Callable[[str], None]) -> int:
    """Rows to allocate: replay.capacity, but no more than run.steps (a run never stores
    more), a multiple of run.num_envs (one ring per env stream). A resumed run (`saved`: its
    checkpoint's replay state) keeps its rows, grown to that size when a raised run.steps (or
    replay.capacity) asks for more (`make_replay`)."""
    envs = int(cfg.run.num_envs)  # one ring per env stream, of equal rows
    capacity = int(cfg.replay.capacity)
    steps = run_env_steps(cfg.run)
    want = min(capacity - capacity % envs, steps)
    if saved is None:
        return want
    # files a killed growth left larger than the checkpoint says: finish that growth
    have = max(int(saved["capacity"]), rows_on_disk(cfg, out))
    check_capacity(cfg, have)
    if steps > max(want, have):  # the run will outgrow what replay.capacity allows
        if int(load_run_config(out).run.steps) <= max(want, have):  # newly so
            note(f"note: the replay holds {max(want, have):,} rows (replay.capacity), so "
                 f"from step {max(want, have):,} on the newest rows replace the oldest; to "
                 f"keep all {steps:,} steps, resume with --set replay.capacity={steps}")
    return max(want, have)


def rows_on_disk(cfg: DictConfig, out: Path) -> int:
    """The rows a run's replay files have room for (0: no files, or a replay in memory)."""
    if not cfg.replay.on_disk:
        return 0
    return max([0] + [file_rows(p) for p in (Path(out) / "replay").glob("*.npy")])


def check_resume_capacity(cfg: DictConfig, out: Path) -> None:
    """`replay_rows`'s refusal of a lowered replay.capacity, from the run's files alone (for
    `--resume --show-config`, which loads no checkpoint): a run that kept a checkpoint (one
    killed in start-up starts over instead) and whose replay files hold more rows."""
    if "replay" in cfg and has_checkpoint(out):
        check_capacity(cfg, rows_on_disk(cfg, out))


def check_capacity(cfg: DictConfig, have: int) -> None:
    """A resume may raise replay.capacity, never lower it below the rows the replay has."""
    if int(cfg.replay.capacity) < have:
        raise UserError(
            f"replay.capacity={cfg.replay.capacity} is below the {have:,} rows this run's "
            f"replay has room for (its files); on resume it can only be raised (or left as "
            f"it is)")


def make_replay(cfg: DictConfig, out: Path, spec: dict, capacity: int,
                payload: dict[str, Any] | None, resuming: bool,
                note: Callable[[str], None]) -> Replay:
    """The run's replay of `capacity` rows (`spec`: observation keys and "action"). On a resume
    whose files hold fewer rows they are grown first, and the checkpoint `payload`'s replay
    state is remapped to them (what the driver then loads)."""
    rc = cfg.replay
    kwargs: dict[str, Any] = {"tau": float(rc.tau)} if rc.sampler == "dfs" else {}
    directory = out / "replay" if rc.on_disk else None
    state = None if payload is None else payload["replay"]
    if state is not None and directory is not None and int(state["capacity"]) < capacity:
        try:
            payload["replay"] = grow(directory, spec, state, capacity)
        except ValueError as e:
            raise UserError(f"cannot grow the replay: {e}") from None
        note(f"the replay grew from {int(state['capacity']):,} to {capacity:,} rows "
             f"(run.steps {int(cfg.run.steps):,}); its rows are kept")
    try:
        return Replay(capacity, spec, directory=directory, sampler=rc.sampler,
                      seed=int(cfg.seed), resume=resuming and rc.on_disk,
                      streams=int(cfg.run.num_envs), **kwargs)
    except ValueError as e:
        if not resuming and directory is not None:
            shutil.rmtree(directory, ignore_errors=True)  # ours, and half-made
        raise UserError(str(e)) from None
