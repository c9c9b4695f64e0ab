"""Drama's dynamic frequency-based sampling (DFS) vs uniform replay sampling, equal env steps.

Writes bench/results/dfs.json and bench/results/dfs.png. Every run is `reverie train` with a
preset, a seed and `--set replay.sampler=dfs|uniform`; everything else is identical. Reported
per task: final evaluation return (mean of the last evaluation over seeds) and the area under
the evaluation curve (mean evaluation return over all evaluations), per sampler.

    python bench/dfs.py                                   # CartPole 5k steps + MinAtar Breakout
    python bench/dfs.py --tasks cartpole --seeds 0 1 2
    python bench/dfs.py --report-only     # summary, CIs and plot again from dfs.json

Means over seeds carry 95% bootstrap intervals (`reverie.eval.stats` via
`runlib.seed_mean_ci`); the plot's bands are bootstrap bands over seeds (`seed_band`). The
MinAtar comparison at a budget that separates learning from random is in
bench/campaign_minatar.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cartpole import RESULTS, run_reverie  # noqa: E402
from runlib import RUNS_ROOT, random_policy_return, seed_mean_ci  # noqa: E402

# task -> (preset, env steps, extra overrides)
TASKS = {
    "cartpole": ("cartpole", 5000, []),
    "minatar-breakout": ("minatar", 4000, ["run.train_ratio=128", "imagine.imag_batch=128",
                                           "run.eval_every=1000", "run.prefill=500"]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--reuse-cartpole", action="store_true",
                   help="take the dfs CartPole runs from bench/results/cartpole.json (mamba2)")
    p.add_argument("--out", default=str(RUNS_ROOT / "dfs"))
    p.add_argument("--reuse", action="store_true",
                   help="keep finished runs in --out whose resolved config matches")
    p.add_argument("--report-only", action="store_true",
                   help="recompute the summary and plot from dfs.json's runs")
    args = p.parse_args()
    if args.report_only:
        report = json.loads((RESULTS / "dfs.json").read_text())
        tasks = list(report["summary"])
        randoms = {t: report["summary"][t]["random policy"] for t in tasks}
        report["summary"] = summarise(report["runs"], tasks, randoms)
        (RESULTS / "dfs.json").write_text(json.dumps(report, indent=1))
        plot(report["runs"], tasks, RESULTS / "dfs.png")
        return
    out = Path(args.out)
    jobs, entries = [], []
    reused = []
    if args.reuse_cartpole and (RESULTS / "cartpole.json").exists():
        runs = json.loads((RESULTS / "cartpole.json").read_text())["runs"]
        reused = [dict(e, task="cartpole", sampler="dfs") for e in runs
                  if e["backbone"] == "mamba2" and e["seed"] in args.seeds and "error" not in e]
    for task in args.tasks:
        preset, steps, extra = TASKS[task]
        for sampler in ("dfs", "uniform"):
            for seed in args.seeds:
                if any(r["seed"] == seed for r in reused) and task == "cartpole" \
                        and sampler == "dfs":
                    continue
                overrides = [*extra, f"replay.sampler={sampler}", "run.threads=1"]
                jobs.append((task, sampler, seed, preset, overrides, steps))
    entries.extend(reused)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(run_reverie, "mamba2", seed, steps, out / task / sampler, overrides,
                        args.reuse, preset):
                (task, sampler) for task, sampler, seed, preset, overrides, steps in jobs
        }
        for future in as_completed(futures):
            task, sampler = futures[future]
            entry = dict(future.result(), task=task, sampler=sampler)
            print(json.dumps(entry), flush=True)
            entries.append(entry)
    previous = RESULTS / "dfs.json"
    if previous.exists():  # results of tasks not run now stay in the report
        entries += [e for e in json.loads(previous.read_text())["runs"]
                    if e["task"] not in args.tasks]
    from reverie.config import build_config

    tasks = [t for t in TASKS if any(e["task"] == t for e in entries)]
    randoms = {t: {"mean_return_100_episodes": round(random_policy_return(
        build_config(TASKS[t][0]).env.id), 2)} for t in tasks}
    summary = summarise(entries, tasks, randoms)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dfs.json").write_text(json.dumps(
        {"benchmark": "dfs-vs-uniform", "summary": summary, "runs": entries}, indent=1))
    plot(entries, tasks, RESULTS / "dfs.png")
    print(json.dumps(summary, indent=1))


def summarise(entries: list[dict], tasks: list[str], randoms: dict[str, dict]) -> dict:
    """Per task and sampler: final evaluation and area under the curve (mean over all
    evaluations), means over seeds with 95% bootstrap intervals."""
    summary: dict = {}
    for task in tasks:
        summary[task] = {}
        for sampler in ("dfs", "uniform"):
            runs = [e for e in entries if e["task"] == task and e["sampler"] == sampler
                    and "error" not in e and e["eval_return"]]
            if not runs:
                continue
            final = [e["eval_return"][-1] for e in runs]
            auc = [float(np.mean(e["eval_return"])) for e in runs]
            est_final, est_auc = seed_mean_ci(final), seed_mean_ci(auc)
            summary[task][sampler] = {
                "seeds": len(runs), "final_mean": round(float(np.mean(final)), 2),
                "final_ci95": est_final["ci95"], "final_per_seed": final,
                "auc_mean": round(float(np.mean(auc)), 2), "auc_ci95": est_auc["ci95"],
                "env_steps": TASKS[task][1],
            }
        summary[task]["random policy"] = randoms[task]
    return summary


def plot(entries: list[dict], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reverie.eval.curves import seed_band

    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for sampler, style in (("dfs", "-"), ("uniform", "--")):
            runs = [e for e in entries if e["task"] == task and e["sampler"] == sampler
                    and "error" not in e and e["eval_return"]]
            if not runs:
                continue
            n = min(len(e["eval_return"]) for e in runs)
            vals = np.array([e["eval_return"][:n] for e in runs])
            mean, low, high = seed_band(vals)
            steps = runs[0]["eval_steps"][:n]
            (line,) = ax.plot(steps, mean, style, marker="o", ms=3,
                              label=f"{sampler} (n={len(runs)})")
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15)
        ax.set_title(f"{task} (band: 95% bootstrap CI over seeds)", fontsize=10)
        ax.set_xlabel("env steps")
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
