"""The training driver: act, store, train on the agent's cadence, log, evaluate, checkpoint.

Agent-agnostic. An agent (see `reverie.run.agent.Agent`) acts on a batch of `run.num_envs`
envs and trains in `update`; what it needs from the driver it says with optional members:
`uses_replay` (a sequence replay of the env stream, the default), `observe(transition)`
(every vector step, with truncation flags and final observations, e.g. for on-policy
rollouts), `updates_due(env_steps)` (its own update cadence; the default is
`run.train_ratio`), and `compile(compiler)` (run.compile=on|auto: compiled tensor functions,
`reverie.compiler`).

Exact resume. A checkpoint holds everything the future depends on (agent, optimisers, the
agent's acting state, replay counters and RNG, driver counters, global RNG states, and each
env's current episode as its seed and actions, see `run/collector.py`), so it can be taken
at any step, and a resumed run writes exactly the metrics the uninterrupted one would have;
Ctrl-C and SIGTERM stop the loop between two env steps and save one there (`run/stop.py`).
The replay's rows live in memory-mapped files that are flushed before each checkpoint; rows
written after it are simply overwritten again on resume.
"""

from __future__ import annotations

import math
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from reverie.config import (
    apply_resume_overrides,
    check_flags_agree,
    checked_config,
    listed_overrides,
    load_run_config,
    replay_in_memory,
    rows_per_sample,
    run_env_steps,
    run_title,
    save_config,
    to_object,
    training_notes,
)
from reverie.envs import make_obs_spec
from reverie.envs.actions import action_spec, random_actions
from reverie.envs.vector import env_maker
from reverie.errors import Stopped, UserError
from reverie.openmp import ThreadGovernor, governable
from reverie.replay import Replay
from reverie.rng import (
    numpy_generator,
    seed_everything,
)
from reverie.run import folder as run_folder
from reverie.run.agent import build_agent, compile_agent, num_params, select_device
from reverie.run.checkpointing import Checkpointing, Counters
from reverie.run.checks import check_spaces
from reverie.run.collector import Collector, EnvWorkerDied, Transition, env_of
from reverie.run.evaluation import evaluate
from reverie.run.logger import (
    END_EVAL,
    END_KEY,
    LOGS,
    METRICS,
    TAIL,
    TAIL_KEY,
    TIMING,
    RunLogger,
    end_episodes,
    final_evaluation_missing,
    finite_values,
    plot_curve,
    read_jsonl,
    read_rows,
    training_wall,
)
from reverie.run.machine import describe as describe_machine
from reverie.run.machine import threads_note
from reverie.run.progress import Progress
from reverie.run.replay_setup import make_replay, replay_rows
from reverie.run.saving import RunCheckpoints, resume_refused
from reverie.run.stop import StopOnSignal


class NonFiniteLoss(Exception):
    """An update produced a non-finite metric."""


def resume_config(out: str | Path, steps: int | None = None,
                  overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The saved config of the run in `out` with a resume's --steps and --sets applied."""
    out = Path(out)
    if not (out / "config.yaml").exists():
        raise UserError(f"cannot resume '{out}': no run there (missing config.yaml)")
    run_folder.check_no_links(out)
    overrides = listed_overrides(overrides)
    if steps is not None:  # `--steps 1500 --set run.steps=1600`: which one was meant?
        check_flags_agree({"steps": steps}, overrides, "", None)
    items = [*overrides, *([f"run.steps={steps}"] if steps is not None else [])]
    return apply_resume_overrides(load_run_config(out), items)


PLOT_EVERY_S = 60.0  # curve.png at a checkpoint at most this often (a redraw reads all logs)


def _let_go(envs: Collector | None, lock, threads_before: int | None) -> None:
    """What a Trainer holds, given back: its envs closed, its run folder's lock, and the
    caller's torch thread count (a later run with run.threads=0, all cores, or the caller's
    own torch must not inherit the run's)."""
    if envs is not None:
        envs.close()
    if lock is not None:
        lock.close()
    if threads_before is not None:
        torch.set_num_threads(threads_before)


class Trainer(Checkpointing):
    """One run folder: `Trainer(cfg, out).train()`, or `Trainer.resume(out).train()`."""

    show_progress = True  # False: this process shows none, whatever run.progress says
    _governor: ThreadGovernor | None = None  # run.share_cores, while train() runs
    _shared_noted = False  # run.share_cores said it lowered the threads

    @classmethod
    def resume(cls, out: str | Path, steps: int | None = None,
               overrides: list[str] | tuple[str, ...] = ()) -> Trainer:
        """The Trainer that continues the run in `out` (`reverie train --resume`): `steps`
        raises its budget (an extension), `overrides` are `--set`s of RESUME_KEYS.

        Building it reads the run and loads its checkpoint; in the folder it takes the lock
        (given up by `release()`) and clears only what a start killed before its first
        checkpoint left. `train()` commits the resume: the logs are cut back to the
        checkpoint it continues from, the replay grows to a raised budget, and config.yaml
        records that budget."""
        return cls(resume_config(out, steps, overrides), Path(out), resume=True)

    def __init__(self, cfg: DictConfig, out: Path, resume: bool = False) -> None:
        cfg = checked_config(cfg)  # edited after build_config: checked as the CLI checks it
        self.cfg = cfg
        self.out = Path(out)
        self.resuming = resume
        self._lock = None
        self._threads_before: int | None = None
        self._finished = False
        self.envs: Collector | None = None
        # a folder never run here (an archive): a failed resume leaves it without a lock file
        self._stray_lock = resume and not (self.out / ".lock").exists()
        self._dropped: weakref.finalize | None = None
        try:
            self._set_up(cfg, resume)
        except BaseException:
            self._failed_start()
            raise
        # a Trainer dropped without train() or release() (a notebook's `t = Trainer(...)`
        # run again) gives the folder and the thread count back when it is collected
        self._dropped = weakref.finalize(self, _let_go, self.envs, self._lock,
                                         self._threads_before)

    def _failed_start(self) -> None:
        """A failed start or resume frees the folder now, not at exit, and leaves an archive's
        folder as it was."""
        if self._stray_lock and self._lock is not None:
            (self.out / ".lock").unlink(missing_ok=True)
        self.release()

    def _set_up(self, cfg: DictConfig, resume: bool) -> None:
        self._new_folder = not resume  # a started-over run keeps its (checked) folder
        if resume:  # checked before touching any file; the lock comes before any write
            run_folder.check_no_links(self.out)
            for name in LOGS:
                read_rows(self.out / name)  # a damaged log is an error now, not a lost tail
            self._lock = run_folder.lock(self.out)
        else:
            run_folder.check_new(self.out)  # read-only: nothing is created before env + agent
        self._threads_before = torch.get_num_threads()  # the caller's, back at release()
        if cfg.run.threads:
            torch.set_num_threads(int(cfg.run.threads))
            if (note := threads_note(int(cfg.run.threads))) is not None:
                self._note(note)
        seed_everything(int(cfg.seed))
        self.device = select_device(cfg.run.device)
        self.num_envs = int(cfg.run.num_envs)
        self.envs = Collector(env_maker(cfg), self.num_envs, int(cfg.seed), cfg.env.id,
                              life_loss_terminal=bool(cfg.env.life_loss_terminal),
                              vector=str(cfg.run.vector))
        self.obs_spec = make_obs_spec(self.envs.observation_space)
        self.action_space = self.envs.action_space
        check_spaces(cfg, self.obs_spec, self.action_space)
        self.agent = build_agent(cfg, self.obs_spec, self.action_space, self.device)
        if cfg.run.compile != "off":
            compile_agent(self.agent, cfg.agent, self._note, cfg.run.compile)
        if hasattr(self.agent, "note"):  # an agent that tells the user what it is doing
            self.agent.note = self._note
        self.uses_replay = bool(getattr(self.agent, "uses_replay", True))
        acfg = cfg[cfg.agent]
        self.replayed_per_update = int(acfg.get("batch_size", 1)) * int(acfg.get("seq_len", 1))
        self.min_rows = rows_per_sample(cfg)
        self.saved = RunCheckpoints(self.out, cfg, self._note)
        if resume and not self.saved.any_to_resume():
            self.resuming = resume = False
        resume_from = self.saved.load_latest(self.uses_replay) if resume else None
        payload = resume_from[0] if resume_from is not None and self.uses_replay else None
        # a replay kept in memory is gone: a resume at the budget (load_latest refused the
        # rest) starts an empty one, and its tail row says the size the checkpoint recorded
        self._lost_replay_size: int | None = None
        if payload is not None and replay_in_memory(cfg, self.uses_replay) \
                and payload["counters"]["env_steps"] > 0:
            self._lost_replay_size = int(np.sum(payload["replay"]["size"]))
            payload = None
        self.replay_rows = replay_rows(cfg, self.out, None if payload is None
                                       else payload["replay"], self._note)
        self._prepare_folder()  # only once env and agent are known to work: no stray runs
        self.replay: Replay | None = None  # made by train() (`_open`), as is the logger
        self.logger: RunLogger | None = None
        # what `_open` needs of the checkpoint (not its agent state, loaded by now)
        self._resume_replay = None if payload is None else {"replay": payload["replay"]}
        self.rng = numpy_generator(int(cfg.seed) + 1)  # prefill actions
        self.count = Counters(next_checkpoint=int(cfg.run.checkpoint_every))
        self.resumed_from: int | None = None
        self._saved_step: int | None = None  # the env step this process last saved
        self._timed_step: int | None = None  # ... and last wrote a timing row at
        self._evaluated_step: int | None = None  # ... and last evaluated at
        self._window: dict[str, list[float]] = {}  # update metrics since the last log row
        self.act_state = self.agent.initial_state(self.num_envs)
        if resume_from is not None:
            self._restore(*resume_from)  # in memory: the replay's state is loaded by `_open`
        # the summary ends with the run's last episodes, those before a resume included (a
        # resume of a finished run said "last_returns": []): the rows up to the checkpoint
        kept = [] if resume_from is None else [
            row for _, row in read_rows(self.out / METRICS) if row["step"] <= self.resumed_from]
        self._returns: list[float] = [float(row["episode/return"]) for row in kept
                                      if "episode/return" in row][-5:]
        # whether a counters row (grad_steps) is on record: a run that would end without one
        # (shorter than run.log_every, no update) writes its tail row anyway, so that a report
        # can tell that it never updated
        self._counted = any("grad_steps" in row and row.get(TAIL_KEY) != TAIL for row in kept)
        # the training wall time of the processes before this one (TensorBoard's
        # time/run_wall goes on from it instead of restarting at 0 like time/wall)
        self._wall_before = 0.0 if resume_from is None else self._wall_so_far()

    def _open(self) -> None:
        """What a run writes before its first step, done by train() (not at construction,
        so that a Trainer built and never trained leaves a resumed run as it was): the
        replay (on a resume grown to a raised budget, its checkpoint state loaded), config.yaml,
        the logs (cut back to the checkpoint a resume continues from)."""
        cfg, payload = self.cfg, self._resume_replay
        if self.uses_replay:
            spec = {**self.obs_spec, "action": action_spec(self.action_space)}
            self.replay = make_replay(cfg, self.out, spec, self.replay_rows, payload,
                                      self.resuming, self._note)
            if payload is not None:
                try:
                    self.replay.load_state_dict(payload["replay"])
                except ValueError as e:
                    raise UserError(f"cannot resume the replay: {e}") from None
        # config after the replay: a folder without config.yaml is not a run, so a failed
        # start leaves nothing that blocks the next attempt; on resume it records a raised
        # run.steps, but --steps at or below the steps already done trains nothing and leaves
        # the config (and so the budget a report reads) as it was
        resumed = self.resumed_from  # the checkpoint's env step (None: a new run)
        if resumed is None or int(cfg.run.steps) > resumed:
            if resumed is not None and \
                    int(cfg.run.steps) < (budget := int(load_run_config(self.out).run.steps)):
                self._note(f"run.steps lowered from {budget} to {cfg.run.steps}: --steps is "
                           "the run's budget (its total env steps), not steps to add")
            save_config(cfg, self.out / "config.yaml")
        if resumed is not None:  # the checkpoint resumed from may be older than the file
            self.saved.write_progress(self.count.env_steps)
        if resumed is None or self.count.env_steps < int(cfg.run.steps):
            self._open_logs()  # (a complete run's resume opens them only to evaluate)
        self._resume_replay = None  # the replay's arrays, loaded now

    def _finish_end(self, budget: int, rows: list[dict[str, Any]]) -> None:
        """What a run at its budget stopped or killed after its final checkpoint did not
        write (metrics.jsonl's `rows` say): its final evaluation, then its tail row, in an
        uninterrupted run's order."""
        c = self.count
        evaluate = self._final_evaluation_missing(budget, rows)
        logged = any(row["step"] == c.env_steps and row.get(TAIL_KEY) == TAIL for row in rows)
        # its tail row goes after the evaluation: one that a stop wrote before it (a folder
        # of an earlier reverie) is dropped (extends) and written again after it
        tail = (bool(self._window) or not self._counted) and (evaluate or not logged)
        if not (evaluate or tail):
            return
        self.logger = RunLogger(self.out, resume_step=self.resumed_from,
                                extends=evaluate and logged)
        self.run = to_object(self.cfg, "run")  # what `_log` and `evaluate` read
        if evaluate:
            self._note(f"the run trained to its end ({c.env_steps} env steps); evaluating its "
                       "final agent, which the run did not evaluate")
            # with this resume's evaluation settings, which config.yaml must then say (a
            # report reads them); its budget stays the run's own, a lower --steps aside
            kept = self.cfg.copy()
            kept.run.steps = budget
            save_config(kept, self.out / "config.yaml")
            self.progress = Progress(int(self.cfg.run.steps), c.env_steps, enabled=False)
            self._evaluate_and_log(end=True)
        if tail:
            self._log(0.0, c.env_steps, tail=True)
        self.logger.close()

    def _open_logs(self) -> None:
        """The run's logs, cut back to the checkpoint a resume continues from (TensorBoard's
        writer adds an events file: a resume of a complete run that has nothing to do opens
        none)."""
        self.logger = RunLogger(self.out, resume_step=self.resumed_from,
                                extends=self.count.env_steps < int(self.cfg.run.steps))

    def _wall_so_far(self) -> float:
        """The run's training wall time before this process: its last timing row's
        time/run_wall, or the sum of the segments of a log written before that key; rows up
        to the checkpoint resumed from (those after it are cut by `_open`)."""
        rows = [row for _, row in read_rows(self.out / TIMING) if row["step"] <= self.resumed_from]
        if rows and isinstance(rows[-1].get("time/run_wall"), (int, float)):
            return float(rows[-1]["time/run_wall"])
        return training_wall(rows)[0] or 0.0

    # -- set-up ----------------------------------------------------------------------------
    def _prepare_folder(self) -> None:
        if self._new_folder:
            run_folder.create(self.out)
        if self._lock is None:
            self._lock = run_folder.lock(self.out)

    def _evaluate_and_log(self, end: bool = False) -> None:
        """Evaluate now: log eval/return, show it, keep the agent if it is the best so far.
        `end`: the final agent's evaluation off the run.eval_every cadence, marked so in its
        row ("eval": "end"): an extension of the run trains past it, and scores and curves
        then leave it out (`logger.scored_evaluations`), as a run trained to the longer budget
        at once never made it."""
        c, ret = self.count, self.evaluate()
        c.eval_rounds += 1  # the next evaluation plays other episodes
        self.logger.metrics(c.env_steps, {"eval/return": float(np.mean(ret)),
                                          "eval/return_std": float(np.std(ret)),
                                          **({END_KEY: END_EVAL} if end else {})})
        self.progress.evaluation(float(np.mean(ret)))
        self._keep_if_best(float(np.mean(ret)))
        self._evaluated_step = c.env_steps

    def _keep_if_best(self, eval_return: float) -> None:
        """An evaluation above every earlier one (strictly: a tie keeps the earlier agent)
        replaces checkpoints/best.pt with this agent (run.keep_best)."""
        c = self.count
        if not self.run.keep_best or not eval_return > c.best_return:
            return
        c.best_return, c.best_step = eval_return, c.env_steps
        self.saved.save_best(self.agent, c.env_steps, eval_return)

    def _final_evaluation_missing(self, budget: int,
                                  rows: list[dict[str, Any]] | None = None) -> bool:
        """Whether the run evaluates (run.eval_episodes), has reached `budget` (its run.steps)
        and metrics.jsonl (its `rows`, if read already) has no evaluation at its last env
        step (`final_evaluation_missing`)."""
        if self._evaluated_step == self.count.env_steps:
            return False
        if rows is None:
            if self.logger is not None:
                self.logger.flush()
            rows = read_jsonl(self.out / METRICS)
        episodes = end_episodes(int(load_run_config(self.out).run.eval_episodes),
                                int(self.cfg.run.eval_episodes))
        return final_evaluation_missing(rows, self.count.env_steps, budget, episodes)

    # -- the loop ------------------------------------------------------------------------------
    def _note(self, text: str) -> None:
        if getattr(self, "progress", None) is not None:
            self.progress.note(text)
        else:
            print(f"reverie: {text}", file=sys.stderr, flush=True)

    def _update(self) -> None:
        metrics = self.agent.update(self.replay)
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not math.isfinite(v):
                raise NonFiniteLoss(k, v)
            self._window.setdefault(k, []).append(float(v))
        self.count.grad_steps += 1

    def _updates_due(self) -> int:
        """How many updates this vector step earns: the agent's own cadence, or the train
        ratio (replayed steps per env step) once prefill is done and a sample fits."""
        c = self.count
        due = getattr(self.agent, "updates_due", None)
        if due is not None:
            return int(due(c.env_steps))
        if c.env_steps < self.run.prefill or not self.replay.can_sample(self.min_rows):
            return 0
        c.credit += self.num_envs * self.run.train_ratio / self.replayed_per_update
        n = 0
        while c.credit >= 1.0:
            c.credit -= 1.0
            n += 1
        return n

    def _train(self) -> None:
        for _ in range(self._updates_due()):
            try:
                self._update()
            except NonFiniteLoss as e:
                self._rollback(*e.args)

    def _act(self, obs: dict[str, np.ndarray], first: np.ndarray) -> np.ndarray:
        c = self.count
        if c.env_steps < self.run.prefill:
            return random_actions(self.action_space, self.num_envs, self.rng)
        if c.agent_fresh:  # the first policy step after random prefill starts memory afresh
            first, c.agent_fresh = np.ones_like(first), False
        with torch.no_grad():
            action, self.act_state = self.agent.act(obs, first, self.act_state, True)
        return np.asarray(action)

    def _store(self, t: Transition) -> None:
        """Hand one vector step to the replay (env i's row to its stream i) and to the agent."""
        if self.replay is not None:
            for i in range(self.num_envs):
                self.replay.add({**{k: v[i] for k, v in t.obs.items()}, "action": t.action[i],
                                 "reward": float(t.reward[i]),
                                 "terminal": bool(t.terminated[i]),
                                 "truncated": bool(t.truncated[i]), "first": bool(t.first[i])},
                                stream=i)
        observe = getattr(self.agent, "observe", None)
        if observe is not None:
            observe(t)

    def _log(self, t0: float, steps0: int, tail: bool = False) -> None:
        """A metrics row: counters and the means of the update metrics since the last row
        (the last value of those the agent's `latest_metrics` prefixes name).
        tail: the run's last updates, off the run.log_every cadence, logged at its end; the
        row says `"window": "tail"`, and a resume that extends the run replaces it (the
        checkpoint keeps those updates' metrics for the next row, as if never stopped)."""
        c = self.count
        row: dict[str, Any] = {
            "env_steps": c.env_steps,
            "grad_steps": c.grad_steps,
            "episodes": c.episodes,
        }
        if self.replay is not None:
            # replayed steps per env step since training began (run.train_ratio's meaning;
            # over all env steps the random prefill would dilute it)
            trained = c.env_steps - min(int(self.run.prefill), c.env_steps)
            row["train_ratio"] = c.grad_steps * self.replayed_per_update / max(1, trained)
            row["replay_size"] = (len(self.replay) if self._lost_replay_size is None
                                  else self._lost_replay_size)
        # what an agent says is a state (a buffer's size, its last model fit's numbers) is
        # logged as it is at the row's step; per-update quantities as their mean
        latest = tuple(getattr(self.agent, "latest_metrics", ()))
        row.update({k: float(v[-1] if k.startswith(latest) else np.mean(v))
                    for k, v in self._window.items()})
        if tail:
            row[TAIL_KEY] = TAIL
        self._window = {}
        self._counted = True
        self.logger.metrics(c.env_steps, row)
        if not tail:  # the run's end has written its timing row already
            self._time(t0, steps0)

    def _time(self, t0: float, steps0: int) -> None:
        """A timing row: this process's wall time and env steps per second so far."""
        wall = time.time() - t0
        self.logger.timing(self.count.env_steps, {
            "time/wall": wall,
            "time/run_wall": self._wall_before + wall,  # over all of the run's processes
            "time/env_steps_per_s": (self.count.env_steps - steps0) / max(wall, 1e-9),
        })
        self._timed_step = self.count.env_steps

    def evaluate(self, episodes: int | None = None) -> list[float]:
        """Greedy-policy returns on fresh episodes with deterministic seeds (those of the
        run's next evaluation). The run's own evaluations go on as they would without this
        call: a run evaluated from outside logs what one never evaluated logs."""
        n = int(self.cfg.run.eval_episodes if episodes is None else episodes)
        if n < 0:
            raise UserError(f"episodes must be >= 0, got {n}")
        return evaluate(self.agent, lambda: env_of(self.cfg, evaluation=True), n,
                        seed=int(self.cfg.seed), round_=self.count.eval_rounds)

    def train(self) -> dict[str, Any]:
        """Train to run.steps -> the run's summary. However it ends (done, stopped, an error),
        the envs are closed and the run folder's lock is given up."""
        if self._finished:  # its logs are closed: a second train() would fail midway
            raise UserError(f"this Trainer has already trained {self.out}; continue the run "
                            "with Trainer.resume(out, steps=...).train()")
        if self._lock is None:  # released: another process may hold the folder by now
            raise UserError(f"this Trainer has released {self.out}; build a new one "
                            "(Trainer.resume(out) for a run that has started) to train it")
        try:
            self._open()
        except BaseException:
            self._finished = True
            self._failed_start()
            raise
        try:
            return self._run()
        finally:
            self._finished = True
            self.release()

    def _run(self) -> dict[str, Any]:
        cfg, c = self.cfg, self.count
        steps = int(cfg.run.steps)
        if self.resumed_from is not None and c.env_steps >= steps:
            budget = int(load_run_config(self.out).run.steps)
            # an extension needs the replay: one kept in memory is gone (resume_refused)
            lost = ("; its replay was kept in memory (replay.on_disk=false): it cannot be "
                    "extended" if self._lost_replay_size is not None else None)
            # what the run logged (no logger is open here), read once for the notes and the end
            rows = read_jsonl(self.out / METRICS) if c.env_steps >= budget else []
            if c.env_steps < budget:
                self._note(f"--steps {steps} is not above the {c.env_steps} env steps this run "
                           f"has trained: nothing to train (leave --steps out to train on to "
                           f"its budget of {budget})")
            elif steps != budget and steps < c.env_steps:
                self._note(f"--steps {steps} is below the {c.env_steps} env steps of this "
                           "complete run: nothing to train"
                           + (lost or f" (raise it above {c.env_steps} to extend the run)"))
            elif not self._final_evaluation_missing(budget, rows):  # else _finish_end says so
                self._note(f"run already complete at {c.env_steps} env steps"
                           + (lost or "; raise --steps (run.steps) to extend"))
            if c.env_steps >= budget:  # an earlier step's agent is not the run's final one
                self._finish_end(budget, rows)
            return self.summary()
        for note in training_notes(cfg):
            self._note(note)
        if replay_in_memory(cfg, self.uses_replay):
            self._note("note: replay.on_disk=false keeps the replay in memory: if this run is "
                       "stopped or crashes, it cannot be resumed to train on")
        # the total the counter reaches: with N envs stepping together that is run.steps
        # rounded up to whole vector steps (it read 312/310); the final evaluation's line
        # is the last one (the end's line before it showed the evaluation before)
        self.progress = Progress(run_env_steps(cfg.run), c.env_steps,
                                 enabled=bool(cfg.run.progress) and self.show_progress,
                                 final_eval=bool(cfg.run.eval_episodes))
        t0, steps0 = time.time(), c.env_steps
        self._plotted = time.monotonic()  # the first curve.png after PLOT_EVERY_S
        # plain values for the hot loop (an OmegaConf attribute read costs ~0.3 ms)
        run = self.run = to_object(cfg, "run")
        governor = self._governor = self._share_cores()
        if self.resumed_from is None:
            self.envs.start()
            self.checkpoint()  # step 0: the rollback target before any update
        # with the weights it trains: a backbone comparison at one width differs in size
        self.logger.machine(c.env_steps, {**describe_machine(self.device),
                                          "params": num_params(self.agent)})
        stop = StopOnSignal(lambda name: self._note(
            f"{name}: stopping with a checkpoint once this env step's updates (and evaluation, "
            "if one is running) end; "
            + ("press Ctrl-C again" if name == "SIGINT" else f"send {name} again")
            + " to stop at once, losing the steps since the last checkpoint"))
        try:
            with stop, self.progress:
                while c.env_steps < steps and not stop.requested:
                    before = c.env_steps
                    if governor is not None:
                        self._follow_cores(governor)
                    # a copy: agents may keep `first`, and the collector updates its own
                    action = self._act(self.envs.obs, self.envs.first.copy())
                    t, finished = self.envs.step(action)
                    self._store(t)
                    c.env_steps += self.num_envs
                    self._train()
                    # the episodes that ended in this step count in its rows (the log row at
                    # it said one episode fewer), and the progress line is at this step when an
                    # evaluation here shows (it showed the step before)
                    for ep_return, ep_len in finished:
                        c.episodes += 1
                        self._returns.append(ep_return)
                        self.logger.metrics(c.env_steps, {"episode/return": ep_return,
                                                          "episode/length": ep_len})
                        self.progress.episode(ep_return)
                    self.progress.update(c.env_steps, (c.env_steps - steps0)
                                         / max(time.time() - t0, 1e-9))
                    if c.env_steps // run.log_every > before // run.log_every:
                        self._log(t0, steps0)
                    if run.eval_episodes and (c.env_steps // run.eval_every
                                              > before // run.eval_every):
                        self._evaluate_and_log()
                    if c.env_steps >= c.next_checkpoint:
                        # moved on before saving: a resume from this checkpoint then keeps
                        # the cadence instead of saving again at its first step
                        c.next_checkpoint = c.env_steps + run.checkpoint_every
                        self.checkpoint()
                        if time.monotonic() - self._plotted >= PLOT_EVERY_S:
                            self._plot(cfg)  # curve.png as the run goes, not only at its end
                if (run.eval_episodes and stop.requested is None and c.env_steps >= steps
                        and self._evaluated_step != c.env_steps):
                    # the final agent is evaluated even off the run.eval_every cadence (else a
                    # run shorter than it never is); after the final checkpoint, so that an
                    # extension (--resume --steps) trains on exactly as if never stopped
                    if self._saved_step != c.env_steps:
                        self.checkpoint()
                    self._evaluate_and_log(end=True)
            stopped = stop.requested is not None and c.env_steps < steps
            # a stop in the budget's last env step skips the final evaluation: still a stop
            # (its exit code, not 0: a sweep then resumes the trial to run the evaluation)
            unevaluated = (stop.requested is not None and not stopped
                           and self._final_evaluation_missing(steps))
            if self._timed_step != c.env_steps:  # the time since the last log row counts too
                self._time(t0, steps0)
            if self._saved_step != c.env_steps:  # else the cadence has just saved this step
                self.checkpoint(rollback_target=not stopped)
            # after the checkpoint, which keeps the window; not before a missing final
            # evaluation (the resume writes both, in this order)
            if not (stopped or unevaluated) and (self._window or not self._counted):
                self._log(t0, steps0, tail=True)
            if stopped or unevaluated:
                self.logger.close()
                self._plot(cfg)
                what = ("before its final evaluation; run it with `reverie train --resume "
                        f"{self.out}`" if unevaluated else "with a checkpoint; "
                        + self._continue_with())
                raise Stopped(f"stopped by {stop.requested} at env step {c.env_steps} {what}",
                              stop.requested)
        except EnvWorkerDied as e:
            raise UserError(f"{e}; {self._continue_with(' (from the checkpoint at step ')}"
                            ) from None
        except KeyboardInterrupt:
            self.logger.close()
            raise Stopped(
                f"interrupted at env step {c.env_steps}; "
                + self._continue_with(" (from the checkpoint at step ",
                                      "; the steps after it are run again)"),
                "SIGINT") from None
        self.logger.close()
        self._plot(cfg)
        return self.summary()

    def _plot(self, cfg: DictConfig) -> None:
        """curve.png from the logs so far; a plotting failure (a full disk, a broken font
        cache) never ends a run."""
        self._plotted = time.monotonic()
        try:
            plot_curve(self.out, title=run_title(cfg))
        except (OSError, RuntimeError, ValueError) as e:
            self._note(f"curve.png not written ({type(e).__name__}: {e})")

    def _continue_with(self, since: str = "", after: str = ")") -> str:
        """'continue with `reverie train --resume OUT`' + `since` + the newest checkpoint's
        step + `after` (if since), or, where that resume would be refused (a replay kept in
        memory with training left, `resume_refused`), why the run cannot go on."""
        step = self.saved.latest_step()
        if resume_refused(self.cfg, self.uses_replay, step, int(self.cfg.run.steps)):
            return ("the run cannot be continued: its replay was kept in memory "
                    "(replay.on_disk=false); its checkpoint is for `reverie eval` and `watch`")
        return (f"continue with `reverie train --resume {self.out}`"
                + (f"{since}{step}{after}" if since else ""))

    def _share_cores(self) -> ThreadGovernor | None:
        """run.share_cores: a started ThreadGovernor over this run's torch threads; None where
        it is off or there is nothing to lower (one thread), or, said once, where this
        machine cannot show what else runs."""
        wanted = torch.get_num_threads()
        if not self.run.share_cores or wanted < 2:
            return None
        if governable() and (governor := ThreadGovernor(wanted)).start():
            return governor
        self._note(f"note: run.share_cores: this machine does not show what else runs on its "
                   f"cores (/proc), or this process may use only some of them: {wanted} torch "
                   "threads throughout")
        return None

    def _follow_cores(self, governor: ThreadGovernor) -> None:
        """torch's threads set to what the cores other processes leave free allow; the first
        time they are lowered, said once."""
        threads = governor.apply()
        if threads is not None and threads < governor.wanted and not self._shared_noted:
            self._shared_noted = True
            self._note(f"note: run.share_cores: other processes are using the cores: "
                       f"{threads} torch thread{'s' if threads > 1 else ''} instead of "
                       f"{governor.wanted} while they do")

    def release(self) -> None:
        """Close the envs and give up the run folder's lock (the process may resume the run
        again later); a Trainer dropped without it does this when it is collected."""
        if self._governor is not None:
            self._governor.stop()
            self._governor = None
        _let_go(self.envs, self._lock, self._threads_before)
        self._lock = self._threads_before = None
        if self._dropped is not None:
            self._dropped.detach()

    def summary(self) -> dict[str, Any]:
        c = self.count
        best = (c.best_return, c.best_step) if c.best_step >= 0 else self._best_logged()
        return {"run": str(self.out), "env_steps": c.env_steps, "grad_steps": c.grad_steps,
                "episodes": c.episodes,
                "last_returns": [round(r, 2) + 0.0 for r in self._returns[-5:]],  # no -0.0
                **({"best_eval_return": round(best[0], 2) + 0.0, "best_eval_step": best[1]}
                   if best is not None else {})}

    def _best_logged(self) -> tuple[float, int] | None:
        """(return, step) of the best evaluation in metrics.jsonl for a run without
        run.keep_best (which tracks it with best.pt's agent): the earliest of equal returns,
        as best.pt would keep; None without a finite one, or with keep_best on (best.pt's
        own, or none yet: a resume that turned it on tracks from there)."""
        if bool(self.cfg.run.keep_best):
            return None
        evals = finite_values(read_jsonl(self.out / METRICS), "eval/return")
        if not evals:
            return None
        top = max(value for _, value in evals)
        return top, next(step for step, value in evals if value == top)
