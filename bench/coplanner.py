"""COPlanner vs MBPO vs Stable-Baselines3 SAC at equal env steps, and COPlanner inside the
world-model agent (on vs off), 3 seeds each, the same evaluation for all.

    python bench/coplanner.py                           # every task, method and seed
    python bench/coplanner.py --tasks pendulum --methods coplanner mbpo --seeds 0
    python bench/coplanner.py --report-only

reverie runs are ordinary, resumable `reverie train` run folders under bench/runs/coplanner/
(see bench/runlib.py; their logs are archived under bench/results/runs/coplanner/); SAC is
SB3's SAC with its defaults. Evaluation for every method: mean return of `run.eval_episodes`
greedy episodes every `run.eval_every` env steps, episodes seeded as reverie seeds its
evaluation episodes. The JSON covers every task and method (those not run yet are listed as
missing), whichever subset a call trains. Reported per task and method: the final
evaluation, the area under the evaluation curve (mean over evaluations) and their min-max
over seeds; a method that does not help is shown as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import (  # noqa: E402
    ensure_run,
    evaluations,
    locate,
    progress,
    run_sb3,
    seed_mean_ci,
    wall_seconds,
    write_result,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "bench" / "runs" / "coplanner"
# task -> (gymnasium/reverie env id, steps, eval every, eval episodes, mbpo preset)
TASKS = {
    "pendulum": ("Pendulum-v1", 5000, 500, 5, "mbpo-pendulum"),
    "inverted-pendulum": ("InvertedPendulum-v5", 5000, 500, 5, "mbpo-inverted-pendulum"),
    "cartpole-swingup": ("dmc:cartpole-swingup", 10000, 1000, 5, "mbpo-dmc"),
}
# the DMC campaign's CPU budget for dmc-proprio (bench/campaign_dmc.py); its own cadence, one
# update per 2 env steps, took 1.5-3.6 h per run here
IMAGINE_BUDGET = ["--set", "run.train_ratio=64", "--set", "imagine.imag_batch=256"]
SMALL = ["--preset", "dmc-small"]
# method -> reverie train flags (None: SB3 SAC); the imagine methods run on DMC only. The
# imagine methods use `dmc-small` (cartpole-sized, one update per 4 env steps: it reached 259
# at 10k and ~340 at 20k in a trial): the first imagine runs, at `dmc-proprio` with the DMC
# campaign's budget (`imagine-proprio`: one update per 16 env steps, 256 imagined starts,
# ~25 min per 10k-step run at 1 thread), did not learn cartpole-swingup (70, 105, 172 on 3
# seeds at 10k), a baseline COPlanner could not be compared against. COPlanner's
# conservative half plans every imagined step (K x H = 16 extra model steps each, ~22x an
# update: bench/upmpc_cost.py), about 5 h per 10k-step run on one CPU thread; the optimistic
# half alone plans only when acting.
METHODS: dict[str, list[str] | None] = {
    "coplanner": ["--set", "mbpo.mode=coplanner"],
    "mbpo": ["--set", "mbpo.mode=mbpo"],
    "sb3-sac": None,
    "imagine+coplanner": [*SMALL, "--set", "imagine.coplanner.mode=coplanner"],
    "imagine+optimistic": [*SMALL, "--set", "imagine.coplanner.mode=optimistic"],
    "imagine": [*SMALL, "--set", "imagine.coplanner.mode=off"],
    "imagine-proprio": ["--preset", "dmc-proprio", *IMAGINE_BUDGET,
                        "--set", "imagine.coplanner.mode=off"],
}
IMAGINE_TASKS = ("cartpole-swingup",)
# env steps between checkpoints (the presets' 5k would lose half a 10k run to a stop)
CHECKPOINT_EVERY = 1000


def train_args(task: str, method: str, seed: int) -> list[str]:
    env, _, every, episodes, preset = TASKS[task]
    flags = list(METHODS[method] or [])
    if "--preset" not in flags:
        flags = ["--preset", preset, *flags]
    return [*flags, "--env", env, "--seed", str(seed), "--set", f"run.eval_every={every}",
            "--set", f"run.eval_episodes={episodes}"]


def run_sac(task: str, seed: int, out: Path) -> dict:
    """SB3 SAC (defaults) with reverie's evaluation schedule and episode seeds."""
    env_id, steps, every, episodes, _ = TASKS[task]
    return run_sb3("SAC", env_id, seed, steps, every, episodes, out)


def read(task: str, method: str, seed: int) -> dict | None:
    run = locate(RUNS / task / method / f"s{seed}")
    if method == "sb3-sac":
        path = run / "external.json"
        return json.loads(path.read_text()) if path.exists() else None
    if not (run / "metrics.jsonl").exists():
        return None
    from reverie.run.logger import read_jsonl

    return {"env_steps": progress(run), "evals": evaluations(run),
            "wall_s": round(wall_seconds(read_jsonl(run / "timing.jsonl")), 1)}


def earlier_summary(task: str, method: str, seeds: list[int]) -> dict | None:
    """The committed JSON's summary of `task` and `method`, over at least as many seeds as
    asked for, when none of its runs is here, live or archived (runs finished before
    bench/runlib.py archived them), and the JSON's method had the flags it has now."""
    if any(locate(RUNS / task / method / f"s{s}").exists() for s in range(10)):
        return None
    path = RESULTS / "coplanner.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if data.get("methods", {}).get(method, "absent") != METHODS[method]:
        return None  # the committed runs of this name were another setting
    entry = data.get("summary", {}).get(task, {}).get(method)
    return entry if entry is not None and entry["seeds"] >= len(seeds) else None


def intervals(curves: list[list]) -> dict:
    """95% bootstrap intervals over seeds of the final return and the area under the curve."""
    final = [c[-1][1] for c in curves]
    auc = [float(np.mean([v for _, v in c])) for c in curves]
    return {"final_ci95": seed_mean_ci(final)["ci95"], "auc_ci95": seed_mean_ci(auc)["ci95"]}


def summarise(tasks: list[str], methods: list[str], seeds: list[int]) -> dict:
    summary, missing = {}, []
    for task in tasks:
        steps = TASKS[task][1]
        for method in methods:
            if method.startswith("imagine") and task not in IMAGINE_TASKS:
                continue
            earlier = earlier_summary(task, method, seeds)
            if earlier is not None:
                summary.setdefault(task, {})[method] = {
                    **earlier, **intervals(earlier["curves"]), "from_committed_json": True}
                continue
            done = []
            for seed in seeds:
                r = read(task, method, seed)
                if r is None or r["env_steps"] < steps or not r["evals"]:
                    missing.append(f"{task}/{method}/s{seed}")
                else:
                    done.append(r)
            if not done:
                continue
            final = [r["evals"][-1][1] for r in done]
            auc = [float(np.mean([v for _, v in r["evals"]])) for r in done]
            summary.setdefault(task, {})[method] = {
                "seeds": len(done), "final_mean": round(statistics.mean(final), 2),
                "final_min": round(min(final), 2), "final_max": round(max(final), 2),
                "auc_mean": round(statistics.mean(auc), 2), "auc_min": round(min(auc), 2),
                "auc_max": round(max(auc), 2), **intervals([r["evals"] for r in done]),
                "wall_min_mean": round(statistics.mean(r["wall_s"] for r in done) / 60, 1),
                "curves": [r["evals"] for r in done]}
    return {"summary": summary, "missing": missing}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reverie.eval.curves import seed_band

    tasks = list(result["summary"])
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method, s in result["summary"][task].items():
            steps = [st for st, _ in s["curves"][0]]
            vals = np.array([[v for _, v in c[:len(steps)]] for c in s["curves"]])
            mean, low, high = seed_band(vals)  # 95% bootstrap band over seeds
            ax.plot(steps, mean, label=f"{method} (n={s['seeds']})")
            if len(vals) > 1:
                ax.fill_between(steps, low, high, alpha=0.15)
        ax.set_title(TASKS[task][0], fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    if not args.report_only:
        for seed in args.seeds:
            for task in args.tasks:
                for method in args.methods:
                    if method.startswith("imagine") and task not in IMAGINE_TASKS:
                        continue
                    run = RUNS / task / method / f"s{seed}"
                    if earlier_summary(task, method, args.seeds) is not None:
                        status = {"status": "done", "from_committed_json": True}
                    elif METHODS[method] is None:
                        r = run_sac(task, seed, run)
                        status = {"status": "done", "wall_s": r["wall_s"]}
                    else:
                        status = ensure_run(run, train_args(task, method, seed), TASKS[task][1],
                                            args.threads, checkpoint_every=CHECKPOINT_EVERY)
                    print(json.dumps({"task": task, "method": method, "seed": seed, **status}),
                          flush=True)
                    write(args)
    write(args)


def write(args: argparse.Namespace) -> None:
    # every task and method, whichever subset this call trains: a JSON written by a partial
    # call must not drop the results of the others
    seeds = sorted(set(args.seeds) | {0, 1, 2})
    result = {"benchmark": "coplanner", "tasks": TASKS, "methods": METHODS, "seeds": seeds,
              "loadavg_1min": round(os.getloadavg()[0], 2),
              **summarise(list(TASKS), list(METHODS), seeds)}
    if write_result(RESULTS / "coplanner.json", result):
        plot(result, RESULTS / "coplanner.png")


if __name__ == "__main__":
    main()
