"""A sweep's trials: envs x grid values x seeds, each an ordinary `reverie train` run folder.

Every trial's config is built (and so validated, with the same did-you-mean errors as
`--set`) before anything is launched; a folder that already holds a trial must hold the
same config, so re-running a sweep resumes it and never mixes two sweeps in one folder.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from reverie.config import (
    NO_RESULT_KEYS,
    RESUME_KEYS,
    build_config,
    is_preset_file,
    load_run_config,
    replay_in_memory,
    training_notes,
    uses_replay,
)
from reverie.errors import UserError


@dataclass(frozen=True)
class Trial:
    """One run of the sweep: how to start it and where it lives (plain data, picklable)."""

    name: str
    folder: str
    preset: str | None
    env: str | None
    seed: int
    steps: int  # the run's env-step budget (run.steps)
    overrides: tuple[str, ...] = field(default_factory=tuple)  # --set items, grid included
    # settings a resume may change (config.RESUME_KEYS) that this sweep gives other values
    # than the trial's run folder has: a resume applies them (--set), as `reverie train
    # --resume --set` does; ["key: old there, new in this sweep", ...] in `changed`
    resume_sets: tuple[str, ...] = field(default_factory=tuple)
    changed: tuple[str, ...] = field(default_factory=tuple)
    # the grid's own name for a trial with the settings of an earlier run's trial, whose name
    # and folder it takes (`make_trials`' reusable); "" for the others
    alias: str = ""

    def train_args(self) -> list[str]:
        """`reverie train` arguments that start this trial from scratch."""
        args = ["train", "--no-progress", "--seed", str(self.seed), "--out", self.folder,
                "--steps", str(self.steps)]
        if self.preset:
            args += ["--preset", self.preset]
        if self.env:
            args += ["--env", self.env]
        for item in self.overrides:
            args += ["--set", item]
        return args

    def resume_args(self) -> list[str]:
        """`reverie train` arguments that continue this trial from its last checkpoint."""
        args = ["train", "--resume", self.folder, "--no-progress", "--steps", str(self.steps)]
        for item in self.resume_sets:
            args += ["--set", item]
        return args


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """['k=v1,v2', ...] -> [(k, [v1, v2]), ...]."""
    out: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        choices = [v.strip() for v in values.split(",")]
        if not sep or not key or not all(choices):
            raise UserError(f"--grid expects key=v1,v2,... (e.g. run.train_ratio=256,512), got "
                            f"'{item}'")
        values = [_value(v) for v in choices]  # 128 and 128.0 are one setting
        for i, value in enumerate(values):
            if value in values[:i]:  # the grid would run one setting twice
                first = choices[values.index(value)]
                what = (f"{first} and {choices[i]}, the same value" if first != choices[i]
                        else f"{first} more than once")
                raise UserError(f"--grid {key} lists {what}; give each value once (more runs "
                                "of a setting: --seeds N)")
        if key in (k for k, _ in out):
            raise UserError(f"--grid {key} is given twice; list all its values in one --grid")
        out.append((key, choices))
    return out


def _value(text: str) -> tuple:
    """A grid value as the config reads it (OmegaConf's dotlist grammar), for telling
    repeats apart: 128, 128.0 and 1.28e2 are one number; true stays apart from 1, null from
    a string, a number from a word."""
    try:
        value = OmegaConf.from_dotlist([f"v={text}"])["v"]
    except Exception:  # noqa: BLE001 - what the config cannot read is refused later, by it
        return ("text", text)
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    return ("text", str(value))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", text)


def trial_name(env: str, point: list[tuple[str, str]], seed: int) -> str:
    """'CartPole-v1__run.train_ratio=256__s0': unique per (env, grid point, seed)."""
    return "__".join([_slug(env), *(_slug(f"{k}={v}") for k, v in point), f"s{seed}"])


def _without(cfg: DictConfig, keys: tuple[str, ...]) -> dict:
    """The resolved config as plain data, less the dotted `keys`."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in keys:
        section, name = key.split(".", 1)
        data.get(section, {}).pop(name, None)
    return data


def _compared(cfg: DictConfig) -> dict:
    """The config minus what may legitimately differ between a sweep and its saved run."""
    return _without(cfg, RESUME_KEYS)


def _settings(cfg: DictConfig, grid_keys: set[str]) -> dict:
    """The config minus what changes no result (logging and checkpoint cadence, the budget:
    `NO_RESULT_KEYS`) and the threads a sweep sets itself, unless the grid sets them: two
    trials whose settings are equal are one run. Exact otherwise: a setting a resume may
    change (run.eval_episodes) is still a grid point's own. A result-neutral key that a
    resume may not change (replay.on_disk) stays: the folder's run would be refused."""
    neutral = (NO_RESULT_KEYS & set(RESUME_KEYS)) | {"run.threads"}
    return _without(cfg, tuple(sorted(neutral - grid_keys)))


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _first_difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            return f"{prefix}{key}: {va!r} there, {vb!r} in this sweep"
    return ""


def make_trials(preset: str | None, envs: list[str], seeds: int, steps: int | None,
                overrides: list[str], grid: list[str], out: Path,
                threads: int | None, notes: dict[str, list[str]] | None = None,
                reusable: list[Path] = ()) -> list[Trial]:
    """Every trial of the sweep, each config and env validated; UserError on the first bad
    one. `notes`, if given, collects `config.training_notes` (a trial that will train
    nothing, ...): note -> the names of the trials it concerns. `reusable`: run folders of
    an earlier run of the sweep; a trial without a folder of its own whose settings one of
    them holds (a grid key added with the value those trials had) takes that folder (and
    name) instead of training the same run again under a new name."""
    from reverie.run.checks import check_env

    axes = parse_grid(grid)
    given = [("--set", s.split("=", 1)[0].strip()) for s in overrides] + \
        [("--grid", k) for k, _ in axes]
    for flag, key in given:
        if key == "seed":  # it would override each trial's own seed: the "seeds" would repeat
            raise UserError(f"a sweep sets each trial's seed itself (0 .. --seeds-1); drop "
                            f"{flag} seed and use --seeds N")
    both = [k for f, k in given if f == "--set" and ("--grid", k) in given]
    if both:  # the grid's value would win in silence
        raise UserError(f"--set and --grid both set {both[0]}; give it in one of them")
    if preset and is_preset_file(preset):  # trials may start in another working directory
        preset = str(Path(preset).expanduser().resolve())
    sets = list(overrides)
    if threads and not any(s.split("=", 1)[0].strip() == "run.threads" for s in sets) \
            and "run.threads" not in (k for k, _ in axes):
        sets.append(f"run.threads={threads}")  # trials side by side share the cores
    trials, checked, configs = [], set(), []
    for env in list(dict.fromkeys(envs)) or [None]:  # an env given twice runs once
        for point in itertools.product(*[[(k, v) for v in vs] for k, vs in axes]):
            point = list(point)
            for seed in range(seeds):
                items = sets + [f"{k}={v}" for k, v in point]
                flags = {"env": env, "steps": steps, "seed": seed}
                try:
                    cfg = build_config(preset or "cartpole", items, flags)
                    if replay_in_memory(cfg, uses_replay(cfg.agent)):
                        raise UserError(
                            "replay.on_disk=false: a sweep resumes its stopped and crashed "
                            "trials, which needs their replay on disk; drop it (--set, --grid "
                            "or your preset file)")
                    # what check_env depends on: the env, and the agent's own settings (a
                    # backbone option only the backbone checks, e.g. ffm's memory_size under
                    # a grid of backbones); each once, before any trial starts
                    env_key = (cfg.agent, cfg.env.id, cfg.env.image_size, cfg.env.obs,
                               cfg.env.prev_reward, repr(cfg.get(cfg.agent)))
                    if env_key not in checked:
                        check_env(cfg, agent=True)
                        checked.add(env_key)
                except UserError as e:
                    what = ([f"env={env}"] if env else []) + [f"{k}={v}" for k, v in point]
                    where = f" (trial {', '.join(what)})" if point else ""
                    raise UserError(f"{e}{where}") from None
                name = trial_name(str(cfg.env.id), point, seed)
                folder = Path(out) / name
                trials.append(Trial(
                    name=name, folder=str(folder), preset=preset or "cartpole", env=env,
                    seed=seed, steps=int(cfg.run.steps), overrides=tuple(items),
                    **_resume_changes(folder, cfg)))
                configs.append(cfg)
    trials = _reuse(trials, configs, reusable, {k for k, _ in axes})
    for trial, cfg in zip(trials, configs) if notes is not None else ():
        for note in training_notes(cfg):  # by the name the trial runs under
            notes.setdefault(note, []).append(trial.name)
    return trials


def _reuse(trials: list[Trial], configs: list[DictConfig], reusable: list[Path],
           grid_keys: set[str]) -> list[Trial]:
    """`trials` with each new one whose settings a `reusable` folder (not a trial of this
    grid) holds moved into that folder (`make_trials`)."""
    names = {t.name for t in trials}
    others: dict[Path, dict] = {}
    for folder in reusable:
        if folder.name not in names and (folder / "config.yaml").is_file():
            try:
                others[folder] = _settings(load_run_config(folder), grid_keys)
            except UserError:  # a damaged earlier trial: the report says so
                continue
    if not others:
        return trials
    out = []
    for t, cfg in zip(trials, configs):
        mine = None if (Path(t.folder) / "config.yaml").exists() else _settings(cfg, grid_keys)
        same = next((f for f, saved in others.items() if saved == mine), None)
        if same is not None:
            del others[same]  # one trial per folder
            t = replace(t, name=same.name, folder=str(same), alias=t.name,
                        **_resume_changes(same, cfg))
        out.append(t)
    return out


def _resume_changes(folder: Path, cfg: DictConfig) -> dict[str, tuple[str, ...]]:
    """A Trial's resume_sets and changed for the trial `cfg` in `folder` (`check_existing`)."""
    changed = check_existing(folder, cfg)
    return {"resume_sets": tuple(f"{k}={new}" for k, _, new in changed),
            "changed": tuple(f"{k}: {old} there, {new} in this sweep"
                             for k, old, new in changed)}


def check_existing(folder: Path, cfg: DictConfig) -> list[tuple[str, str, str]]:
    """A folder that already holds this trial must hold the same settings, but for those a
    resume may change: returns those that differ, [(key, saved value, this sweep's)]
    (run.steps aside: the sweep's --steps, handled on its own; and run.progress: trials
    run with --no-progress)."""
    if not (folder / "config.yaml").exists():
        return []
    saved = load_run_config(folder)
    diff = _first_difference(_compared(saved), _compared(cfg))
    if diff:
        raise UserError(f"'{folder}' holds a run with other settings ({diff}), which a "
                        "resume cannot change: give this sweep another --out, or the settings "
                        "that folder's sweep ran with")
    changed = []
    for key in RESUME_KEYS:
        old, new = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
        if key in ("run.steps", "run.progress") or old == new:  # trials: --no-progress
            continue
        if key == "replay.capacity" and new < old:  # raised only (by hand here): kept
            continue
        changed.append((key, _yaml_value(old), _yaml_value(new)))
    return changed


def _yaml_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
