"""One evidence campaign (issue 13): reverie's `imagine` agent on every task of a suite, run as
`reverie sweep`, beside Stable-Baselines3 peers at the same env steps, optionally DFS vs
uniform replay on some tasks; its JSON, plot and command line. bench/campaign_minatar.py and
bench/campaign_dmc.py are one `Campaign` each.

reverie's runs are one `reverie sweep` per part (the campaign's preset with its CPU budget's
overrides), so they are ordinary run folders under bench/runs/<name>/<part>/; a rerun skips
finished trials and resumes unfinished ones from their checkpoints. What a report needs of
each run is archived under bench/results/runs/<name>/ as it trains (bench/runlib.py). The
peers are SB3 algorithms with their default hyper-parameters (MlpPolicy on the flattened
observation, 1 thread), evaluated as reverie evaluates: the mean return of `eval_episodes`
greedy episodes every `eval_every` env steps, episodes seeded as reverie seeds them. The
random policy's mean return over 100 seeded episodes is the level below which nothing has
been learned.

Reported per task and method: the final evaluation (mean of the last two evaluations, per
seed), the area under the evaluation curve (mean over evaluations), their means over seeds
with 95% bootstrap intervals (`reverie.eval.stats`), and wall time; DFS vs uniform reports the
same for the two samplers on the same tasks, seeds and budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runlib  # noqa: E402
from runlib import (  # noqa: E402
    evaluations,
    keep,
    locate,
    progress,
    random_policy_return,
    run_sb3,
    seed_mean_ci,
    wall_seconds,
)

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = {"imagine": "reverie imagine (DFS)", "imagine-uniform": "reverie imagine (uniform)"}


@dataclass(frozen=True)
class Campaign:
    name: str  # results campaign_<name>.json/.png, runs under bench/runs/<name>/
    suite: str  # env ids are "<suite>:<task>" ("": the task is the env id)
    title: str  # a plot panel's title: "<title> <task>"
    tasks: tuple[str, ...]
    preset: str
    steps: int
    eval_every: int
    eval_episodes: int
    overrides: tuple[str, ...]  # `--set`s sizing the preset for this CPU
    peers: tuple[str, ...]  # Stable-Baselines3 algorithm names
    uniform_tasks: tuple[str, ...] = ()  # DFS vs uniform replay on these

    @property
    def runs(self) -> Path:
        return runlib.RUNS_ROOT / self.name

    @property
    def methods(self) -> list[str]:
        return ["imagine", *(["imagine-uniform"] if self.uniform_tasks else []),
                *(f"sb3-{p.lower()}" for p in self.peers)]

    def env(self, task: str) -> str:
        return f"{self.suite}:{task}" if self.suite else task

    def trial_folder(self, part: str, task: str, seed: int) -> Path:
        """A reverie trial's folder, as `reverie sweep` names it (grid key in the name)."""
        from reverie.distributed.grid import trial_name

        point = [("replay.sampler", "uniform")] if part == "uniform" else []
        return self.runs / part / trial_name(self.env(task), point, seed)

    def peer_folder(self, algo: str, task: str, seed: int) -> Path:
        return self.runs / f"sb3-{algo.lower()}" / task / f"s{seed}"


def label(method: str) -> str:
    return LABELS.get(method) or f"SB3 {method.removeprefix('sb3-').upper()}"


def _run_peer(c: Campaign, algo: str, task: str, seed: int) -> dict:
    return run_sb3(algo, c.env(task), seed, c.steps, c.eval_every, c.eval_episodes,
                   c.peer_folder(algo, task, seed))


def run_peers(c: Campaign, tasks: list[str], seeds: list[int], workers: int) -> None:
    runlib.require_sb3()
    jobs = [(algo, task, seed) for task in tasks for algo in c.peers for seed in seeds]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_run_peer, c, *job): job for job in jobs}
        for future in as_completed(futures):
            algo, task, seed = futures[future]
            r = future.result()
            print(f"sb3-{algo.lower()} {task} s{seed}: final {r['evals'][-1][1]:.2f} "
                  f"({r['wall_s']:.0f} s)", flush=True)


def run_imagine(c: Campaign, part: str, tasks: list[str], seeds: int, workers: int) -> None:
    """One `reverie sweep` over `tasks`; trial folders are archived every few minutes and
    as each trial ends, so a session that stops mid-sweep keeps what was logged."""
    from reverie.distributed.sweep import Sweep, run_sweep

    folders = [c.trial_folder(part, t, s) for t in tasks for s in range(seeds)]
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
    sweep = Sweep(preset=c.preset, envs=[c.env(t) for t in tasks], seeds=seeds,
                  steps=c.steps, overrides=list(c.overrides), grid=grid,
                  out=str(c.runs / part), workers=workers)

    def on_result(r: dict) -> None:
        archive(c.runs / part / r["name"])
        print(f"{part} {r['name']}: {r['status']}", flush=True)

    try:
        summary = run_sweep(sweep, on_result=on_result)
    finally:
        done.set()
        for f in folders:
            archive(f)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}), flush=True)


def read(c: Campaign, method: str, task: str, seed: int) -> dict | None:
    """A run's evaluation curve, env steps reached and wall time (None if nothing logged)."""
    if method.startswith("sb3-"):
        path = locate(c.peer_folder(method[4:].upper(), task, seed)) / "external.json"
        if not path.exists():
            return None
        r = json.loads(path.read_text())
        return {"env_steps": r["env_steps"], "evals": [tuple(e) for e in r["evals"]],
                "wall_s": r["wall_s"]}
    part = "uniform" if method == "imagine-uniform" else "imagine"
    run = locate(c.trial_folder(part, task, seed))
    if not (run / "metrics.jsonl").exists():
        return None
    from reverie.run.logger import read_jsonl

    return {"env_steps": progress(run), "evals": evaluations(run),
            "wall_s": round(wall_seconds(read_jsonl(run / "timing.jsonl")), 1)}


def final(evals: list[tuple[int, float]]) -> float:
    """The run's final score: mean of its last two evaluations (one evaluation is noisy)."""
    return float(np.mean([v for _, v in evals[-2:]]))


def summarise(c: Campaign, runs: dict[str, dict], seeds: list[int],
              randoms: dict[str, float]) -> dict:
    out: dict = {}
    for task in c.tasks:
        out[task] = {"random policy (100 episodes)": randoms[task]}
        for method in c.methods:
            rs = [runs[k] for s in seeds if (k := f"{task}/{method}/s{s}") in runs
                  and runs[k]["env_steps"] >= c.steps and runs[k]["evals"]]
            if not rs:
                continue
            finals = [final(r["evals"]) for r in rs]
            aucs = [float(np.mean([v for _, v in r["evals"]])) for r in rs]
            out[task][method] = {
                "seeds": len(rs), "final": seed_mean_ci(finals),
                "final_per_seed": [round(f, 2) for f in finals],
                "auc": seed_mean_ci(aucs),
                "above_random_all_seeds": all(f > randoms[task] for f in finals),
                "wall_s_median": round(float(np.median([r["wall_s"] for r in rs])), 1),
            }
    return out


def dfs_verdict(c: Campaign, summary: dict) -> dict:
    """Per task: does DFS beat uniform? Decided, for the final score and for the area under
    the evaluation curve each, by whether their intervals are apart."""
    verdict = {}
    for task in c.uniform_tasks:
        a = summary.get(task, {}).get("imagine")
        b = summary.get(task, {}).get("imagine-uniform")
        if not a or not b:
            continue
        parts = []
        for measure, name in (("final", "final"), ("auc", "area under the curve")):
            (alo, ahi), (blo, bhi) = a[measure]["ci95"], b[measure]["ci95"]
            said = ("DFS higher" if alo > bhi else "uniform higher" if blo > ahi
                    else "no difference resolved")
            parts.append(f"{name} {said} ({a[measure]['mean']:.2f} [{alo:.2f}–{ahi:.2f}] vs "
                         f"{b[measure]['mean']:.2f} [{blo:.2f}–{bhi:.2f}])")
        verdict[task] = ", ".join(parts)
    return verdict


def plot(c: Campaign, runs: dict[str, dict], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reverie.eval.curves import seed_band, value_at

    peer_colors = iter(["C1", "C2", "C3", "C4"])
    styles = {"imagine": ("C0", "-"), "imagine-uniform": ("C0", ":"),
              **{m: (next(peer_colors), "--") for m in c.methods if m.startswith("sb3-")}}
    fig, axes = plt.subplots(1, len(c.tasks), figsize=(max(9.0, 3.6 * len(c.tasks)), 3.8),
                             squeeze=False)
    grid = np.arange(c.eval_every, c.steps + 1, c.eval_every, dtype=float)
    handles = {}
    for ax, task in zip(axes[0], c.tasks):
        if not any(k.startswith(f"{task}/") for k in runs):
            ax.text(0.5, 0.8, "no runs yet", transform=ax.transAxes, ha="center",
                    va="center", color="grey")
        for method in c.methods:
            curves = [runs[k] for k in runs if k.startswith(f"{task}/{method}/")]
            if not curves:
                continue
            values = np.stack([value_at(r["evals"], grid, r["env_steps"]) for r in curves])
            mean, low, high = seed_band(values)
            color, style = styles[method]
            (line,) = ax.plot(grid / 1000, mean, style, color=color, marker="o", ms=3)
            ax.fill_between(grid / 1000, low, high, color=color, alpha=0.15)
            handles[label(method)] = line
        level = summary.get(task, {}).get("random policy (100 episodes)")
        if level is not None:
            handles["random policy"] = ax.axhline(level, color="grey", lw=1, ls="-.")
        ax.set_title(f"{c.title} {task}")
        ax.set_xlim(0, c.steps / 1000)
        ax.set_xlabel("env steps (thousands)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("evaluation return")
    fig.legend(list(handles.values()), list(handles), loc="lower center",
               ncol=min(len(handles), 5), frameon=False,
               title="mean over seeds, band: 95% bootstrap CI over seeds")
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(c: Campaign, seeds: list[int], results: Path = RESULTS) -> dict:
    """Read every run there is, write campaign_<name>.json and .png; runs short of the budget
    are listed as missing."""
    runs, missing = {}, []
    for task in c.tasks:
        for method in c.methods:
            if method == "imagine-uniform" and task not in c.uniform_tasks:
                continue
            for seed in seeds:
                key = f"{task}/{method}/s{seed}"
                r = read(c, method, task, seed)
                if r is not None:
                    runs[key] = r
                if r is None or r["env_steps"] < c.steps:
                    missing.append(key + (f" ({r['env_steps']} of {c.steps})" if r else ""))
    previous = results / f"campaign_{c.name}.json"
    randoms = (json.loads(previous.read_text()).get("random_policy", {})
               if previous.exists() else {})
    for task in c.tasks:
        if task not in randoms:
            randoms[task] = round(random_policy_return(c.env(task)), 3)
    summary = summarise(c, runs, seeds, randoms)
    result = {
        "benchmark": f"campaign_{c.name}", "env_steps": c.steps, "eval_every": c.eval_every,
        "eval_episodes": c.eval_episodes, "seeds": seeds, "methods": c.methods,
        "imagine": {"preset": c.preset, "overrides": list(c.overrides)},
        "peers": "stable-baselines3 defaults, MlpPolicy, 1 thread",
        "final_score": "mean of the last two evaluations", "random_policy": randoms,
        "summary": summary, "dfs_vs_uniform": dfs_verdict(c, summary), "missing": missing,
        "runs": {k: {**v, "evals": [list(e) for e in v["evals"]]} for k, v in runs.items()},
    }
    results.mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(result, indent=1) + "\n")
    plot(c, runs, summary, results / f"campaign_{c.name}.png")
    return result


SEEDS = 2  # the campaign's seeds (issue 13: at least 2)


def main(c: Campaign, doc: str) -> None:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    parts = ("all", "peers", "imagine", *(["uniform"] if c.uniform_tasks else []))
    p.add_argument("--part", choices=parts, default="all")
    p.add_argument("--tasks", "--games", nargs="+", default=list(c.tasks), choices=c.tasks)
    p.add_argument("--seeds", type=int, default=SEEDS, help="seeds 0..N-1")
    p.add_argument("--workers", type=int, default=2, help="runs at a time (1 thread each)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    seeds = list(range(args.seeds))
    if not args.report_only:
        if args.part in ("all", "peers"):
            run_peers(c, args.tasks, seeds, args.workers)
        if args.part in ("all", "imagine"):
            run_imagine(c, "imagine", args.tasks, args.seeds, args.workers)
        if args.part in ("all", "uniform"):
            tasks = [t for t in args.tasks if t in c.uniform_tasks]
            if tasks:
                run_imagine(c, "uniform", tasks, args.seeds, args.workers)
    # the report covers every seed of the campaign, however few this call trained (a call
    # with --seeds 1 once rewrote the JSON with its peers' second seeds left out)
    result = report(c, list(range(max(args.seeds, SEEDS))))
    print(json.dumps({"summary": result["summary"], "dfs_vs_uniform": result["dfs_vs_uniform"],
                      "missing": result["missing"]}, indent=1))
    print(f"archive: {runlib.ARCHIVE / c.name}")
