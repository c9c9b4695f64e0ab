"""Memory on POPGym: recurrent PPO (`popgym-ppo` preset) with FFM, GRU, Mamba-2 and
Transformer memories, scored by MMER (POPGym's max mean episodic return).

    python bench/popgym_mmer.py              # 6 tasks x (ffm, gru: 3 seeds; mamba2,
                                             #   transformer: 1 seed) x 500k env steps
    python bench/popgym_mmer.py --tasks RepeatPreviousEasy --backbones ffm --seeds 0
    python bench/popgym_mmer.py --report-only   # rebuild the JSON/PNG from the run folders

Every run is an ordinary `reverie train` run folder under bench/runs/popgym/ (kept out of git;
its logs are archived under bench/results/runs/popgym/, see bench/runlib.py). The script is
resumable: a finished run is read back, an unfinished one is continued with `reverie train
--resume` (exactly, from its last checkpoint), so a long benchmark can be run in pieces; the
JSON says which runs are missing. MMER is computed from each run's evaluation returns (greedy
policy, `run.eval_episodes` episodes every `run.eval_every` env steps) with
`reverie.eval.mmer`, and reported raw (returns in [-1, 1]) and normalised (0.5·MMER + 0.5).

POPGym's own MMER comes from training episodes (RLlib's mean return of the recent training
episodes at each report), not greedy evaluations. Where a run's training episodes are logged
(its metrics.jsonl, live or archived), the JSON also holds `mmer_train`, the score
`reverie report --returns train` gives: the running max of the mean return of the training
episodes that ended in each window of the run's evaluation interval (16,384 env steps in
the preset: a median of 80-90 episodes per window on the shortest-episode tasks, about
RLlib's 100-episode smoothing; the last window, past 491,520, holds only the final 8,480
steps), so the two ways of scoring are compared on the same runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import (  # noqa: E402
    collect_runs,
    ensure_run,
    progress,
    recorded,
    seed_mean_ci,
    wall_seconds,
    write_result,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "bench" / "runs" / "popgym"
TASKS = ["RepeatPreviousEasy", "RepeatFirstEasy", "CountRecallEasy", "AutoencodeEasy",
         "PositionOnlyCartPoleEasy", "NoisyPositionOnlyPendulumEasy"]
SEEDS = {"ffm": [0, 1, 2], "gru": [0, 1, 2], "mamba2": [0], "transformer": [0],
         "ffm-p1024": [0, 1, 2], "ffm-reference": [0], "ffm-w256": [0], "gru-w256": [0],
         "ffm-L128": [0, 1, 2], "gru-L128": [0, 1, 2]}
# backprop through 128 steps instead of the preset's 64 (POPGym: 1024, whole episodes), on
# the tasks whose memory must span more than a 64-step sequence: the episodes of
# RepeatFirst and CountRecall Easy (51 steps) straddle sequence boundaries, Autoencode's
# (103) are longer than one
LONG = ["--set", "rppo.seq_len=128"]
TASKS_OF = {"ffm-L128": ["RepeatFirstEasy", "CountRecallEasy", "AutoencodeEasy"],
            "gru-L128": ["RepeatFirstEasy", "CountRecallEasy", "AutoencodeEasy"]}
# the widths of FFM's official POPGym setup (its ppo.py: memory 256, linear layers 128), the
# rest of the preset unchanged
WIDE = ["--set", "rppo.d_model=256", "--set", "rppo.hidden=128"]
# memories that are a backbone with options: FFM with the paper's oscillation periods (4
# spread over [1, 1024] steps; reverie's default before 2026-12-02, now [1, 16]: see
# reverie.sequence.ffm.PERIODS) and FFM as the official code initialises it
VARIANTS = {"ffm-p1024": ("ffm", ["--set", "rppo.backbone_kwargs.max_period=1024"]),
            "ffm-reference": ("ffm", ["--set", "rppo.backbone_kwargs.init=reference",
                                      "--set", "rppo.backbone_kwargs.norm_affine=false"]),
            "ffm-w256": ("ffm", WIDE), "gru-w256": ("gru", WIDE),
            "ffm-L128": ("ffm", LONG), "gru-L128": ("gru", LONG)}


def run_folder(task: str, backbone: str, seed: int) -> Path:
    return RUNS / f"{task}-{backbone}-s{seed}"


def ensure(task: str, backbone: str, seed: int, steps: int, threads: int) -> dict:
    name, extra = VARIANTS.get(backbone, (backbone, []))
    args = ["--preset", "popgym-ppo", "--env", f"popgym-{task}-v0", "--backbone", name,
            "--seed", str(seed), *extra]
    earlier = recorded(RESULTS / "popgym.json").get(f"{task}/{backbone}/s{seed}")
    return ensure_run(run_folder(task, backbone, seed), args, steps, threads, earlier)


def read_run(run: Path) -> dict | None:
    from reverie.errors import UserError
    from reverie.eval.mmer import mmer_from_metrics, normalized_mmer
    from reverie.eval.runs import read_run as score_run
    from reverie.eval.runs import train_window
    from reverie.run.logger import read_jsonl, scored_evaluations

    rows = read_jsonl(run / "metrics.jsonl")
    evals = [(r["step"], r["eval/return"]) for r in scored_evaluations(rows)]
    if not evals:
        return None
    timing = read_jsonl(run / "timing.jsonl")
    m = mmer_from_metrics(rows)
    try:  # POPGym's protocol, as `reverie report --returns train` scores it
        scored = score_run(run, "train")
        m_train, window = scored.score, train_window(scored.cfg)
    except UserError:  # no finite training-episode return logged
        m_train = window = None
    return {"env_steps": progress(run), "eval_steps": [s for s, _ in evals],
            "eval_return": [round(v, 4) for _, v in evals], "mmer": round(m, 4),
            "mmer_normalized": round(normalized_mmer(m), 4),
            "mmer_train": None if m_train is None else round(m_train, 4),
            "mmer_train_window": window,
            "wall_s": round(wall_seconds(timing), 1),
            "env_steps_per_s": round(timing[-1]["time/env_steps_per_s"], 1) if timing else None}


def report(tasks: list[str], seeds: dict[str, list[int]], steps: int) -> dict:
    runs, missing = collect_runs(((t, b, s) for t in tasks for b, ss in seeds.items()
                                  if t in TASKS_OF.get(b, [t]) for s in ss),
                                 run_folder, read_run, steps,
                                 recorded(RESULTS / "popgym.json"))
    summary: dict[str, dict] = {}
    for task in tasks:
        for backbone in seeds:
            done = [runs[k] for k in runs if k.startswith(f"{task}/{backbone}/")
                    and runs[k]["env_steps"] >= steps]
            if done:
                summary.setdefault(task, {})[backbone] = {
                    "seeds": len(done),
                    "mmer_mean": round(statistics.mean(r["mmer"] for r in done), 4),
                    "mmer_ci95": seed_mean_ci([r["mmer"] for r in done])["ci95"],
                    "mmer_min": min(r["mmer"] for r in done),
                    "mmer_max": max(r["mmer"] for r in done),
                    "wall_s_mean": round(statistics.mean(r["wall_s"] for r in done), 1)}
                both = [r for r in done if r.get("mmer_train") is not None]
                if both:  # the runs whose training episodes are logged: both scores
                    summary[task][backbone]["both"] = {
                        "seeds": len(both),
                        "mmer_mean": round(statistics.mean(r["mmer"] for r in both), 4),
                        "mmer_train_mean": round(statistics.mean(r["mmer_train"]
                                                                 for r in both), 4)}
    return {"benchmark": "popgym", "preset": "popgym-ppo", "steps_per_run": steps,
            "train_window_steps": sorted({r["mmer_train_window"] for r in runs.values()
                                          if r.get("mmer_train_window")}),
            "tasks": tasks, "seeds": seeds, "runs": runs, "summary": summary,
            "missing": missing, "loadavg_1min": round(os.getloadavg()[0], 2)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in result["tasks"] if t in result["summary"]]
    if not tasks:
        return
    backbones = list(result["seeds"])
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 3.8))
    width = 0.8 / len(backbones)
    for j, b in enumerate(backbones):
        xs, ys, lo, hi = [], [], [], []
        for i, t in enumerate(tasks):
            s = result["summary"][t].get(b)
            if s:
                xs.append(i + j * width)
                ys.append(s["mmer_mean"])
                low, high = s["mmer_ci95"]
                lo.append(max(0.0, s["mmer_mean"] - low))  # the interval is rounded to 0.01
                hi.append(max(0.0, high - s["mmer_mean"]))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=b)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))])
    ax.set_xticklabels(tasks, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("MMER (returns in [-1, 1])")
    ax.set_title(f"POPGym, recurrent PPO, {result['steps_per_run']:,} env steps per run "
                 "(bars: mean over seeds, whiskers: 95% bootstrap CI over seeds)", fontsize=9)
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="*", default=TASKS)
    p.add_argument("--backbones", nargs="*", default=list(SEEDS))
    p.add_argument("--seeds", nargs="*", type=int, default=None,
                   help="the same seeds for every backbone (default: 3 for ffm/gru, 1 else)")
    p.add_argument("--steps", type=int, default=500_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    seeds = {b: (args.seeds if args.seeds is not None else SEEDS.get(b, [0]))
             for b in args.backbones}
    RUNS.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for seed_index in range(max(len(s) for s in seeds.values())):  # seed 0 everywhere first
            for task in args.tasks:
                for backbone, ss in seeds.items():
                    if seed_index < len(ss) and task in TASKS_OF.get(backbone, [task]):
                        r = ensure(task, backbone, ss[seed_index], args.steps, args.threads)
                        print(json.dumps({"task": task, "backbone": backbone,
                                          "seed": ss[seed_index], **r}), flush=True)
                        write(args, seeds)
    write(args, seeds)


def write(args: argparse.Namespace, seeds: dict[str, list[int]]) -> None:
    # the default grid and whatever this call adds: a partial call must not drop the others
    tasks = TASKS + [t for t in args.tasks if t not in TASKS]
    grid = {b: sorted(set(SEEDS.get(b, [])) | set(seeds.get(b, []))) for b in {**SEEDS, **seeds}}
    result = report(tasks, grid, args.steps)
    if write_result(RESULTS / "popgym.json", result):
        plot(result, RESULTS / "popgym.png")


if __name__ == "__main__":
    main()
