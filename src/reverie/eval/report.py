"""`reverie report`: report.md and PNGs for any set of run folders, one run to hundreds.

Runs are grouped by settings (default: the agent and its backbone), scored per task (HNS for
Atari, MMER for POPGym, raw return otherwise), and aggregated over tasks x seeds with
stratified-bootstrap 95% intervals (`stats.py`). Atari reports place the published
Atari100k agents beside reverie's groups, marked as published at their own budget.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from reverie.config import uses_replay
from reverie.errors import UserError, suggest
from reverie.eval import plots
from reverie.eval.runs import Run, checkpoint_step, is_run_folder, load_runs
from reverie.eval.scores import (
    PUBLISHED,
    PUBLISHED_NAMES,
    ScoreKind,
    atari_game,
    atari_reference,
    published_rows,
)
from reverie.eval.stats import Estimate, aggregate, bootstrap_ci, mean_score
from reverie.run.folder import has_checkpoint
from reverie.run.saving import resume_refused

DEFAULT_GROUP_BY = ("agent", "backbone")
REPS = 2000
# the report's sentence on what each run's score is, by `returns` (runs.RETURNS)
SCORED_FROM = {
    "auto": "A run's score is its last evaluation's mean return, or without evaluations the "
            "mean return of its training episodes in the last 10% of its steps",
    "eval": "A run's score is its last evaluation's mean return (--returns eval: runs "
            "without evaluations are skipped)",
    "train": "A run's score is the mean return of its training episodes in the last 10% of "
             "its steps, curves from training episodes (--returns train)",
}


@dataclass
class Group:
    """The runs of one setting, by task; `scores[env]` are the final scores over seeds."""

    label: str
    kind: ScoreKind
    runs: dict[str, list[Run]]

    def scores(self) -> list[np.ndarray]:
        return [np.array([r.score for r in rs]) for _, rs in sorted(self.runs.items())]

    @property
    def n_runs(self) -> int:
        return sum(len(v) for v in self.runs.values())


def _config_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    out = []
    for k in cfg.keys():
        child = cfg._get_node(k)
        path = f"{prefix}{k}"
        out.append(path)
        if isinstance(child, DictConfig):
            out.extend(_config_keys(child, path + "."))
    return out


def default_group_by(runs: list[Run]) -> list[str]:
    """Agent and backbone, then the settings that make another algorithm of an agent in the
    reports (its module's `REPORT_KEYS`, e.g. mbpo.mode: plain MBPO vs COPlanner); a label
    names those only where runs differ in them (`group_labels`)."""
    from reverie.config import AGENTS, agent_hook

    keys = list(DEFAULT_GROUP_BY)
    for agent in sorted({r.cfg.agent for r in runs if r.cfg.agent in AGENTS}):
        keys += [k for k in agent_hook(agent, "REPORT_KEYS", ()) if k not in keys]
    return keys


def check_group_keys(keys: list[str], runs: list[Run]) -> list[str]:
    """A --group-by key must name a setting of at least one run (did-you-mean otherwise), or
    an option inside a free-form `*_kwargs` setting that some run has (as `--set` accepts
    them: rppo.backbone_kwargs.init names an option that only some backbones take). Such an
    option that no run sets (a typo, or runs without it) groups nothing: returns one warning
    line for each."""
    known = {"agent", "backbone"}
    for r in runs:
        known.update(_config_keys(r.cfg))
    sections = {k for k in known if k != "agent" and any(o.startswith(k + ".") for o in known)
                and not k.rsplit(".", 1)[-1].endswith("_kwargs")}
    unused = []
    for key in keys:
        if key in sections:  # its label would be the whole section, dumped as a dict
            inside = sorted(o for o in known if o.startswith(key + ".") and o not in sections)
            raise UserError(f"--group-by '{key}' is a section of settings, not one setting; "
                            f"name one of its keys, e.g. {', '.join(inside[:3])}")
        if key in known:
            continue
        parts = key.split(".")
        free_form = [".".join(parts[:i + 1]) for i in range(len(parts) - 1)
                     if parts[i].endswith("_kwargs") and ".".join(parts[:i + 1]) in known]
        if not free_form:
            from reverie.config import AGENTS

            agents = sorted({str(r.cfg.agent) for r in runs})
            if parts[0] in AGENTS and parts[0] not in agents:  # another agent's setting
                raise UserError(f"--group-by '{key}' is a setting of agent {parts[0]}, and "
                                f"no run here is one ({', '.join(agents)}); group by a "
                                "setting these runs have, e.g. agent or backbone")
            raise UserError(f"--group-by '{key}' is not a config key of any run"
                            f"{suggest(key, sorted(known))}; use 'agent', 'backbone' or a "
                            "dotted key such as run.train_ratio")
        base = ".".join(parts[:-1])  # compare option names, not the shared prefix
        options = sorted(k.rsplit(".", 1)[-1] for k in known if k.startswith(base + "."))
        unused.append(f"--group-by '{key}' is an option no run sets, so it groups nothing"
                      f"{suggest(parts[-1], options)}")
    return unused


def group_label(run: Run, keys: list[str]) -> str:
    """E.g. 'rppo/ffm/init=reference'. A key the run does not have (another agent's
    setting, an unset option: '-' or '?') is left out of its label, so one report can group
    mbpo runs by `mbpo.mode` and rppo runs by their backbone options."""
    return _label(keys, [run.setting(k) for k in keys], [True] * len(keys), run)


def _label(keys: list[str], values: list[str], shown: list[bool], run: Run) -> str:
    """`group_label` of these values of `keys`, leaving out the keys not `shown`. Nothing
    left: 'all' where the keys name nothing that sets the runs apart, the run's agent where
    it lacks a key (a random run among runs grouped by imagine.world.backbone)."""
    parts = [value if key in ("agent", "backbone") else f"{key.rsplit('.', 1)[-1]}={value}"
             for key, value, on in zip(keys, values, shown) if on and value not in ("-", "?")]
    absent = any(value in ("-", "?") for value in values)
    return "/".join(parts) or (run.setting("agent") if absent else "all")


def group_labels(runs: list[Run], keys: list[str]) -> list[str]:
    """The runs' labels, where a dotted key names its value only where runs of the same
    score kind (what one aggregate spans: HNS, MMER, the raw return of one env or family),
    agent and backbone (those of the two that are keys) differ in it.

    So `--group-by run.precision` names fp32 and bf16 beside the CartPole mamba2 runs that
    were compared in both, and nothing beside the gru runs, or MinAtar's, that were all fp32.
    Two settings of one score kind never share a label: runs that differ in a key either
    differ in agent or backbone as well, or both name their value of it.
    """
    values = [[r.setting(k) for k in keys] for r in runs]
    scoped = [k in ("agent", "backbone") for k in keys]
    scopes = [(r.kind.name, *(v for v, s in zip(vs, scoped) if s))
              for r, vs in zip(runs, values)]
    seen: dict[tuple, set[str]] = defaultdict(set)
    for scope, vs in zip(scopes, values):
        for k, v in zip(keys, vs):
            seen[(scope, k)].add(v)
    return [_label(keys, vs, [s or len(seen[(scope, k)]) > 1 for k, s in zip(keys, scoped)], r)
            for r, scope, vs in zip(runs, scopes, values)]


def make_groups(runs: list[Run], keys: list[str]) -> list[Group]:
    """Groups per (score kind, label), in a stable order."""
    table: dict[tuple[str, str], dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    kinds: dict[str, ScoreKind] = {}
    ordered = sorted(runs, key=lambda r: (r.env, r.seed, str(r.path)))
    for r, label in zip(ordered, group_labels(ordered, keys)):
        table[(r.kind.name, label)][r.env].append(r)
        kinds[r.kind.name] = r.kind
    return [Group(label, kinds[k], dict(envs))
            for (k, label), envs in sorted(table.items(),
                                           key=lambda item: (item[0][0], natural(item[0][1])))]


def natural(text: str) -> list[tuple[int, float, str]]:
    """Sort key that reads numbers as numbers: train_ratio=8 before train_ratio=16."""
    return [(0, float(t), "") if t.replace(".", "", 1).isdigit() else (1, 0.0, t)
            for t in re.split(r"(\d+(?:\.\d+)?)", text)]


def _leaves(cfg: DictConfig) -> dict[str, object]:
    """Every setting of a config as {dotted key: value}. An empty mapping (a `*_kwargs`
    setting left empty) holds no setting, so it is not one: a run that sets an option there
    differs from one that does not in that option, not in the mapping as well."""
    out: dict[str, object] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def _budgets(runs: list[Run]) -> str | None:
    """'10,000 and 20,000 env steps; add --group-by ...' when the runs' final scores come from
    budgets more than 5% apart (a vector env's last batch overshoots by a few steps), with
    the fix: group by run.steps where the runs were given different budgets, leave out the
    unfinished ones where they were not; else None."""
    steps = sorted({r.env_steps for r in runs})
    if steps[-1] <= 1.05 * steps[0]:
        return None
    shown = [f"{s:,}" for s in steps]
    fix = ("add --group-by run.steps to set them apart"
           if len({r.target_steps for r in runs}) > 1 else
           "some are unfinished: --finished-only leaves them out")
    return (f"{shown[0]} and {shown[1]}" if len(shown) == 2 else
            f"{shown[0]} to {shown[-1]} ({len(shown)} different)") + f" env steps; {fix}"


def unevaluated_runs(runs: list[Run]) -> list[str]:
    """A line for each run that reached its budget without its final evaluation (stopped
    before it, or trained by a reverie that did not evaluate a run's end): its score is an
    earlier evaluation's. The resume that runs it is named where the run kept a checkpoint
    (an archive of a run's logs cannot be run) and a resume from it is not refused (a replay
    kept in memory is needed only where training is left: a kill during the final evaluation
    leaves the newest checkpoint before the end)."""
    def fix(r: Run) -> str:
        if not has_checkpoint(r.path):
            return "no checkpoint of it is kept to run it"
        if resume_refused(r.cfg, uses_replay(r.cfg.agent), checkpoint_step(r.path),
                          r.target_steps):
            return ("its replay was kept in memory (replay.on_disk=false) and its newest "
                    "checkpoint is before its end: it cannot be resumed")
        return f"`reverie train --resume {r.path}` runs it"

    return [f"{r.path}: ended at {r.env_steps:,} env steps without its final evaluation, "
            f"scored from the one at {r.scored_before_end:,}; {fix(r)}"
            for r in runs if r.scored_before_end is not None]


def mixed_groups(groups: list[Group]) -> list[str]:
    """Lines for each way a group's runs should not be averaged as they are, per env (up to
    `SHOWN_ENVS` envs a group, then how many more):

    - two runs of one env with the same seed: the grouping keys miss what tells them apart
      (an ablation's variants averaged as seeds), so the line names the settings in which
      they differ (not counting the budget, said next, and the settings that change no
      result: progress, logging and checkpoint cadence); runs of different seeds that
      differ in a setting too;
    - runs scored at different budgets (a 10k and a 20k run of one agent): their final
      scores are not comparable: `--group-by run.steps` sets different budgets apart,
      `--finished-only` leaves out runs still short of theirs;
    - runs that never updated (their scores are the initial weights')."""
    lines = []
    for g in groups:
        clashes, budgets = [], []
        for env, rs in sorted(g.runs.items()):
            clash, budget_said = _env_clash(g.label, env, rs)
            if clash:
                clashes.append(clash)
            if (spread := _budgets(rs)) and not budget_said:
                budgets.append(f"{env} ({spread})")
        lines += clashes[:SHOWN_ENVS]
        if len(clashes) > SHOWN_ENVS:
            lines.append(f"group '{g.label}' mixes runs in {len(clashes) - SHOWN_ENVS} more "
                         "env(s) too")
        if budgets:
            lines.append(f"group '{g.label}' averages final scores taken at different env steps: "
                         + "; ".join(budgets[:SHOWN_ENVS])
                         + (f"; and {len(budgets) - SHOWN_ENVS} more env(s)"
                            if len(budgets) > SHOWN_ENVS else ""))
        short = [r for rs in g.runs.values() for r in rs if r.env_steps < r.target_steps]
        if short and not budgets:  # all alike short (a stopped sweep): said nowhere else
            some = ", ".join(f"{r.env} seed {r.seed} at {r.env_steps:,} of {r.target_steps:,}"
                             for r in short[:SHOWN_ENVS])
            more = f" and {len(short) - SHOWN_ENVS} more" if len(short) > SHOWN_ENVS else ""
            lines.append(f"group '{g.label}' scores {_n(len(short), 'unfinished run')} "
                         f"({some}{more} env steps): --finished-only leaves them out")
        untrained = sorted({r.env for rs in g.runs.values() for r in rs if r.grad_steps == 0})
        if untrained:  # e.g. a sweep's --steps below the prefill: scores of initial weights
            lines.append(f"group '{g.label}' has runs of {', '.join(untrained)} that never "
                         "updated (0 gradient steps; run.steps within the prefill, warm-up or "
                         "first rollout): their scores are the untrained agent's")
    return lines


SHOWN_ENVS = 3  # mixed-group lines per group before "and N more"


def _env_clash(label: str, env: str, rs: list[Run]) -> tuple[str | None, bool]:
    """(the line for runs of one env a group should not average as seeds, or None;
    whether that line already says the runs' budgets differ)."""
    from reverie.config import NO_RESULT_KEYS, RESUME_KEYS  # (the budget has its own line)

    by_seed: dict[int, list[Run]] = defaultdict(list)
    for r in rs:
        by_seed[r.seed].append(r)
    clash = next((v for _, v in sorted(by_seed.items()) if len(v) > 1), None)
    if clash is None:  # seeds apart, but settings too?
        differ = sorted(_differing(rs, NO_RESULT_KEYS | set(RESUME_KEYS) | {"seed"}))
        return (f"group '{label}' averages runs of {env} that differ in {_some(differ)}: add "
                "--group-by for what tells them apart" if differ else None), False
    # what changes learning first, then what a resume may change (threads, precision)
    differ = sorted(_differing(clash, NO_RESULT_KEYS), key=lambda k: (k in RESUME_KEYS, k))
    budget_said = False
    if differ:
        what = f"they differ in {_some(differ)}: add --group-by for what tells them apart"
    elif clash_budgets := _budgets(clash):
        what = f"they differ in their budgets ({clash_budgets})"
        budget_said = _budgets(rs) == clash_budgets
    else:
        what = "their configs are identical (the same run twice?)"
    return (f"group '{label}' has {len(clash)} runs of {env} with seed {clash[0].seed}, "
            f"averaged as if they were seeds; {what}"), budget_said


def _differing(runs: list[Run], skip: set[str]) -> list[str]:
    """The config keys (dotted leaves) whose values differ between `runs`, but `skip`."""
    leaves = [_leaves(r.cfg) for r in runs]
    return [k for k in set().union(*leaves)
            if k not in skip and len({repr(c.get(k)) for c in leaves}) > 1]


def _some(keys: list[str], shown: int = 4) -> str:
    """The first `shown` keys, and how many more."""
    more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _point(x: float, pct: bool) -> str:
    """A score as the tables print it: a percentage to 0.1, else 3 significant digits."""
    return f"{100 * x:.1f}%" if pct else _num(x, 3)


def _ci(e: Estimate, pct: bool) -> str:
    if pct:
        return f"{_point(e.value, pct)} [{100 * e.low:.1f}, {100 * e.high:.1f}]"
    return f"{_point(e.value, pct)} [{_num(e.low, 3)}, {_num(e.high, 3)}]"


def _num(x: float, digits: int = 4) -> str:
    """`digits` significant digits, without exponents for the scores games and control tasks
    give (14,360 and 1,000, not 1.436e+04 and 1e+03)."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}g}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _aggregate_section(groups: list[Group], kind: ScoreKind) -> list[str]:
    pct = kind.percent
    names = ["mean", "median", "IQM"] + (["optimality gap"] if kind.gamma is not None else [])
    # a label that starts with the name already says it ("return (raw, dmc)", "MMER (...)")
    heading = kind.label if kind.label.startswith(kind.name.split(" ")[0]) else \
        f"{kind.name}: {kind.label}"
    lines = [f"### {heading}", "",
             "| group | tasks | runs | " + " | ".join(names) + " |",
             "|---|---:|---:|" + "---|" * len(names)]
    for g in groups:
        est = aggregate(g.scores(), reps=REPS, gamma=kind.gamma)
        lines.append(f"| {g.label} | {len(g.runs)} | {g.n_runs} | "
                     + " | ".join(_ci(est[n], pct) for n in names) + " |")
    if kind.name == "HNS":
        games = sorted({atari_game(env) for g in groups for env in g.runs})
        for p in published_rows(games):
            cells = [f"{100 * p.values[n]:.1f}%" if n in p.values else "-" for n in names]
            note = "all 26 games, paper's aggregate" if p.name == "Drama" else \
                f"{_n(len(p.games), 'game')}, mean of its seeds"
            lines.append(f"| {p.name} (published, 100k steps; {note}) | {len(p.games)} | - | "
                         + " | ".join(cells) + " |")
    lines.append("")
    if kind.raw and len({e for g in groups for e in g.runs}) > 1:
        lines += ["Raw returns of the tasks of one suite can still differ in scale: read the "
                  "per-task table beside these.", ""]
    return lines


def _task_section(groups: list[Group]) -> list[str]:
    lines = ["| env | group | runs | final return (mean ± sd) | score [95% CI] | from |",
             "|---|---|---:|---:|---|---|"]
    rows = []
    for i, g in enumerate(groups):
        for env, rs in g.runs.items():
            raw = np.array([r.final_raw for r in rs])
            est = bootstrap_ci([np.array([r.score for r in rs])], mean_score, reps=REPS)
            # one run has no spread: "418.6 ± 0" and "419 [419, 419]" read as measured ones
            score = (_ci(est, g.kind.percent) if len(rs) > 1 else
                     _point(est.value, g.kind.percent) + " (one run)")
            score += "" if g.kind.raw else f" {g.kind.name}"
            sources = sorted({r.source for r in rs})
            src = " + ".join("evaluations" if s == "eval" else "training episodes"
                             for s in sources)
            seeds = len({r.seed for r in rs})  # fewer than runs: see the mixed-group lines
            count = f"{len(rs)}" if seeds == len(rs) else f"{len(rs)} ({_n(seeds, 'seed')})"
            spread = f" ± {_num(raw.std())}" if len(rs) > 1 else ""
            rows.append((env, i, f"| {env} | {g.label} | {count} | "
                         f"{_num(raw.mean())}{spread} | {score} | {src} |"))
    lines += [row for _, _, row in sorted(rows)]  # by env, then in the groups' order
    games = sorted({atari_game(env) for g in groups for env in g.runs} - {None})
    if games:
        ref = atari_reference()["games"]
        lines += ["", "Published Atari100k scores (raw return, each at its own 100k-step "
                  "budget) beside the random and human references:", "",
                  "| game | random | human | " + " | ".join(PUBLISHED_NAMES[a] for a in PUBLISHED)
                  + " |", "|---|" + "---:|" * (2 + len(PUBLISHED))]
        for game in games:
            lines.append(f"| {game} | {ref[game]['random']:g} | {ref[game]['human']:g} | "
                         + " | ".join(f"{ref[game][a]:g}" for a in PUBLISHED) + " |")
    return lines + [""]


def _compute_section(groups: list[Group]) -> list[str]:
    lines = ["| group | env | runs | env steps reached / budget | wall time (mean, h:mm:ss) | "
             "env steps/s (median) | parameters | machines |",
             "|---|---|---:|---|---:|---:|---:|---|"]
    for g in groups:
        for env, rs in sorted(g.runs.items()):
            reached = _span([r.env_steps for r in rs])
            budget = _span([r.target_steps for r in rs])
            walls = [r.wall_s for r in rs if r.wall_s is not None]
            rates = [r.steps_per_s for r in rs if r.steps_per_s is not None]
            lines.append(f"| {g.label} | {env} | {len(rs)} | {reached} / {budget} | "
                         f"{_hms(float(np.mean(walls))) if walls else '-'} | "
                         f"{f'{np.median(rates):.0f}' if rates else '-'} | "
                         f"{_params(rs)} | {_machines(rs)} |")
    return lines + [""]


def _span(values: list[int]) -> str:
    """'20,000', or '2,048–20,000' where the runs differ (a mean would be no run's)."""
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def _params(runs: list) -> str:
    """The runs' agent size ('1.46M', a range where they differ), '-' where not recorded."""
    counts = sorted({r.params for r in runs if r.params is not None})
    if not counts:
        return "-"
    size = [f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k" if n else "0"
            for n in (counts[0], counts[-1])]
    return size[0] if len(counts) == 1 else f"{size[0]}–{size[1]}"


def _machines(runs: list) -> str:
    """The machines of a table row's runs (how many runs each), '-' where none recorded."""
    counts: dict[str, int] = {}
    for r in runs:
        for m in r.machines:
            counts[m] = counts.get(m, 0) + 1
    unknown = sum(not r.machines for r in runs)
    if not counts:
        return "-"
    if len(counts) == 1 and not unknown and all(len(r.machines) == 1 for r in runs):
        return next(iter(counts))
    return "; ".join([f"{m} ({n} run{'s' if n > 1 else ''})" for m, n in counts.items()]
                     + ([f"not recorded ({unknown} run{'s' if unknown > 1 else ''})"]
                        if unknown else []))


def _runs_section(groups: list[Group], out: Path) -> list[str]:
    lines = ["<details><summary>all runs</summary>", "",
             "| run | env | group | seed | steps | score |", "|---|---|---|---:|---:|---:|"]
    labelled = [(r, g.label) for g in groups for rs in g.runs.values() for r in rs]
    for r, label in sorted(labelled, key=lambda x: natural(str(x[0].path))):
        try:
            shown = Path(r.path).resolve().relative_to(out.resolve().parent)
        except ValueError:
            shown = r.path
        lines.append(f"| {shown} | {r.env} | {label} | {r.seed} | "
                     f"{r.env_steps:,} | {_num(r.score)} |")
    return lines + ["", "</details>", ""]


def write_report(paths: list[str | Path], out: str | Path,
                 group_by: list[str] | None = None,
                 notes: list[str] | None = None,
                 finished_only: bool = False,
                 also_group_by: Sequence[str] = (),
                 returns: str = "auto") -> tuple[Path, list[str]]:
    """Write `out/report.md` and its PNGs; returns (report path, warnings: skipped folders,
    groups that mix configurations (`mixed_groups`), runs scored from an evaluation before
    their end (`unevaluated_runs`) and --group-by options no run sets (`check_group_keys`)).
    `notes` are markdown lines placed after the header (e.g. a sweep's trial outcomes);
    finished_only leaves out runs still short of their `run.steps`; `also_group_by`: keys added to
    `group_by` (default: `default_group_by`), e.g. a sweep's grid; `returns`: what runs are
    scored from (`runs.RETURNS`: evaluations where there are any, else training episodes;
    evaluations only; training episodes only, POPGym's protocol)."""
    runs, warnings = load_runs(paths, finished_only, returns)
    keys = list(dict.fromkeys(group_by or default_group_by(runs)))  # a key given twice: once
    keys += [k for k in also_group_by if k not in keys]
    unused = check_group_keys(keys, runs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; choose a folder")
    if out.is_symlink():
        raise UserError(f"--out '{out}' is a link; point at the real folder")
    if is_run_folder(out):  # its report.md and PNGs would be mixed into a run's own files
        raise UserError(f"--out '{out}' is a run folder; write the report beside it, e.g. "
                        f"--out {out.parent / (out.name + '-report')}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out '{out}' ({e.strerror}); choose another") from None
    groups = make_groups(runs, keys)
    kinds = {g.kind.name: g.kind for g in groups}
    envs = sorted({r.env for r in runs})
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    labels = {g.label for g in groups}
    lines = ["# reverie report", "",
             f"{_n(len(runs), 'run')}, {_n(len(envs), 'env')}, {_n(len(labels), 'group')} "
             f"(grouped by {', '.join(keys)}; a setting is named only where runs of one agent "
             f"and backbone differ in it within a score kind); {now}. Intervals are 95% "
             f"stratified-bootstrap intervals over tasks x seeds ({REPS} resamples). "
             f"{SCORED_FROM[returns]}; POPGym runs score their MMER.", ""]
    if warnings:
        lines += [f"Skipped {len(warnings)} folder(s):", ""] + [f"- {w}" for w in warnings] + [""]
    mixed = mixed_groups(groups)
    if mixed:
        lines += (["**Groups that mix configurations or budgets, or never trained:**", ""]
                  + [f"- {m}" for m in mixed] + [""])
    early = unevaluated_runs(runs)
    if early:
        lines += ["**Runs scored from an evaluation before their end:**", ""] + [
            f"- {e}" for e in early] + [""]
    if unused:
        lines += [f"- {u}" for u in unused] + [""]
    lines += list(notes or [])
    lines += ["## Aggregate scores", ""]
    for name, kind in kinds.items():
        lines += _aggregate_section([g for g in groups if g.kind.name == name], kind)
    figures = plots.write_all(groups, out)
    captions = {
        "aggregates": "Aggregate scores with 95% intervals (published agents: points, no "
                      "interval, at their own budget)",
        "curves": "Learning curves per env: mean over seeds, band = 95% bootstrap interval",
        "sample_efficiency": "Sample efficiency: IQM over tasks x seeds against env steps",
        "profile": "Performance profiles: fraction of runs scoring above a threshold",
    }
    for name in ("aggregates",):
        if name in figures:
            lines += [f"![{captions[name]}]({figures[name].name})", ""]
    lines += ["## Per-task scores", ""] + _task_section(groups)
    for title, name in (("Learning curves", "curves"), ("Sample efficiency", "sample_efficiency"),
                        ("Performance profiles", "profile")):
        if name in figures:
            lines += [f"## {title}", "", f"![{captions[name]}]({figures[name].name})", ""]
    lines += ["## Compute", "", "Wall time is training time (evaluations included, start-up "
              "not) summed over the processes of resumed runs; env steps/s is env steps run per "
              "second of it, median over the runs. Parameters: the agent's (all its networks, "
              "target copies included), as its run recorded them. Machines: what the runs "
              "trained on (CPU model, logical cores, torch threads, GPU), with how many runs "
              "each where a row mixes them; wall times compare only on the same machine.",
              ""] + _compute_section(groups)
    lines += ["## Runs", ""] + _runs_section(groups, out)
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report, warnings + mixed + early + unused
