"""Which score a task is reported in, and the bundled Atari100k reference scores.

- Atari (`ALE/<Game>-v5`): human-normalised score, HNS = (score - random) / (human - random),
  with the random and human scores of `data/atari100k.json`.
- POPGym (`popgym-...`): MMER (`eval/mmer.py`), already on a common [-1, 1] scale.
- anything else: the raw return.

Also bundles the published per-task POPGym scores of `data/popgym_published.json`
(`published_popgym`), converted to raw MMER.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from reverie.eval.mmer import mmer_from_normalized
from reverie.eval.stats import aggregate

# Published Atari100k agents with per-game scores in data/atari100k.json (mean over seeds).
PUBLISHED = ("dreamerv3", "storm", "iris", "diamond")
PUBLISHED_NAMES = {"dreamerv3": "DreamerV3", "storm": "STORM", "iris": "IRIS",
                   "diamond": "DIAMOND", "drama": "Drama"}
# Drama publishes only aggregates over the 26 games (its per-game table is not bundled).
DRAMA_AGGREGATE = {"mean": 1.05, "median": 0.27}

_ATARI_ID = re.compile(r"^(?:ALE/)?([A-Za-z]+?)(?:NoFrameskip|Deterministic)?-v\d+$")


@dataclass(frozen=True)
class ScoreKind:
    """How a task's returns become a score: its name, unit and optimality-gap target."""

    name: str  # "HNS" | "MMER" | "return (<family>)": what a report aggregates together
    label: str  # axis label, with the unit
    gamma: float | None  # optimality-gap target; None where no common target exists
    raw: bool = False  # raw returns, aggregated within one env family only
    percent: bool = False  # shown as a percentage (x 100) in every table and figure

    @property
    def scale(self) -> float:
        """The factor from a score to what tables and figures show (100 for a percentage)."""
        return 100.0 if self.percent else 1.0


HNS = ScoreKind("HNS", "human-normalised score (%, 100 = human)", 1.0, percent=True)
MMER = ScoreKind("MMER", "MMER (POPGym, max 1)", 1.0)


def raw_kind(env_id: str) -> ScoreKind:
    """Raw returns of one env family: a suite's tasks ("minatar:breakout" -> minatar, "dmc:..."
    -> dmc, whose returns share a scale) or the env itself (CartPole-v1). Returns of different
    families are never aggregated together."""
    family = env_id.split(":", 1)[0] if ":" in env_id else env_id
    return ScoreKind(f"return ({family})", f"return (raw, {family})", None, raw=True)


@cache
def bundled_data(name: str) -> dict[str, Any]:
    """A JSON file of the package's `eval/data/` (cached: treat the result as read-only)."""
    text = (resources.files("reverie") / "eval" / "data" / name).read_text()
    return json.loads(text)


def atari_reference() -> dict[str, Any]:
    """The bundled `atari100k.json`: protocol, sources and per-game reference scores."""
    return bundled_data("atari100k.json")


def atari_game(env_id: str) -> str | None:
    """'ALE/MsPacman-v5' -> 'MsPacman' when it is one of the Atari100k games, else None."""
    m = _ATARI_ID.match(str(env_id))
    if m is None:
        return None
    games = atari_reference()["games"]
    name = m.group(1)
    if name in games:
        return name
    lowered = {g.lower(): g for g in games}
    return lowered.get(name.lower())


def human_normalized(score: float, game: str) -> float:
    """(score - random) / (human - random) for an Atari100k game."""
    ref = atari_reference()["games"][game]
    return (float(score) - ref["random"]) / (ref["human"] - ref["random"])


def score_kind(env_id: str) -> ScoreKind:
    if atari_game(env_id) is not None:
        return HNS
    if str(env_id).startswith("popgym-"):
        return MMER
    return raw_kind(str(env_id))


def published_hns(agent: str, games: list[str] | None = None) -> dict[str, float]:
    """Per-game HNS of a published agent (all 26 games, or `games`)."""
    ref = atari_reference()["games"]
    names = list(ref) if games is None else games
    return {g: human_normalized(ref[g][agent], g) for g in names if agent in ref[g]}


@dataclass
class Published:
    """A published Atari100k agent: point estimates on the games of this report."""

    name: str
    games: list[str]
    values: dict[str, float]  # estimator -> value (no interval: one number per game)


def published_rows(games: list[str]) -> list[Published]:
    """DreamerV3, STORM, IRIS and DIAMOND on `games`; Drama's aggregate on all 26 only."""
    out = []
    for agent in PUBLISHED:
        hns = published_hns(agent, games)
        scores = [np.array([v]) for v in hns.values()]
        values = {name: est.value for name, est in
                  aggregate(scores, reps=1, gamma=HNS.gamma).items()}
        out.append(Published(PUBLISHED_NAMES[agent], list(hns), values))
    all_games = sorted(atari_reference()["games"])
    if sorted(games) == all_games:
        out.append(Published("Drama", all_games, dict(DRAMA_AGGREGATE)))
    return out


# --- POPGym: published per-task scores --------------------------------------------------

POPGYM_SCALES = ("mmer", "normalized")


def popgym_reference() -> dict[str, Any]:
    """The bundled `popgym_published.json`: sources (paper, url, table, budget, seeds,
    scale) and the per-task scores read from them, as published."""
    return bundled_data("popgym_published.json")


@dataclass(frozen=True)
class PublishedMMER:
    """One published POPGym score, converted to raw MMER in [-1, 1]."""

    source: str  # key of `sources` in popgym_published.json
    memory: str  # the memory model, as the source names it (lower case)
    task: str  # current popgym name, e.g. "PositionOnlyCartPoleEasy"
    mean: float
    std: float | None  # spread over seeds as published, None if not given
    budget_env_steps: int


def published_popgym(tasks: list[str] | None = None) -> list[PublishedMMER]:
    """Every published per-task score (on `tasks` only, if given), as raw MMER.

    A source on the normalised scale (0.5·MMER + 0.5) is mapped back with
    `mmer_from_normalized` (its std doubled). Entries keep the source's own env-step
    budget: they are not at reverie's budget.
    """
    ref = popgym_reference()
    out = []
    for key, memories in ref["scores"].items():
        if not any(memories.values()):
            continue  # a source whose numbers are not transcribed
        src = ref["sources"][key]
        scale = src["scale"]
        if scale not in POPGYM_SCALES:
            raise ValueError(f"popgym source {key!r} has scores but scale {scale!r}, "
                             f"not one of {POPGYM_SCALES}")
        for memory, per_task in memories.items():
            for task, value in per_task.items():
                if tasks is not None and task not in tasks:
                    continue
                mean, std = ((value["mean"], value.get("std")) if isinstance(value, dict)
                             else (value, None))
                if scale == "normalized":
                    mean = mmer_from_normalized(mean)
                    std = None if std is None else 2.0 * float(std)
                out.append(PublishedMMER(key, memory, task, float(mean),
                                         None if std is None else float(std),
                                         int(src["budget_env_steps"])))
    return out
