"""The driver's checkpoints: what one holds (the agent, the envs' episodes, the replay, the
counters, every random state), saving it, restoring a resume from it, and rolling the agent
back to it after a non-finite loss. `Trainer` takes these methods; the files are `saving.py`'s
and `checkpoint.py`'s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reverie.config import config_yaml
from reverie.errors import UserError
from reverie.rng import (
    generator_state,
    global_rng_state,
    set_generator_state,
    set_global_rng_state,
)
from reverie.run.agent import load_agent_state
from reverie.run.checkpoint import FORMAT


@dataclass
class Counters:
    env_steps: int = 0
    grad_steps: int = 0
    credit: float = 0.0
    episodes: int = 0
    eval_rounds: int = 0
    nan_rollbacks: int = 0
    next_checkpoint: int = 0
    # the newest checkpoint of the cadence (or of step 0, or the end): where a non-finite loss
    # rolls back to, also after a resume from a checkpoint a stop took between two of them
    rollback_step: int = 0
    agent_fresh: bool = True  # the agent has not acted yet (prefill is random)
    # the best evaluation so far (checkpoints/best.pt holds its agent; run.keep_best)
    best_return: float = float("-inf")
    best_step: int = -1

    def state(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Checkpointing:
    """The checkpoint half of `reverie.run.driver.Trainer` (which holds the state it saves)."""

    def _payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "agent_name": self.cfg.agent,
            "agent": self.agent.state_dict(),
            "act_state": self.act_state,
            "envs": self.envs.state_dict(),
            "replay": None if self.replay is None else self.replay.state_dict(),
            "counters": self.count.state(),
            "driver_rng": generator_state(self.rng),
            "rng": global_rng_state(),
            "env_id": self.cfg.env.id,
            # the resolved config, so a checkpoint copied out of its run still loads
            "config": config_yaml(self.cfg),
            # update metrics not yet logged: the next log row averages over them too
            "log_window": {k: torch.tensor(v, dtype=torch.float64)
                           for k, v in self._window.items()},
        }

    def checkpoint(self, rollback_target: bool = True) -> None:
        """Save everything at this env step; `rollback_target`: a checkpoint of the cadence
        (not one taken because the run was stopped), where a non-finite loss rolls back to."""
        if rollback_target:
            self.count.rollback_step = self.count.env_steps
        if self.replay is not None:
            self.replay.flush()
        self.logger.flush()
        self.saved.save(self._payload(), self.count.env_steps)
        self._saved_step = self.count.env_steps

    def _restore(self, payload: dict[str, Any], entry) -> None:
        load_agent_state(self.agent, payload, entry.file)
        self.act_state = payload["act_state"]
        for note in self.envs.load_state_dict(payload["envs"]):
            self._note(note)
        self.count = c = Counters(**payload["counters"])
        if "rollback_step" not in payload["counters"]:  # written before stops saved one
            c.rollback_step = c.env_steps
        # the checkpoint cadence goes on where it was (a checkpoint taken when a run was
        # stopped falls between two of its steps), unless a run.checkpoint_every lowered on
        # this resume brings the next one closer; checkpoints of earlier versions hold their
        # own step there
        every = int(self.cfg.run.checkpoint_every)
        c.next_checkpoint = (min(c.next_checkpoint, c.env_steps + every)
                             if c.next_checkpoint > c.env_steps else c.env_steps + every)
        self._window = {k: v.tolist() for k, v in payload["log_window"].items()}
        set_generator_state(self.rng, payload["driver_rng"])
        set_global_rng_state(payload["rng"])
        self.resumed_from = entry.step
        self._adopt_final_best()

    def _adopt_final_best(self) -> None:
        """best.pt can hold a better agent than the checkpoint's counters know of: a run's
        final evaluation comes after its final checkpoint (`train`), and a kill can come
        between an evaluation and the next checkpoint. Its return is the best so far on a
        resume, or a worse later agent would replace it (a rerun that evaluates the same
        agent again ties, and a tie keeps it)."""
        c, best = self.count, self.saved.best_saved()
        if best is not None and best["eval_return"] > c.best_return:
            c.best_return, c.best_step = best["eval_return"], best["step"]

    def _rollback(self, key: str, value: Any) -> None:
        """A non-finite loss: reload the agent from the last good checkpoint, or give up."""
        self.count.nan_rollbacks += 1
        step = self.count.env_steps
        msg = f"non-finite {key}={value} at env step {step}"
        if self.count.nan_rollbacks > int(self.cfg.run.max_nan_retries):
            raise UserError(
                f"training diverged: {msg} after {self.count.nan_rollbacks - 1} rollbacks; the "
                f"last good checkpoint is kept in {self.saved.folder}; lower the learning rates "
                "or raise the gradient clip"
            )
        payload, entry = self.saved.load_rollback(self.count.rollback_step)
        load_agent_state(self.agent, payload, entry.file, rollback=True)
        self._note(f"{msg}; rolled the agent back to checkpoint step {entry.step}")
        self.logger.metrics(step, {"nan/rollback": self.count.nan_rollbacks, "nan/key": key})
