"""The report's figures: aggregates, learning curves, sample efficiency, performance profiles.

Each figure has labelled axes with units and one legend outside the plot area, and is sized
by its number of panels so that a report of one run and one of a hundred both read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reverie.eval.curves import iqm_band, seed_band, step_grid, value_at
from reverie.eval.scores import (
    PUBLISHED,
    PUBLISHED_NAMES,
    atari_game,
    published_hns,
    published_rows,
)
from reverie.eval.stats import Estimate, aggregate, profile_with_ci

if TYPE_CHECKING:
    from reverie.eval.report import Group

GRID = 40  # points per learning curve
DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(labels: list[str]) -> dict[str, tuple]:
    # tab10 cycled rather than tab20, whose light/dark pairs of one hue suggest groups that
    # belong together; the line styles below tell the cycles apart
    cmap = _plt().get_cmap("tab10")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


LINE_STYLES = ("-", "--", ":", "-.")


def _line_styles(groups: list[Group]) -> dict[str, str]:
    """A dash pattern per group label, cycling so that neighbours differ: two groups with the
    same curve (one hidden under the other when both were solid) both stay visible."""
    labels = list(dict.fromkeys(g.label for g in groups))
    return {label: LINE_STYLES[i % len(LINE_STYLES)] for i, label in enumerate(labels)}


def _save_with_legend(fig, handles: dict, path: Path, ncol_max: int = 4) -> Path:
    """One legend under the panels (label -> artist), then write the PNG and free the figure."""
    _legend_below(fig, list(handles.values()), list(handles), ncol_max)
    _save(fig, path)
    return path


def _save(fig, path: Path) -> None:
    # "tight" grows the canvas to whatever was drawn: a legend wider than the panels (long
    # group labels) is kept whole instead of cut at the figure's edge
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.1)
    _plt().close(fig)


LEGEND_FONT = 9  # points
# inches per character of a legend label at LEGEND_FONT (DejaVu Sans averages ~0.6 em), and
# per entry for its line sample and the gaps around it
CHAR_IN, ENTRY_IN = 0.6 * LEGEND_FONT / 72, 0.75


def legend_columns(labels: list[str], width_in: float, ncol_max: int = 4) -> int:
    """How many legend columns fit `width_in` inches: a column is as wide as the longest label."""
    entry = ENTRY_IN + CHAR_IN * max(len(label) for label in labels)
    return max(1, min(ncol_max, len(labels), int(width_in // entry)))


def _legend_below(fig, handles, labels, ncol_max: int = 4) -> None:
    if handles:
        ncol = legend_columns(labels, fig.get_figwidth(), ncol_max)
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False,
                   fontsize=LEGEND_FONT)


def _flat_ylim(ax, values: list[np.ndarray]) -> None:
    """A panel whose curves and bands (`values`: all that is drawn) are one value throughout
    (Pong at -21) gets a range around it instead of matplotlib's +-0.0004, whose ticks read
    as if the value moved."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    if finite.size and np.ptp(finite) <= 1e-9 * max(1.0, float(np.abs(finite).max())):
        y = float(finite[0])
        d = max(0.1 * abs(y), 1.0)
        ax.set_ylim(y - d, y + d)


def _kinds(groups: list[Group]) -> list:
    seen = {}
    for g in groups:
        seen.setdefault(g.kind.name, g.kind)
    return list(seen.values())


def _fmt_steps(ax) -> None:
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def aggregates_png(groups: list[Group], out: Path, colors: dict) -> Path:
    path = out / "aggregates.png"
    _save(aggregates_figure(groups, colors), path)
    return path


def aggregates_figure(groups: list[Group], colors: dict):
    """Mean, median, IQM (and optimality gap) with their CIs, one row of panels per kind
    of score; published agents as diamonds."""
    plt = _plt()
    kinds = _kinds(groups)
    names = ["mean", "median", "IQM"]
    if any(k.gamma is not None for k in kinds):
        names.append("optimality gap")
    rows = []
    for kind in kinds:
        mine = [g for g in groups if g.kind.name == kind.name]
        tasks = len({e for g in mine for e in g.runs})
        bars = [(g.label, aggregate(g.scores(), reps=2000, gamma=kind.gamma), False)
                for g in mine]
        # a group over fewer of the row's tasks averages other tasks: its label says so
        tick_names = {g.label: g.label if len(g.runs) == tasks else
                       f"{g.label} ({len(g.runs)} of {tasks} tasks)" for g in mine}
        if kind.name == "HNS":
            games = sorted({atari_game(e) for g in mine for e in g.runs})
            for p in published_rows(games):
                est = {n: Estimate(v, v, v) for n, v in p.values.items()}
                bars.append((f"{p.name} (published)", est, True))
        rows.append((kind, bars, tick_names))
    n_bars = max(len(b) for _, b, _ in rows)
    fig, axes = plt.subplots(len(rows), len(names), squeeze=False, layout="constrained",
                             # per row of panels: its bars, plus room for the titles
                             # and the axis label (else one group's row collapses)
                             figsize=(3.1 * len(names) + 1.5,
                                      0.6 + len(rows) * (1.1 + 0.38 * n_bars)))
    for r, (kind, bars, tick_names) in enumerate(rows):
        for c, name in enumerate(names):
            ax = axes[r][c]
            if name == "optimality gap" and kind.gamma is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "no common target\nfor raw returns", ha="center",
                        va="center", fontsize=9, transform=ax.transAxes)
                continue
            scale = kind.scale
            for i, (label, est, published) in enumerate(bars):
                if name not in est:  # Drama publishes only its mean and median
                    continue
                e = est[name]
                y = len(bars) - 1 - i
                if published:
                    ax.plot(e.value * scale, y, "D", color="0.35", ms=6)
                elif e.high > e.low:
                    ax.barh(y, (e.high - e.low) * scale, left=e.low * scale, height=0.6,
                            color=colors[label], alpha=0.85)
                    ax.plot([e.value * scale] * 2, [y - 0.3, y + 0.3], color="black", lw=1.5)
                else:  # a zero-width interval (every seed alike, e.g. all at the maximum)
                    ax.plot(e.value * scale, y, "o", color=colors[label], ms=7, mec="black")
            ax.set_yticks(range(len(bars)))
            ax.set_yticklabels([tick_names.get(b[0], b[0]) for b in reversed(bars)] if c == 0
                               else [])
            ax.set_ylim(-0.6, len(bars) - 0.4)
            # a bar's left end is a "sticky" edge that margins do not pass: without this a
            # value at the data's extreme (CartPole's 500, a 0% HNS) sat on the axis spine
            ax.use_sticky_edges = False
            ax.margins(x=0.08)
            unit = f"{kind.name} (%)" if kind.percent else kind.label
            if name == "optimality gap":  # how far below the target, not a score
                unit = f"{kind.name} gap to {kind.gamma * kind.scale:g}" + \
                    (" (%)" if kind.percent else "")
            if len(unit) > 28:  # "return (raw, InvertedPendulum-v5)" ran into its neighbour
                unit = unit.replace(", ", ",\n", 1)
            ax.set_xlabel(unit, fontsize=9)
            ax.set_title(name + ("\n(lower is better)" if name == "optimality gap" else ""),
                         fontsize=10)
            ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Aggregate scores: bar = 95% CI, line = point estimate (a dot where the "
                 "CI has zero width)"
                 + (", ◆ = published at its own budget" if any(k.name == "HNS" for k in kinds)
                    else ""), fontsize=10)
    return fig


def _grid(runs) -> np.ndarray:
    top = max(max(r.target_steps, r.env_steps) for r in runs)
    return step_grid([r.curve for r in runs], top, points=GRID)


def curves_png(groups: list[Group], out: Path, colors: dict) -> Path:
    plt = _plt()
    dashes = _line_styles(groups)
    envs = sorted({e for g in groups for e in g.runs})
    ncols = min(4, len(envs))
    nrows = math.ceil(len(envs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                             figsize=(4.0 * ncols + 0.5, 3.0 * nrows + 0.6))
    handles: dict[str, object] = {}
    kinds_seen: list[str] = [""]
    for i, env in enumerate(envs):
        ax = axes[i // ncols][i % ncols]
        kind = None
        shown: list[np.ndarray] = []
        for g in groups:
            runs = g.runs.get(env)
            if not runs:
                continue
            kind = g.kind
            grid = _grid(runs)
            values = np.stack([value_at(r.curve, grid, r.env_steps) for r in runs])
            mean, low, high = (kind.scale * v for v in seed_band(values))
            shown += [mean, low, high] if len(runs) > 1 else [mean]  # what is drawn
            ok = np.isfinite(mean)
            (line,) = ax.plot(grid[ok], mean[ok], color=colors[g.label], lw=1.6,
                              ls=dashes[g.label], marker="o" if ok.sum() <= 12 else None, ms=3)
            if len(runs) > 1:
                ax.fill_between(grid[ok], low[ok], high[ok], color=colors[g.label], alpha=0.2,
                                lw=0)
            handles[g.label] = line
        _flat_ylim(ax, shown)
        ax.set_title(env, fontsize=10)
        ax.set_xlabel("env steps", fontsize=9)
        if kind is not None and (i % ncols == 0 or kinds_seen[-1] != kind.name):
            ax.set_ylabel(kind.label, fontsize=9)  # once per row unless the unit changes
        kinds_seen.append(kind.name if kind else "")
        _fmt_steps(ax)
        ax.grid(alpha=0.3)
    for j in range(len(envs), nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    return _save_with_legend(fig, handles, out / "curves.png")


def _panel_grid(plt, n: int, ncols_max: int = 3):
    """A figure of `n` panels, at most `ncols_max` per row (score kinds: one per suite)."""
    ncols = min(ncols_max, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                             figsize=(5.2 * ncols + 0.5, 3.8 * nrows))
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


def sample_efficiency_png(groups: list[Group], out: Path, colors: dict) -> Path:
    plt = _plt()
    dashes = _line_styles(groups)
    kinds = _kinds(groups)
    fig, panels = _panel_grid(plt, len(kinds))
    handles: dict[str, object] = {}
    for k, kind in enumerate(kinds):
        ax = panels[k]
        shown: list[np.ndarray] = []
        for g in [g for g in groups if g.kind.name == kind.name]:
            grid = _grid([r for rs in g.runs.values() for r in rs])
            per_task = [np.stack([value_at(r.curve, grid, r.env_steps) for r in rs])
                        for _, rs in sorted(g.runs.items())]
            mid, low, high = (kind.scale * v for v in iqm_band(per_task))
            shown += [mid, low, high] if g.n_runs > 1 else [mid]  # what is drawn
            ok = np.isfinite(mid)
            (line,) = ax.plot(grid[ok], mid[ok], color=colors[g.label], lw=1.6,
                              ls=dashes[g.label], marker="o" if ok.sum() <= 12 else None, ms=3)
            if g.n_runs > 1:
                ax.fill_between(grid[ok], low[ok], high[ok], color=colors[g.label], alpha=0.2,
                                lw=0)
            handles[g.label] = line
        _flat_ylim(ax, shown)
        ax.set_xlabel("env steps", fontsize=9)
        ax.set_ylabel(f"IQM {kind.label}", fontsize=9)
        ax.set_title(f"{kind.name}: IQM over tasks x seeds", fontsize=10)
        _fmt_steps(ax)
        ax.grid(alpha=0.3)
    return _save_with_legend(fig, handles, out / "sample_efficiency.png")


def profile_thresholds(scores: list[float], gamma: float | None) -> np.ndarray:
    """The performance profile's thresholds τ: the runs' scores (up to `gamma`, the target,
    and from 0 where there is one) with 5% of their range before and 15% after. Runs that
    all score one value v get ±5% of |v| (at least 0.05) around it: Acrobot's -500 for
    every run spans -525 to -425 (±50% of |v| drew -750 to +250, a return no run can
    have)."""
    lo, hi = min(scores), max(scores)
    if gamma is not None:  # show the way up to the target (human level, MMER 1)
        lo, hi = min(lo, 0.0), max(hi, gamma)
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1.0)
    return np.linspace(lo - pad, hi + 3 * pad, 201)


def profile_png(groups: list[Group], out: Path, colors: dict) -> Path:
    plt = _plt()
    dashes = _line_styles(groups)
    kinds = _kinds(groups)
    fig, panels = _panel_grid(plt, len(kinds))
    handles: dict[str, object] = {}
    for k, kind in enumerate(kinds):
        ax = panels[k]
        mine = [g for g in groups if g.kind.name == kind.name]
        published: dict[str, list[np.ndarray]] = {}
        clipped = False
        if kind.name == "HNS":
            games = sorted({atari_game(e) for g in mine for e in g.runs})
            published = {f"{PUBLISHED_NAMES[a]} (published)":
                         [np.array([v]) for v in published_hns(a, games).values()]
                         for a in PUBLISHED}
        # the axis follows reverie's runs: published agents' far tails (HNS 7 on Boxing)
        # would squash them into a sliver
        taus = profile_thresholds([float(s) for g in mine for s in np.concatenate(g.scores())],
                                  kind.gamma)
        clipped = any(float(x[0]) > taus[-1] for v in published.values() for x in v)
        shown = kind.scale * taus  # the x axis in the unit the tables use (HNS in %)
        for g in mine:
            p, low, high = profile_with_ci(g.scores(), taus)
            (line,) = ax.plot(shown, p, color=colors[g.label], lw=1.6, ls=dashes[g.label],
                              drawstyle="steps-post")
            if g.n_runs > 1:
                ax.fill_between(shown, low, high, color=colors[g.label], alpha=0.2, lw=0,
                                step="post")
            handles[g.label] = line
        styles = iter([("--", "0.25"), (":", "0.1"), ("-.", "0.45"), ((0, (5, 1, 1, 1)), "0.6")])
        for name, scores in published.items():
            p, _, _ = profile_with_ci(scores, taus, reps=1)
            ls, shade = next(styles)
            (line,) = ax.plot(shown, p, color=shade, lw=1.2, ls=ls, drawstyle="steps-post")
            handles[name] = line
        ax.set_xlabel(f"threshold τ ({kind.label})", fontsize=9)
        ax.set_ylabel("fraction of runs with score > τ", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(shown[0], shown[-1])
        ax.set_title(f"{kind.name}: performance profile"
                     + (" (published tails go on past the axis)" if clipped else ""), fontsize=10)
        ax.grid(alpha=0.3)
    return _save_with_legend(fig, handles, out / "profile.png", ncol_max=3)


def write_all(groups: list[Group], out: Path) -> dict[str, Path]:
    """Every figure of the report, by name."""
    colors = _colors([g.label for g in groups])
    figures = {
        "aggregates": aggregates_png(groups, out, colors),
        "curves": curves_png(groups, out, colors),
        "sample_efficiency": sample_efficiency_png(groups, out, colors),
        "profile": profile_png(groups, out, colors),
    }
    return figures
