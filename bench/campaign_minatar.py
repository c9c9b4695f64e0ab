"""MinAtar, all five games: the world-model agent beside Stable-Baselines3 DQN and PPO at the
same env steps, and DFS vs uniform replay on two games (issue 13's campaign, parts 1 and 4).

    python bench/campaign_minatar.py               # peers, then the reverie sweeps (resumable)
    python bench/campaign_minatar.py --part peers  # SB3 DQN and PPO only
    python bench/campaign_minatar.py --part imagine --games breakout asterix
    python bench/campaign_minatar.py --report-only # JSON and plot from what has run

reverie's runs are one `reverie sweep` per part (`--preset minatar` with the CPU budget's
overrides below), so they are ordinary run folders under bench/runs/minatar/<part>/; a
rerun skips finished trials and resumes unfinished ones from their checkpoints. What a
report needs of each run is archived under bench/results/runs/minatar/ as it trains
(bench/runlib.py). The peers are SB3's DQN and PPO with their default hyper-parameters
(MlpPolicy on the flattened 10x10xC planes, 1 thread), evaluated as reverie evaluates: the
mean return of `EVAL_EPISODES` greedy episodes every `EVAL_EVERY` env steps, episodes seeded
as reverie seeds them. The random policy's mean return over 100 seeded episodes is the
level below which nothing has been learned.

Reported per game and method: the final evaluation (mean of the last two evaluations, per
seed), the area under the evaluation curve (mean over evaluations), their means over seeds
with 95% bootstrap intervals (`reverie.eval.stats`), and wall time; the DFS vs uniform
comparison reports the same for the two samplers on the same games, seeds and budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import (  # noqa: E402
    ARCHIVE,
    RUNS_ROOT,
    evaluations,
    keep,
    locate,
    progress,
    random_policy_return,
    run_sb3,
    seed_mean_ci,
    wall_seconds,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUNS = RUNS_ROOT / "minatar"
GAMES = ("breakout", "asterix", "freeway", "seaquest", "space_invaders")
DFS_GAMES = ("breakout", "asterix")  # part 4: DFS vs uniform on these
STEPS = 20_000
EVAL_EVERY = 2_000
EVAL_EPISODES = 10
# The `minatar` preset sized for this CPU: one world-model + actor-critic update every 8 env
# steps instead of every step (train_ratio 64 with 16 x 32 sequences), a smaller imagination
# batch, and the evaluation schedule above. The preset's own budget (50k env steps, one
# update per step) is ~7 h per run on one core here; this one took ~50 min per run with two
# runs side by side on the 2 cores (1 thread each).
OVERRIDES = ["run.train_ratio=64", "imagine.imag_batch=256", f"run.eval_every={EVAL_EVERY}",
             f"run.eval_episodes={EVAL_EPISODES}", "run.checkpoint_every=2000"]
PEERS = ("DQN", "PPO")
METHODS = ("imagine", *(f"sb3-{p.lower()}" for p in PEERS))


def trial_folder(part: str, game: str, seed: int) -> Path:
    """A reverie trial's folder, as `reverie sweep` names it (grid key in the name)."""
    from reverie.distributed.grid import trial_name

    point = [("replay.sampler", "uniform")] if part == "uniform" else []
    return RUNS / part / trial_name(f"minatar:{game}", point, seed)


def peer_folder(algo: str, game: str, seed: int) -> Path:
    return RUNS / f"sb3-{algo.lower()}" / game / f"s{seed}"


def run_peer(algo: str, game: str, seed: int) -> dict:
    return run_sb3(algo, f"minatar:{game}", seed, STEPS, EVAL_EVERY, EVAL_EPISODES,
                   peer_folder(algo, game, seed))


def run_peers(games: list[str], seeds: list[int], workers: int) -> None:
    jobs = [(algo, game, seed) for game in games for algo in PEERS for seed in seeds]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_peer, *job): job for job in jobs}
        for future in as_completed(futures):
            algo, game, seed = futures[future]
            r = future.result()
            print(f"sb3-{algo.lower()} {game} s{seed}: final {r['evals'][-1][1]:.2f} "
                  f"({r['wall_s']:.0f} s)", flush=True)


def run_imagine(part: str, games: list[str], seeds: int, workers: int) -> None:
    """One `reverie sweep` over `games`; trial folders are archived every few minutes and
    as each trial ends, so a session that stops mid-sweep keeps what was logged."""
    from reverie.distributed.sweep import Sweep, run_sweep

    folders = [trial_folder(part, g, s) for g in games for s in range(seeds)]
    done, lock = threading.Event(), threading.Lock()

    def archive(folder: Path) -> None:
        with lock:  # the periodic archiver and a trial's end may copy the same folder
            if (folder / "config.yaml").exists():
                keep(folder)

    def archive_all() -> None:
        while not done.wait(300):
            for f in folders:
                archive(f)

    archiver = threading.Thread(target=archive_all, daemon=True)
    archiver.start()
    grid = ["replay.sampler=uniform"] if part == "uniform" else []
    sweep = Sweep(preset="minatar", envs=[f"minatar:{g}" for g in games], seeds=seeds,
                  steps=STEPS, overrides=OVERRIDES, grid=grid, out=str(RUNS / part),
                  workers=workers)

    def on_result(r: dict) -> None:
        archive(RUNS / part / r["name"])
        print(f"{part} {r['name']}: {r['status']}", flush=True)

    try:
        summary = run_sweep(sweep, on_result=on_result)
    finally:
        done.set()
        for f in folders:
            archive(f)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}), flush=True)


def read(method: str, game: str, seed: int) -> dict | None:
    """A run's evaluation curve, env steps reached and wall time (None if nothing logged)."""
    if method.startswith("sb3-"):
        path = locate(peer_folder(method[4:].upper(), game, seed)) / "sb3.json"
        if not path.exists():
            return None
        r = json.loads(path.read_text())
        return {"env_steps": r["env_steps"], "evals": [tuple(e) for e in r["evals"]],
                "wall_s": r["wall_s"]}
    part = "uniform" if method == "imagine-uniform" else "imagine"
    run = locate(trial_folder(part, game, seed))
    if not (run / "metrics.jsonl").exists():
        return None
    from reverie.run.logger import read_jsonl

    return {"env_steps": progress(run), "evals": evaluations(run),
            "wall_s": round(wall_seconds(read_jsonl(run / "timing.jsonl")), 1)}


def final(evals: list[tuple[int, float]]) -> float:
    """The run's final score: mean of its last two evaluations (one evaluation of 10
    episodes is noisy)."""
    return float(np.mean([v for _, v in evals[-2:]]))


def summarise(runs: dict[str, dict], games: list[str], methods: list[str],
              seeds: list[int], randoms: dict[str, float]) -> dict:
    out: dict = {}
    for game in games:
        out[game] = {"random policy (100 episodes)": randoms[game]}
        for method in methods:
            rs = [runs[k] for s in seeds if (k := f"{game}/{method}/s{s}") in runs
                  and runs[k]["env_steps"] >= STEPS and runs[k]["evals"]]
            if not rs:
                continue
            finals = [final(r["evals"]) for r in rs]
            aucs = [float(np.mean([v for _, v in r["evals"]])) for r in rs]
            out[game][method] = {
                "seeds": len(rs), "final": seed_mean_ci(finals),
                "final_per_seed": [round(f, 2) for f in finals],
                "auc": seed_mean_ci(aucs),
                "above_random_all_seeds": all(f > randoms[game] for f in finals),
                "wall_s_median": round(float(np.median([r["wall_s"] for r in rs])), 1),
            }
    return out


def dfs_verdict(summary: dict) -> dict:
    """Per game: does DFS beat uniform? Decided by the intervals of the final score only."""
    verdict = {}
    for game in DFS_GAMES:
        a, b = summary.get(game, {}).get("imagine"), summary.get(game, {}).get("imagine-uniform")
        if not a or not b:
            continue
        (alo, ahi), (blo, bhi) = a["final"]["ci95"], b["final"]["ci95"]
        verdict[game] = ("dfs better" if alo > bhi else "uniform better" if blo > ahi
                         else "no difference resolved (intervals overlap)")
    return verdict


def plot(runs: dict[str, dict], summary: dict, games: list[str], methods: list[str],
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reverie.eval.curves import seed_band, value_at

    styles = {"imagine": ("C0", "-", "reverie imagine (DFS)"),
              "imagine-uniform": ("C0", ":", "reverie imagine (uniform)"),
              "sb3-dqn": ("C1", "--", "SB3 DQN"), "sb3-ppo": ("C2", "--", "SB3 PPO")}
    fig, axes = plt.subplots(1, len(games), figsize=(max(9.0, 3.6 * len(games)), 3.8),
                             squeeze=False)
    grid = np.arange(EVAL_EVERY, STEPS + 1, EVAL_EVERY, dtype=float)
    handles = {}
    for ax, game in zip(axes[0], games):
        for method in methods:
            curves = [runs[k] for k in runs if k.startswith(f"{game}/{method}/")]
            if not curves:
                continue
            values = np.stack([value_at(r["evals"], grid, r["env_steps"]) for r in curves])
            mean, low, high = seed_band(values)
            color, style, label = styles[method]
            (line,) = ax.plot(grid / 1000, mean, style, color=color, marker="o", ms=3)
            ax.fill_between(grid / 1000, low, high, color=color, alpha=0.15)
            handles[f"{label}"] = line
        level = summary.get(game, {}).get("random policy (100 episodes)")
        if level is not None:
            handles["random policy"] = ax.axhline(level, color="grey", lw=1, ls="-.")
        ax.set_title(f"MinAtar {game}")
        ax.set_xlabel("env steps (thousands)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("evaluation return")
    fig.legend(list(handles.values()), list(handles), loc="lower center",
               ncol=min(len(handles), 5), frameon=False,
               title="mean over seeds, band: 95% bootstrap CI over seeds")
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(seeds: list[int]) -> dict:
    methods = ["imagine", "imagine-uniform", *METHODS[1:]]
    runs, missing = {}, []
    for game in GAMES:
        for method in methods:
            if method == "imagine-uniform" and game not in DFS_GAMES:
                continue
            for seed in seeds:
                key = f"{game}/{method}/s{seed}"
                r = read(method, game, seed)
                if r is not None:
                    runs[key] = r
                if r is None or r["env_steps"] < STEPS:
                    missing.append(key + (f" ({r['env_steps']} of {STEPS})" if r else ""))
    previous = RESULTS / "campaign_minatar.json"
    randoms = (json.loads(previous.read_text()).get("random_policy", {})
               if previous.exists() else {})
    for game in GAMES:
        if game not in randoms:
            randoms[game] = round(random_policy_return(f"minatar:{game}"), 3)
    summary = summarise(runs, list(GAMES), methods, seeds, randoms)
    result = {
        "benchmark": "campaign_minatar", "env_steps": STEPS, "eval_every": EVAL_EVERY,
        "eval_episodes": EVAL_EPISODES, "seeds": seeds,
        "imagine": {"preset": "minatar", "overrides": OVERRIDES},
        "peers": "stable-baselines3 defaults, MlpPolicy, 1 thread",
        "final_score": "mean of the last two evaluations", "random_policy": randoms,
        "summary": summary, "dfs_vs_uniform": dfs_verdict(summary), "missing": missing,
        "runs": {k: {**v, "evals": [list(e) for e in v["evals"]]} for k, v in runs.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(result, indent=1) + "\n")
    plot(runs, summary, list(GAMES), methods, RESULTS / "campaign_minatar.png")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("all", "peers", "imagine", "uniform"), default="all")
    p.add_argument("--games", nargs="+", default=list(GAMES), choices=GAMES)
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1")
    p.add_argument("--workers", type=int, default=2, help="runs at a time (1 thread each)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    seeds = list(range(args.seeds))
    if not args.report_only:
        if args.part in ("all", "peers"):
            run_peers(args.games, seeds, args.workers)
        if args.part in ("all", "imagine"):
            run_imagine("imagine", args.games, args.seeds, args.workers)
        if args.part in ("all", "uniform"):
            games = [g for g in args.games if g in DFS_GAMES]
            if games:
                run_imagine("uniform", games, args.seeds, args.workers)
    result = report(seeds)
    print(json.dumps({"summary": result["summary"], "dfs_vs_uniform": result["dfs_vs_uniform"],
                      "missing": result["missing"]}, indent=1))
    print(f"archive: {ARCHIVE / 'minatar'}")


if __name__ == "__main__":
    main()
