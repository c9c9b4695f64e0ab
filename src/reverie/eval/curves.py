"""Learning curves of several seeds on one step grid, with bootstrap bands.

A run's curve is a list of (env step, score) points; its value at a grid step is the last
point at or before it (what the run had reached by then), NaN before its first point and
after the last step it reached.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from reverie.eval.stats import interquartile_mean


def value_at(curve: Sequence[tuple[int, float]], grid: np.ndarray, reached: int) -> np.ndarray:
    """[len(grid)]: the curve's latest value at each grid step (NaN where undefined)."""
    out = np.full(len(grid), np.nan)
    if not curve:
        return out
    steps = np.array([s for s, _ in curve], dtype=float)
    values = np.array([v for _, v in curve], dtype=float)
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    idx = np.searchsorted(steps, grid, side="right") - 1
    ok = (idx >= 0) & (grid <= max(reached, steps[-1]))
    out[ok] = values[idx[ok]]
    return out


def step_grid(curves: Sequence[Sequence[tuple[int, float]]], top: int,
              points: int = 40, max_points: int = 200) -> np.ndarray:
    """The steps the curves were logged at, when they share few enough; else `points` evenly
    spaced steps up to `top`."""
    steps = sorted({s for c in curves for s, _ in c})
    if 0 < len(steps) <= max_points:
        return np.array(steps, dtype=float)
    return np.linspace(0, top, points + 1)[1:]


def seed_band(values: np.ndarray, reps: int = 500, confidence: float = 0.95,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """values [seeds, G] (NaN = missing) -> (mean, low, high) over seeds, each [G]; the band
    is a percentile bootstrap over seeds (equal to the mean where only one seed has data)."""
    values = np.asarray(values, dtype=float)
    with warnings.catch_warnings():  # all-NaN columns: 'Mean of empty slice'
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values, axis=0)
        n = values.shape[0]
        if n == 1:
            return mean, mean.copy(), mean.copy()
        idx = np.random.default_rng(seed).integers(0, n, size=(reps, n))
        samples = np.nanmean(values[idx], axis=1)  # [reps, G]
        alpha = (1.0 - confidence) / 2
        low, high = np.nanquantile(samples, [alpha, 1.0 - alpha], axis=0)
    return mean, low, high


def iqm_band(per_task: list[np.ndarray], reps: int = 500, confidence: float = 0.95,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """per_task: [seeds_t, G] (NaN = missing) -> IQM over tasks x seeds at each grid point with
    a stratified-bootstrap band, each [G]; NaN where one of the tasks that have values at
    all has no run with a value there: with tasks trained to different budgets the curve
    ends with the shortest (and starts at the latest first evaluation) instead of jumping
    where a task joins or drops out of the aggregate. A task with no values yet (a run
    still before its first evaluation) is left out rather than blanking the curve."""
    per_task = [v for v in per_task if np.isfinite(v).any()] or per_task
    G = per_task[0].shape[1]
    out = np.full((3, G), np.nan)
    alpha = (1.0 - confidence) / 2
    for g in range(G):
        rng = np.random.default_rng(seed)  # the same resamples at every step: a smooth band
        tasks = [v[:, g][np.isfinite(v[:, g])] for v in per_task]
        if not all(t.size for t in tasks):
            continue
        out[0, g] = interquartile_mean(tasks)
        boot = [t[rng.integers(0, t.size, size=(reps, t.size))] for t in tasks]
        out[1, g], out[2, g] = np.quantile(interquartile_mean(boot), [alpha, 1.0 - alpha])
    return out[0], out[1], out[2]

