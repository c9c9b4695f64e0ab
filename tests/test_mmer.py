"""MMER on hand-computed runs."""

from __future__ import annotations

import json

import pytest

from reverie.eval.mmer import (
    mmer,
    mmer_curve,
    mmer_from_metrics,
    normalized_mmer,
    steps_to_reach,
    window_means,
)


def test_mmer_is_the_running_max_of_means_at_the_end():
    points = [(300, 0.1), (100, -0.5), (200, 0.4), (400, float("nan")), (500, 0.2)]
    assert mmer_curve(points) == [(100, -0.5), (200, 0.4), (300, 0.4), (500, 0.4)]
    assert mmer(points) == 0.4
    assert mmer(points, max_step=100) == -0.5  # the budget cuts later points
    assert normalized_mmer(0.4) == pytest.approx(0.7)
    assert normalized_mmer(-1.0) == 0.0 and normalized_mmer(1.0) == 1.0
    with pytest.raises(ValueError, match="no finite mean return"):
        mmer([(10, float("nan"))])


def test_mmer_from_metrics_rows():
    lines = [
        {"step": 100, "episode/return": -1.0, "episode/length": 10},
        {"step": 150, "episode/return": 0.0},
        {"step": 200, "eval/return": 0.25, "eval/return_std": 0.1},
        {"step": 250, "episode/return": 1.0},
        {"step": 400, "eval/return": "nan"},
        {"step": 400, "episode/return": 0.5},
        {"step": 600, "episode/return": 0.0},
        {"step": 600, "eval/return": 0.1},
    ]
    rows = [json.loads(json.dumps(r)) for r in lines]
    assert mmer_from_metrics(rows) == 0.25
    # windows of 200 steps: (0, 200] -> mean(-1, 0) = -0.5, (200, 400] -> mean(1, .5) = .75,
    # (400, 600] -> 0
    assert window_means([(r["step"], r["episode/return"]) for r in rows
                         if "episode/return" in r], 200) == [(200, -0.5), (400, 0.75),
                                                            (600, 0.0)]
    assert mmer_from_metrics(rows, "episode/return", window_steps=200) == 0.75
    assert mmer_from_metrics(rows, "episode/return", window_steps=200, max_step=200) == -0.5
    with pytest.raises(ValueError, match="window_steps"):
        mmer_from_metrics(rows, "episode/return")


def test_steps_to_reach_is_the_first_step_at_or_above_the_target():
    points = [(3000, 0.9), (1000, -0.5), (2000, 0.4), (4000, 0.2), (5000, float("nan"))]
    assert steps_to_reach(points, 0.4) == 2000  # ties count; order of the points does not
    assert steps_to_reach(points, 0.5) == 3000
    assert steps_to_reach(points, -1.0) == 1000
    assert steps_to_reach(points, 0.95) is None
    assert steps_to_reach([], 0.0) is None


def test_an_end_evaluation_the_run_trained_past_is_not_scored(tmp_path, monkeypatch):
    """An extended run's first end evaluation (marked "eval": "end") raised its MMER and was a
    point of curve.png; the run's own last end evaluation still counts."""
    from reverie.run.logger import plot_curve, scored_evaluations

    rows = [{"step": 200, "eval/return": 0.1}, {"step": 250, "eval": "end", "eval/return": 0.9},
            {"step": 400, "eval/return": 0.2}, {"step": 450, "eval": "end", "eval/return": 0.3}]
    assert [r["step"] for r in scored_evaluations(rows)] == [200, 400, 450]
    assert [r["step"] for r in scored_evaluations(rows, last=500)] == [200, 400]
    assert mmer_from_metrics(rows) == 0.3
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import matplotlib.axes

    saved, plot = [], matplotlib.axes.Axes.plot

    def keep(ax, *args, **kwargs):
        saved.append(args)
        return plot(ax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", keep)
    plot_curve(tmp_path)
    assert [list(a[0]) for a in saved] == [[200, 400, 450]]  # the evaluations' line
