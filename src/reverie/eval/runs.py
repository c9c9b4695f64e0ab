"""Run folders as a report reads them: config, learning curve, final score and timing.

A folder that cannot be scored (empty, killed before it logged, written by another version,
of an agent this reverie does not know, damaged logs) is skipped with a one-line reason;
`load_runs` raises a UserError only when nothing usable is left.

A run trained outside reverie (a baseline of another library, evaluated on reverie's env) is
a folder holding `external.json`: {"agent": its name (e.g. "sb3-ppo"; not one of reverie's
agents), "env": reverie's env id, "seed": int, "steps": the run's env-step budget,
"evals": [[env step, mean evaluation return], ...], optional "wall_s"}. Reports score, group
and plot it as they do reverie's runs with evaluations; `--group-by agent` sets it apart.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from reverie.errors import UserError
from reverie.eval.mmer import mmer, mmer_curve, window_means
from reverie.eval.scores import ScoreKind, atari_game, human_normalized, score_kind
from reverie.run.folder import CONFIG, MARKER, PROGRESS, manifest_newest
from reverie.run.logger import (
    MACHINE,
    METRICS,
    TIMING,
    final_evaluation_missing,
    finite_values,
    read_jsonl,
    scored_evaluations,
    training_wall,
)

EXTERNAL = "external.json"  # a run of another library (module docstring)
FINAL_FRACTION = 0.1  # without evaluations: the training episodes of the last 10% of steps
CURVE_POINTS = 20  # without evaluations, training-episode curves average steps/20 windows
# what a run is scored from: evaluations where it has them, else training episodes ("auto");
# evaluations only; training episodes only (POPGym's MMER comes from training episodes)
RETURNS = ("auto", "eval", "train")


@dataclass
class Run:
    """One scored run folder. Curves are (env step, score) in the task's score unit."""

    path: Path
    cfg: DictConfig
    env: str
    seed: int
    env_steps: int  # steps the run reached (its last logged step; external: `read_external`)
    target_steps: int  # run.steps
    final_raw: float  # the run's final return (see `final_return`)
    score: float  # final score in `kind`'s unit
    kind: ScoreKind
    curve: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float | None = None
    steps_per_s: float | None = None
    source: str = "eval"  # "eval" (evaluation rows) or "train" (training episodes)
    machines: tuple[str, ...] = ()  # what its processes trained on (`run/machine.py` labels)
    grad_steps: int | None = None  # updates it made (metrics rows); None where not logged
    params: int | None = None  # the agent's parameter count (machine.jsonl), if recorded
    # a run at its budget that was stopped before its final evaluation: the step of the
    # evaluation it is scored from instead (None: scored at its end, or not from evaluations)
    scored_before_end: int | None = None

    def setting(self, key: str) -> str:
        """The run's value of a grouping key: 'agent', 'backbone' or any dotted config key."""
        from reverie.config import AGENTS, agent_parts

        agent = self.cfg.agent
        ours = agent in AGENTS  # else an external run: its backbone and replay are unknown
        if key == "backbone":
            path = AGENTS[agent][3] if ours else None
            return str(OmegaConf.select(self.cfg, f"{agent}.{path}")) if path else "-"
        if key.startswith("replay.") and not (
                ours and getattr(agent_parts(agent)[1], "uses_replay", True)):
            return "-"  # an agent that keeps no sequence replay: the setting is unused
        value = OmegaConf.select(self.cfg, key, default="?")
        # a float setting holding a whole number reads as one (train_ratio=128, not 128.0)
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def checkpoint_step(folder: Path) -> int:
    """The env steps of the run's newest checkpoint as `progress.json` records them (0 if it
    is missing or unreadable)."""
    try:
        return int(json.loads((folder / PROGRESS).read_text())["env_steps"])
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return 0


def read_run(folder: Path, returns: str = "auto") -> Run:
    """Score one run folder from `returns` (one of RETURNS); raises UserError with the reason
    it cannot be scored."""
    from reverie.config import load_run_config
    from reverie.run.checkpoint import FORMAT

    _check_returns(returns)
    folder = Path(folder)
    if not (folder / CONFIG).exists() and (folder / EXTERNAL).exists():
        if returns == "train":
            raise UserError(f"{EXTERNAL} holds evaluations only, not the training episodes "
                            "that --returns train scores")
        return read_external(folder)
    if not (folder / CONFIG).exists():
        if not folder.is_dir() or not any(folder.iterdir()):
            raise UserError("empty folder")
        raise UserError("no config.yaml (a run that died while starting, or not a run)")
    fmt, checkpointed = manifest_newest(folder)
    if fmt is not None and fmt != FORMAT:
        raise UserError(f"written by another reverie version (checkpoint format {fmt!r}, "
                        f"this one reads {FORMAT})")
    cfg = load_run_config(folder)  # unknown agent / key / value: a UserError naming it
    rows = read_jsonl(folder / METRICS)
    timing = read_jsonl(folder / TIMING)
    env = str(cfg.env.id)
    kind = score_kind(env)
    steps = int(cfg.run.steps)
    last = max([int(r["step"]) for r in rows + timing]
               + [checkpointed or 0, checkpoint_step(folder)])
    # not the end evaluation of a shorter budget the run was extended from (an extra curve
    # point, a raised MMER)
    logged_evals, logged_episodes = (finite_values(scored_evaluations(rows, last), "eval/return"),
                                     finite_values(rows, "episode/return"))
    evals = [] if returns == "train" else logged_evals
    episodes = [] if returns == "eval" else logged_episodes
    if evals:
        raw_curve, source = evals, "eval"
    elif episodes:
        raw_curve, source = window_means(episodes, train_window(cfg)), "train"
    elif returns == "eval":
        other = " (--returns train scores its training episodes)" if logged_episodes else ""
        raise UserError(f"no evaluation logged (run.eval_every){other}")
    elif returns == "train":
        other = " (--returns eval scores its evaluations)" if logged_evals else ""
        raise UserError(f"no training episode logged (episode/return){other}")
    else:
        raise UserError("no returns logged yet (no finished episode or evaluation)")
    final_raw = final_return(evals, episodes, last)
    curve, score = _in_score_units(kind, env, raw_curve, final_raw)
    early = (max(s for s, _ in evals) if evals and final_evaluation_missing(
        rows, last, steps, int(cfg.run.eval_episodes)) else None)
    wall, rate = training_wall(timing)
    machine_rows = _machine_rows(folder)  # read once: machines and the agent's size
    return Run(path=folder, cfg=cfg, env=env, seed=int(cfg.seed), env_steps=last,
               target_steps=steps, final_raw=final_raw, score=float(score), kind=kind,
               curve=curve, wall_s=wall, steps_per_s=rate, source=source,
               machines=_machines(machine_rows), params=_params(machine_rows),
               grad_steps=_grad_steps(rows, cfg, last), scored_before_end=early)


def _grad_steps(rows: list[dict], cfg: DictConfig, last: int) -> int | None:
    """Updates the run made, from its metrics rows; 0 for a run that ended within its random
    prefill (it logs no update row at all); None where not logged."""
    logged = max((int(r["grad_steps"]) for r in rows if isinstance(r.get("grad_steps"), int)),
                 default=None)
    if logged is None and last <= int(cfg.run.get("prefill", 0)):
        return 0
    return logged


def _machine_rows(folder: Path) -> list[dict]:
    """The run's machine.jsonl rows; [] where none were recorded (runs from before reverie
    recorded them) or the file is damaged (it only informs)."""
    try:
        return read_jsonl(folder / MACHINE)
    except UserError:
        return []


def _machines(rows: list[dict]) -> tuple[str, ...]:
    """The distinct machines a run trained on, in order, from its machine rows."""
    from reverie.run.machine import label

    return tuple(dict.fromkeys(label(r) for r in rows))


def _params(rows: list[dict]) -> int | None:
    """The agent's parameter count its last process recorded, or None."""
    counts = [r["params"] for r in rows if isinstance(r.get("params"), int)]
    return counts[-1] if counts else None


def _in_score_units(kind: ScoreKind, env: str, raw_curve: list[tuple[int, float]],
                    final_raw: float) -> tuple[list[tuple[int, float]], float]:
    """(curve, final score) in `kind`'s unit from raw returns."""
    if kind.name == "HNS":
        game = atari_game(env)
        return ([(s, human_normalized(v, game)) for s, v in raw_curve],
                human_normalized(final_raw, game))
    if kind.name == "MMER":
        return mmer_curve(raw_curve), mmer(raw_curve)  # the running max: MMER at each step
    return list(raw_curve), final_raw


def read_external(folder: Path) -> Run:
    """Score a run of another library from its `external.json` (module docstring)."""
    from reverie.config import AGENTS

    try:
        data = json.loads((folder / EXTERNAL).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"unreadable {EXTERNAL} ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{EXTERNAL} must hold one JSON object")
    missing = [k for k in ("agent", "env", "seed", "steps", "evals") if k not in data]
    if missing:
        raise UserError(f"{EXTERNAL} lacks {', '.join(missing)}")
    agent, env = data["agent"], data["env"]
    if not isinstance(agent, str) or not agent or not isinstance(env, str) or not env:
        raise UserError(f"{EXTERNAL}: agent and env must be non-empty strings")
    if agent in AGENTS:
        raise UserError(f"{EXTERNAL} names reverie's own agent '{agent}'; name the other "
                        "library's agent (e.g. sb3-ppo)")
    seed, steps = data["seed"], data["steps"]
    if (not isinstance(seed, int) or isinstance(seed, bool) or not isinstance(steps, int)
            or isinstance(steps, bool) or steps < 1):
        raise UserError(f"{EXTERNAL}: seed must be an integer and steps a positive integer")
    evals = data["evals"]
    def number(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    ok = isinstance(evals, list) and evals and all(
        isinstance(e, list) and len(e) == 2 and number(e[0]) and float(e[0]).is_integer()
        and e[0] >= 0 and number(e[1]) for e in evals)
    if not ok:
        raise UserError(f"{EXTERNAL}: evals must be a non-empty list of [env step, finite "
                        "mean return] pairs")
    wall = data.get("wall_s")
    wall = float(wall) if number(wall) and wall > 0 else None
    raw_curve = sorted((int(s), float(v)) for s, v in evals)
    last = raw_curve[-1][0]
    # a budget that is no multiple of the evaluation interval ends between evaluations (10,000
    # steps evaluated every 3,000: the last at 9,000): a run whose next evaluation would have
    # fallen past its budget trained to it (the interval: the spacing of its last two
    # evaluations; a run with one is finished only at its budget)
    before = [s for s, _ in raw_curve if s < last]
    reached = max(last, steps) if before and last + (last - before[-1]) > steps else last
    kind = score_kind(env)
    final_raw = final_return(raw_curve, [], last)
    curve, score = _in_score_units(kind, env, raw_curve, final_raw)
    cfg = OmegaConf.create({"agent": agent, "env": {"id": env}, "seed": seed,
                            "run": {"steps": steps}})
    return Run(path=folder, cfg=cfg, env=env, seed=seed, env_steps=reached, target_steps=steps,
               final_raw=final_raw, score=float(score), kind=kind, curve=curve, wall_s=wall,
               steps_per_s=reached / wall if wall else None, source="eval")


def final_return(evals: list[tuple[int, float]], episodes: list[tuple[int, float]],
                 last_step: int) -> float:
    """The last evaluation's mean return (the Atari100k protocol's score); without
    evaluations, the mean return of the training episodes that ended in the last 10% of the
    run's steps (at least the last episode)."""
    if evals:
        return max(evals, key=lambda p: p[0])[1]
    start = last_step * (1.0 - FINAL_FRACTION)
    tail = [v for s, v in episodes if s >= start] or [episodes[-1][1]]
    return float(np.mean(tail))


def find_run_folders(path: Path) -> list[Path]:
    """`path` itself if it is a run folder, else every run folder and empty folder below it
    (links not followed; run folders are not searched inside)."""
    path = Path(path)
    if is_run_folder(path) or not path.is_dir():
        return [path]
    found = []
    for root, dirs, _files in os.walk(path, followlinks=False):
        here = Path(root)
        if here != path and (is_run_folder(here) or not (dirs or _files)):
            found.append(here)  # a run, or an empty folder (reported as skipped)
            dirs[:] = []
            continue
        dirs.sort()
    return found


def train_window(cfg: DictConfig) -> int:
    """Env steps per point of a training-episode curve: the run's evaluation interval (so
    both curves of a run have the same points; for POPGym, a report of RLlib's kind every
    16,384 steps in the popgym-ppo preset), or run.steps/20 for a run without evaluations
    (run.eval_episodes=0)."""
    if int(cfg.run.eval_episodes) > 0:
        return int(cfg.run.eval_every)
    return max(1, int(cfg.run.steps) // CURVE_POINTS)


def _check_returns(returns: str) -> None:
    if returns not in RETURNS:
        raise UserError(f"returns must be one of {', '.join(RETURNS)}, got '{returns}'")


def is_run_folder(folder: Path) -> bool:
    return any((folder / name).exists() for name in (CONFIG, MARKER, METRICS, EXTERNAL))


def load_runs(paths: list[str | Path], finished_only: bool = False,
              returns: str = "auto") -> tuple[list[Run], list[str]]:
    """(scored runs, one warning line per folder skipped). UserError if no run is usable.
    finished_only: skip runs that have not reached their `run.steps` (still training);
    returns: what each run is scored from (RETURNS)."""
    _check_returns(returns)
    runs, warnings = [], []
    seen: set[Path] = set()  # a run named twice (`report s1 ./s1`, a folder and its parent)
    for p in paths:
        p = Path(p)
        if not p.exists():
            warnings.append(f"skipped {p}: no such file or folder")
            continue
        if not p.is_dir():
            warnings.append(f"skipped {p}: a file, not a run folder")
            continue
        if not is_run_folder(p) and not any(p.iterdir()):
            warnings.append(f"skipped {p}: empty folder")
            continue
        folders = find_run_folders(p)
        if not folders:
            links = any(c.is_symlink() for c in p.rglob("*"))
            warnings.append(f"skipped {p}: no run folders inside" + (
                " (links are not followed: name a linked run folder itself)" if links else ""))
        for folder in folders:
            if folder.resolve() in seen:  # counted once: a copy of a seed narrows the CIs
                continue
            seen.add(folder.resolve())
            try:
                run = read_run(folder, returns)
            except UserError as e:
                warnings.append(f"skipped {folder}: {e}")
                continue
            if finished_only and run.env_steps < run.target_steps:
                warnings.append(f"skipped {folder}: unfinished ({run.env_steps:,} of "
                                f"{run.target_steps:,} env steps)")
                continue
            runs.append(run)
    if not runs:
        detail = f" ({warnings[0]})" if len(warnings) == 1 else \
            f" ({len(warnings)} folders skipped, first: {warnings[0]})" if warnings else ""
        unfinished = [w for w in warnings if ": unfinished (" in w]
        fix = ("drop --finished-only to report runs still training" if warnings and
               len(unfinished) == len(warnings) else
               "point at run folders written by `reverie train` or a folder holding them"
               if returns == "auto" else f"choose another --returns than {returns}, or point "
               "at run folders that log what it scores")
        raise UserError(f"no usable run to report{detail}; {fix}")
    return runs, warnings
