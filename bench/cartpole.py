"""Sample efficiency on CartPole-v1: reverie's default agent vs Stable-Baselines3 PPO.

Writes bench/results/cartpole.json and bench/results/cartpole.png. Each reverie run is the
plain `reverie train` command (default preset) with a backbone and seed; its evaluation
returns (greedy policy, 5 episodes every 1000 env steps) are read from the run's
metrics.jsonl. PPO uses SB3's defaults and the same evaluation schedule.

    python bench/cartpole.py    # mamba2 x 3 seeds, 4 other backbones x 1 seed, PPO x 3
    python bench/cartpole.py --backbones mamba2 --seeds 0 1 2 --steps 5000
    python bench/cartpole.py --report-only   # summary, CIs and plot again from cartpole.json

Statistics come from `reverie.eval`: the mean over seeds with its 95% bootstrap interval
(`runlib.seed_mean_ci`), and the plot's bands are bootstrap bands over seeds (`seed_band`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import (  # noqa: E402
    RUNS_ROOT,
    keep,
    locate,
    require_sb3,
    run_child,
    run_sb3,
    seed_mean_ci,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET_RETURN = 450.0
TARGET_STEPS = 5000
TARGET_MINUTES = 15.0


def read_evals(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    return [(r["step"], r["eval/return"]) for r in rows if "eval/return" in r]


def same_command(run: Path, backbone: str, seed: int, steps: int, overrides: list[str],
                 preset: str = "cartpole") -> bool:
    """Whether `run` was made by exactly this command (the same resolved config)."""
    from omegaconf import OmegaConf

    from reverie.config import build_config, load_run_config

    if not (run / "config.yaml").exists() or not (run / "timing.jsonl").exists():
        return False
    want = OmegaConf.to_container(build_config(
        preset, overrides, {"backbone": backbone, "seed": seed, "steps": steps}))
    # keys added to the schema after the run was made read as their defaults, as on resume
    have = OmegaConf.to_container(load_run_config(run))
    for cfg in (want, have):
        cfg["run"]["progress"] = False  # display only
        # runs made before replays could grow on resume recorded it capped at run.steps
        cfg["replay"].pop("capacity", None)
        # compiled kernels round differently but compute the same thing (a run may even
        # change it on --resume); runs made before the default became auto say off
        cfg["run"].pop("compile", None)
    return want == have


def finished_run(run: Path, backbone: str, seed: int, steps: int, overrides: list[str],
                 preset: str = "cartpole") -> dict | None:
    """The result of `run` if it is a finished run of exactly this command (the same resolved
    config, evaluated at `steps`), else None. Runs are deterministic on a CPU with the same
    thread count, so re-running it would reproduce the same numbers; `--reuse` skips it."""
    if not same_command(run, backbone, seed, steps, overrides, preset):
        return None
    evals = read_evals(run)
    if not evals or evals[-1][0] != steps:
        return None
    timing = [json.loads(x) for x in (run / "timing.jsonl").read_text().splitlines() if x]
    return {"backbone": backbone, "seed": seed, "wall_s": round(timing[-1]["time/wall"], 1),
            "eval_steps": [s for s, _ in evals], "eval_return": [r for _, r in evals],
            "reused": True}


def run_reverie(backbone: str, seed: int, steps: int, out: Path, overrides: list[str],
                reuse: bool = False, preset: str = "cartpole") -> dict:
    """`reverie train --preset P --backbone B --seed S --steps N --set o ...` into out/B-sS."""
    run = out / f"{backbone}-s{seed}"
    archives = run.resolve().is_relative_to(RUNS_ROOT.resolve())  # bench/runs/: kept
    if reuse and (done := finished_run(locate(run) if archives else run, backbone, seed, steps,
                                       overrides, preset)) is not None:
        return done
    resume = reuse and same_command(run, backbone, seed, steps, overrides, preset) and any(
        (run / "checkpoints").glob("*"))
    if resume:  # an interrupted run of this command: go on from its last checkpoint
        print(f"note: resuming the unfinished {run}", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "reverie", "train", "--resume", str(run), "--steps",
               str(steps), "--no-progress"]
    else:
        if (run / "config.yaml").exists():
            if reuse:
                print(f"note: {run} has another config: running it again",
                      file=sys.stderr, flush=True)
            import shutil

            shutil.rmtree(run)
        cmd = [sys.executable, "-m", "reverie", "train", "--preset", preset, "--backbone",
               backbone, "--seed", str(seed), "--steps", str(steps), "--out", str(run),
               "--no-progress", *(x for o in overrides for x in ("--set", o))]
    t0 = time.time()
    proc = run_child(cmd)
    wall = time.time() - t0
    if proc.returncode != 0:
        return {"backbone": backbone, "seed": seed, "error": proc.stderr.strip()[-800:]}
    if archives:
        keep(run)  # what a report needs of it, committed under bench/results/runs/
    evals = read_evals(run)
    out = {"backbone": backbone, "seed": seed, "wall_s": round(wall, 1),
           "eval_steps": [s for s, _ in evals], "eval_return": [r for _, r in evals]}
    if resume:  # every piece's training time, the part redone after the kill included
        timing = [json.loads(x) for x in (run / "timing.jsonl").read_text().splitlines() if x]
        from runlib import wall_seconds  # bench/ is the script's directory

        out.update(wall_s=round(wall_seconds([r for r in timing if "time/wall" in r]), 1),
                   resumed=True)
    return out


def run_ppo(seed: int, steps: int, eval_every: int = 1000, episodes: int = 5) -> dict:
    """SB3 PPO with its defaults, evaluated as reverie evaluates (`runlib.run_sb3`: the same
    schedule and evaluation episode seeds); its curve is archived, so it is not rerun."""
    r = run_sb3("PPO", "CartPole-v1", seed, steps, eval_every, episodes,
                RUNS_ROOT / "cartpole" / "sb3-ppo" / f"s{seed}")
    return {"backbone": "sb3-ppo", "seed": seed, "wall_s": r["wall_s"],
            "eval_steps": [s for s, _ in r["evals"]], "eval_return": [v for _, v in r["evals"]]}


def at_step(entry: dict, step: int) -> float | None:
    pairs = [r for s, r in zip(entry.get("eval_steps", []), entry.get("eval_return", []))
             if s == step]
    return pairs[0] if pairs else None


def summarise(entries: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for name in sorted({e["backbone"] for e in entries}):
        runs = [e for e in entries if e["backbone"] == name and "error" not in e]
        errors = [e["error"] for e in entries if e["backbone"] == name and "error" in e]
        row: dict = {"seeds": len(runs), "errors": errors}
        for step in (1000, 2000, 3000, 4000, 5000, 10000):
            vals = [v for v in (at_step(e, step) for e in runs) if v is not None]
            if vals:
                est = seed_mean_ci(vals)
                row[f"return@{step}"] = round(float(np.mean(vals)), 1)
                row[f"return@{step}_ci95"] = est["ci95"]
                row[f"return@{step}_per_seed"] = vals
        if runs:
            row["wall_s_mean"] = round(float(np.mean([e["wall_s"] for e in runs])), 1)
        out[name] = row
    return out


def plot(entries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reverie.eval.curves import seed_band

    fig, ax = plt.subplots(figsize=(7, 4))
    names = sorted({e["backbone"] for e in entries if "error" not in e})
    for name in names:
        runs = [e for e in entries if e["backbone"] == name and "error" not in e]
        steps = sorted(set.intersection(*[set(e["eval_steps"]) for e in runs]))
        if not steps:
            continue
        vals = np.array([[at_step(e, s) for s in steps] for e in runs], float)
        mean, low, high = seed_band(vals)
        style = "--" if name == "sb3-ppo" else "-"
        ax.plot(steps, mean, style, marker="o", ms=3, label=f"{name} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(steps, low, high, alpha=0.15)
    ax.axhline(TARGET_RETURN, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("env steps")
    ax.set_ylabel("evaluation return (5 episodes, greedy)")
    ax.set_title("CartPole-v1: reverie (world model) vs SB3 PPO, 2-core CPU\n"
                 "mean over seeds, band: 95% bootstrap CI over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="*",
                   default=["mamba2", "gru", "transformer", "mamba1", "ffm"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--other-seeds", nargs="+", type=int, default=[0],
                   help="seeds for the backbones other than mamba2")
    p.add_argument("--steps", type=int, default=TARGET_STEPS)
    p.add_argument("--ppo-steps", type=int, default=10_000)
    p.add_argument("--out", default=str(RUNS_ROOT / "cartpole" / "reverie"))
    p.add_argument("--set", dest="extra", action="append", default=[])
    p.add_argument("--merge", action="store_true", help="add to an existing cartpole.json")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--note", default="", help="appended to the protocol text (conditions)")
    p.add_argument("--reuse", action="store_true",
                   help="keep finished runs in --out whose resolved config matches")
    p.add_argument("--report-only", action="store_true",
                   help="recompute the summary and plot from cartpole.json's runs")
    args = p.parse_args()
    if args.ppo_steps and not args.report_only:
        require_sb3()  # before hours of reverie runs, not after
    if args.report_only:
        report = json.loads((RESULTS / "cartpole.json").read_text())
        report["summary"] = summarise(report["runs"])
        (RESULTS / "cartpole.json").write_text(json.dumps(report, indent=1))
        plot(report["runs"], RESULTS / "cartpole.png")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "cartpole.json"
    entries: list[dict] = []
    if args.merge and path.exists():
        entries = json.loads(path.read_text())["runs"]
    overrides = [*args.extra, f"run.threads={args.threads}"]
    jobs = [(b, s) for b in args.backbones
            for s in (args.seeds if b == "mamba2" else args.other_seeds)]
    entries = [e for e in entries if (e["backbone"], e["seed"]) not in jobs]
    # runs are independent processes; --jobs of them share the machine's cores
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_reverie, b, s, args.steps, out, overrides, args.reuse)
                   for b, s in jobs]
        for future in as_completed(futures):
            entry = future.result()
            print(json.dumps(entry), flush=True)
            entries.append(entry)
    if args.ppo_steps:
        for seed in args.seeds:
            entries = [e for e in entries if not (e["backbone"] == "sb3-ppo" and e["seed"] == seed)]
            entry = run_ppo(seed, args.ppo_steps)
            print(json.dumps(entry), flush=True)
            entries.append(entry)
    summary = summarise(entries)
    m = summary.get("mamba2", {})
    per_seed = m.get(f"return@{TARGET_STEPS}_per_seed", [])
    walls = [e["wall_s"] for e in entries if e["backbone"] == "mamba2" and "wall_s" in e]
    targets = {
        "mean_return_at_5k_ge_450": bool(per_seed) and float(np.mean(per_seed)) >= TARGET_RETURN,
        "seeds": len(per_seed),
        "max_wall_minutes": round(max(walls) / 60, 2) if walls else None,
        "wall_under_15_min": bool(walls) and max(walls) / 60 <= TARGET_MINUTES,
    }
    result = {
        "benchmark": "cartpole",
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version()},
        "protocol": "reverie train (default preset) --backbone B --seed S --steps N; evaluation "
                    "= mean return of 5 greedy episodes every 1000 env steps; PPO: SB3 defaults, "
                    f"same evaluation; {args.jobs} runs in parallel with {args.threads} torch "
                    "thread(s) each" + (f"; {args.note}" if args.note else ""),
        "targets": targets,
        "summary": summary,
        "runs": entries,
    }
    path.write_text(json.dumps(result, indent=1))
    plot(entries, RESULTS / "cartpole.png")
    print(json.dumps({"targets": targets, "summary": {k: {kk: vv for kk, vv in v.items()
                                                         if "per_seed" not in kk}
                                                     for k, v in summary.items()}}, indent=1))


if __name__ == "__main__":
    main()
