"""Aggregate scores over tasks x seeds with stratified-bootstrap confidence intervals.

The estimators and the interval follow Agarwal et al., "Deep RL at the Edge of the
Statistical Precipice" (NeurIPS 2021), the paper behind rliable:
- mean and median over tasks of each task's mean score over seeds;
- IQM: the mean of the middle 50% of all (task, seed) scores, i.e. a 25%-trimmed mean that
  drops floor(n/4) scores at each end (as `scipy.stats.trim_mean(x, 0.25)`);
- optimality gap: how far the scores fall short of `gamma` (1 = human level for HNS), gap
  = gamma - mean(min(score, gamma)); lower is better;
- stratified bootstrap: each resample draws each task's seeds with replacement, within
  that task, so every task keeps its weight; the interval is the percentile interval.
- performance profile: for each threshold tau, the mean over tasks of the fraction of the
  task's runs with a score above tau.

Written here rather than depending on rliable, which pulls in arch, statsmodels, pandas and
seaborn for what is a few lines of numpy each; the estimators are tested on hand-computed
values and the bootstrap against a plain loop.

Scores come as a list of per-task arrays `[..., n_t]` (seeds may differ per task); leading
dimensions are bootstrap replicates, so every estimator evaluates all replicates at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Scores = Sequence[np.ndarray]  # per task: [..., seeds]


def _task_means(scores: Scores) -> np.ndarray:
    """[..., tasks]: each task's mean over its seeds."""
    return np.stack([np.mean(s, axis=-1) for s in scores], axis=-1)


def mean_score(scores: Scores) -> np.ndarray:
    """Mean over tasks of the per-task mean over seeds."""
    return np.mean(_task_means(scores), axis=-1)


def median_score(scores: Scores) -> np.ndarray:
    """Median over tasks of the per-task mean over seeds."""
    return np.median(_task_means(scores), axis=-1)


def interquartile_mean(scores: Scores) -> np.ndarray:
    """Mean of the middle 50% of all (task, seed) scores: floor(n/4) dropped at each end."""
    pooled = np.sort(np.concatenate([np.asarray(s, dtype=float) for s in scores], axis=-1),
                     axis=-1)
    n = pooled.shape[-1]
    cut = n // 4
    return np.mean(pooled[..., cut: n - cut], axis=-1)


def optimality_gap(scores: Scores, gamma: float = 1.0) -> np.ndarray:
    """gamma - mean over tasks of mean(min(score, gamma)): the shortfall from `gamma`."""
    return gamma - mean_score([np.minimum(s, gamma) for s in scores])


ESTIMATORS: dict[str, Callable[[Scores], np.ndarray]] = {
    "mean": mean_score,
    "median": median_score,
    "IQM": interquartile_mean,
    "optimality gap": optimality_gap,
}


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% (by default) stratified-bootstrap interval."""

    value: float
    low: float
    high: float


def _resample(scores: Scores, reps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per task [reps, n_t]: the task's seeds drawn with replacement (stratified by task)."""
    out = []
    for s in scores:
        s = np.asarray(s, dtype=float)
        out.append(s[rng.integers(0, s.shape[-1], size=(reps, s.shape[-1]))])
    return out


def bootstrap_ci(
    scores: Scores,
    estimator: Callable[[Scores], np.ndarray],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """`estimator` on `scores` and its stratified-bootstrap percentile interval.

    scores: one array of seed scores per task, e.g. `[[1., 2., 3.]]` for one task of three
    seeds; a flat list of numbers is refused (read as tasks of one seed each, it would give
    an interval of zero width)."""
    if isinstance(scores, np.ndarray) and scores.dtype != object:
        flat = scores.ndim < 2  # [tasks, seeds] is fine
    else:
        scores = list(scores)  # a generator is read once
        flat = any(np.ndim(s) == 0 for s in scores)
    if flat:
        raise ValueError("scores must be one array of seed scores per task, e.g. "
                         "[[1.0, 2.0, 3.0]] for one task of 3 seeds; got single numbers "
                         "where a task's scores should be")
    scores = [np.asarray(s, dtype=float).reshape(-1) for s in scores]
    if not scores or any(s.size == 0 for s in scores):
        raise ValueError("every task needs at least one score")
    value = float(estimator(scores))
    samples = estimator(_resample(scores, reps, np.random.default_rng(seed)))
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return Estimate(value, float(low), float(high))


def aggregate(scores: Scores, reps: int = 2000, seed: int = 0,
              gamma: float | None = 1.0) -> dict[str, Estimate]:
    """Mean, median, IQM (and optimality gap when `gamma` is given) with intervals."""
    out = {}
    for name, fn in ESTIMATORS.items():
        if name == "optimality gap":
            if gamma is None:
                continue
            fn = lambda s, g=gamma: optimality_gap(s, g)  # noqa: E731
        out[name] = bootstrap_ci(scores, fn, reps=reps, seed=seed)
    return out


def performance_profile(scores: Scores, taus: np.ndarray) -> Callable[[Scores], np.ndarray]:
    """Estimator of the run-score distribution at `taus`: [..., len(taus)]."""
    taus = np.asarray(taus, dtype=float)

    def profile(s: Scores) -> np.ndarray:
        fractions = [np.mean(np.asarray(x)[..., None, :] > taus[:, None], axis=-1) for x in s]
        return np.mean(np.stack(fractions, axis=-1), axis=-1)

    return profile


def profile_with_ci(scores: Scores, taus: np.ndarray, reps: int = 2000,
                    confidence: float = 0.95, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(profile, low, high), each [len(taus)]: performance profile and its pointwise interval."""
    scores = [np.asarray(s, dtype=float).reshape(-1) for s in scores]
    fn = performance_profile(scores, taus)
    samples = fn(_resample(scores, reps, np.random.default_rng(seed)))
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(samples, [alpha, 1.0 - alpha], axis=0)
    return fn(scores), low, high
