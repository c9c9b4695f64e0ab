"""MMER, POPGym's score: the max over training of the mean episodic return.

POPGym (Morad et al., ICLR 2023) logs, at every reporting point of a run, the mean return
of the episodes in that report (RLlib's `episode_reward_mean`), takes the running maximum
of that curve over the training budget, and reports its value at the end: the MMER.
POPGym returns lie in [-1, 1], so the normalised score 0.5·MMER + 0.5 lies in [0, 1].

Reporting points here are either evaluation rows (`eval/return`, already a mean over the
evaluation's episodes) or training episodes (`episode/return`, one row per episode),
which are averaged per window of `window_steps` env steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reverie.run.logger import scored_evaluations


def mmer_curve(points: Iterable[tuple[int, float]]) -> list[tuple[int, float]]:
    """Running maximum of (step, mean return) points, in step order; NaN/inf points skipped."""
    out: list[tuple[int, float]] = []
    best = -math.inf
    for step, value in sorted(points, key=lambda p: p[0]):
        v = float(value)
        if not math.isfinite(v):
            continue
        best = max(best, v)
        out.append((int(step), best))
    return out


def mmer(points: Iterable[tuple[int, float]], max_step: int | None = None) -> float:
    """MMER: max of the mean returns at steps <= `max_step` (all if None).

    Raises ValueError if no finite point is in range (a run too short to score).
    """
    kept = [(s, v) for s, v in points if max_step is None or s <= max_step]
    curve = mmer_curve(kept)
    if not curve:
        raise ValueError("no finite mean return to score; the run logged none"
                         + ("" if max_step is None else f" up to step {max_step}"))
    return curve[-1][1]


def steps_to_reach(points: Iterable[tuple[int, float]], target: float) -> int | None:
    """First step at which the mean return reaches `target` (>=), or None if it never does.

    The sample-efficiency measure of a run: with evaluations every k env steps it is an
    upper bound on the true step, by up to k.
    """
    for step, best in mmer_curve(points):
        if best >= target:
            return step
    return None


def normalized_mmer(value: float) -> float:
    """0.5·MMER + 0.5: maps POPGym's return range [-1, 1] to [0, 1]."""
    return 0.5 * float(value) + 0.5


def mmer_from_normalized(value: float) -> float:
    """Inverse of `normalized_mmer`: 2·v - 1 maps [0, 1] back to MMER in [-1, 1]."""
    return 2.0 * float(value) - 1.0


def window_means(
    episodes: Sequence[tuple[int, float]], window_steps: int
) -> list[tuple[int, float]]:
    """Mean return of the episodes that ended in each window of env steps.

    episodes: (step at which the episode ended, return). Window k holds steps
    (k·w, (k+1)·w]; its point is reported at the window's last step (k+1)·w. Windows
    without an episode give no point.
    """
    if window_steps < 1:
        raise ValueError(f"window_steps must be >= 1, got {window_steps}")
    sums: dict[int, list[float]] = {}
    for step, ret in episodes:
        k = max(int(step) - 1, 0) // window_steps
        sums.setdefault(k, []).append(float(ret))
    return [((k + 1) * window_steps, sum(v) / len(v)) for k, v in sorted(sums.items())]


def mmer_from_metrics(
    rows: Iterable[Mapping[str, Any]],
    key: str = "eval/return",
    window_steps: int | None = None,
    max_step: int | None = None,
) -> float:
    """MMER of a run from the rows of its metrics.jsonl (`{"step": ..., key: ...}`).

    key "eval/return": each row is one evaluation's mean return. key "episode/return":
    each row is one training episode, averaged per `window_steps` env steps (required).
    Values logged as strings (non-finite floats) are skipped.
    """
    rows = list(rows)
    if key == "eval/return":  # not an end evaluation the run trained past
        rows = scored_evaluations(rows)
    points = []
    for row in rows:
        if key not in row:
            continue
        try:
            points.append((int(row["step"]), float(row[key])))
        except (TypeError, ValueError):
            continue
    if key == "episode/return":
        if window_steps is None:
            raise ValueError("episode/return rows are single episodes: pass window_steps, "
                             "the env steps per reporting window (e.g. one rollout)")
        points = window_means(points, window_steps)
    return mmer(points, max_step)
