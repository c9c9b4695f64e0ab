"""A run's checkpoints as the driver uses them: saves with `progress.json`, the checked load a
resume starts from, the best agent so far (run.keep_best), and the checkpoint a non-finite loss
rolls back to. What a checkpoint holds is the driver's to say (`run/checkpointing.py`); the files,
their manifest and their checks are `run/checkpoint.py`'s."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from reverie.config import config_yaml, load_run_config, replay_in_memory
from reverie.errors import UserError
from reverie.run import folder as run_folder
from reverie.run.checkpoint import (
    FORMAT,
    CheckpointError,
    CheckpointStore,
    Entry,
    atomic_write_bytes,
)


def resume_refused(cfg: DictConfig, uses_replay: bool, step: int, budget: int) -> bool:
    """Whether a resume from a checkpoint at env step `step` is refused: the run kept its
    replay in memory (replay.on_disk=false; an agent with a replay), which died with its
    process, and would train on (below `budget`). At the budget only the final evaluation and
    the end are left, which need no replay data; a checkpoint at step 0 holds none."""
    return replay_in_memory(cfg, uses_replay) and 0 < step < budget


class RunCheckpoints:
    """The checkpoints of the run in `out` (`cfg` is its resolved config)."""

    def __init__(self, out: Path, cfg: DictConfig, note: Callable[[str], None]) -> None:
        self.out, self.cfg, self._note = out, cfg, note
        self.store = CheckpointStore(out / "checkpoints", int(cfg.run.keep_checkpoints))

    def any_to_resume(self) -> bool:
        """Whether a resume has a checkpoint to start from. A folder killed during start-up,
        before its first checkpoint, has none and nothing to keep: it is cleared for a start
        from step 0 (False). A folder with logged rows or checkpoint files but no checkpoint
        that loads is an error, and nothing is changed."""
        if self.store.entries():
            return True
        if run_folder.has_history(self.out):
            notes = "; ".join(self.store.rebuild_notes) or "no checkpoint loads"
            raise UserError(
                f"cannot resume '{self.out}': it has logged rows or checkpoint files but no "
                f"checkpoint that loads ({notes}); nothing was changed — restore the "
                "checkpoints or start a new run in another folder (--out)"
            )
        self._note("no checkpoint yet; starting the run over from step 0")
        run_folder.clear_start(self.out)
        return False

    def save(self, payload: dict[str, Any], env_steps: int) -> None:
        """Save `payload` as the checkpoint of `env_steps`, then progress.json says so."""
        self.store.save(payload, env_steps)
        self.write_progress(env_steps)

    def write_progress(self, env_steps: int) -> None:
        """progress.json: the env steps of the newest checkpoint (folder.PROGRESS)."""
        atomic_write_bytes(self.out / run_folder.PROGRESS,
                           (json.dumps({"env_steps": int(env_steps)}) + "\n").encode())

    def latest_step(self) -> int:
        """The env step of the newest checkpoint (0 when there is none)."""
        entries = self.store.entries()
        return entries[-1].step if entries else 0

    def load_latest(self, uses_replay: bool) -> tuple[dict[str, Any], Entry]:
        """The newest verified checkpoint, checked against this run's config."""
        payload, entry, warnings = self.store.load_latest()
        for w in warnings:
            self._note(w)
        if payload.get("agent_name") != self.cfg.agent:
            raise UserError(
                f"checkpoint {entry.file} is from agent '{payload.get('agent_name')}' but the "
                f"run config says '{self.cfg.agent}'; resume with the matching config"
            )
        budget = max(int(self.cfg.run.steps), int(load_run_config(self.out).run.steps))
        if resume_refused(self.cfg, uses_replay, payload["counters"]["env_steps"], budget):
            raise UserError(
                "this run kept its replay in memory (replay.on_disk=false), so it cannot be "
                "resumed with its data to train on; start a new run in another folder (--out), "
                "with its replay on disk (the default)"
            )
        return payload, entry

    def load_rollback(self, at_most: int) -> tuple[dict[str, Any], Entry]:
        """The newest checkpoint at or before env step `at_most` (a roll-back's target)."""
        payload, entry, _ = self.store.load_latest(at_most=at_most)
        return payload, entry

    def save_best(self, agent: Any, env_steps: int, eval_return: float) -> None:
        """checkpoints/best.pt: what acting needs (an agent's optional `policy_state_dict`:
        mbpo leaves out its buffers), not the whole training state; `reverie eval/watch
        --best` load it."""
        state = getattr(agent, "policy_state_dict", agent.state_dict)()
        self.store.save_best({
            "format": FORMAT, "agent_name": self.cfg.agent, "agent": state,
            "env_id": self.cfg.env.id, "config": config_yaml(self.cfg),
            "best": {"step": env_steps, "eval_return": eval_return}})

    def best_saved(self) -> dict[str, Any] | None:
        """best.pt's step and return, or None (none yet, or unreadable: the next best
        evaluation writes it)."""
        try:
            return self.store.load_best()["best"]
        except CheckpointError:
            return None

    @property
    def folder(self) -> Path:
        return self.store.folder
