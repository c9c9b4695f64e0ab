"""Memory inside model-based RL: the world-model agent (`imagine`, `popgym` preset) with FFM,
Mamba-2 and GRU backbones on three POPGym tasks, at a small fraction of recurrent PPO's env
steps, and its sample efficiency against PPO (bench/popgym_mmer.py).

    python bench/popgym_imagine.py                      # 3 tasks x 3 backbones x seed 0
    python bench/popgym_imagine.py --tasks RepeatFirstEasy --backbones ffm
    python bench/popgym_imagine.py --report-only        # JSON/PNG from the run folders

Every run is an ordinary `reverie train` run folder under bench/runs/popgym-imagine/ (kept out
of git; its logs are archived under bench/results/runs/popgym-imagine/), resumable like every
bench run (bench/runlib.py); the JSON lists the missing runs.

Sample efficiency. The target of a task and backbone is PPO's final MMER with the same
backbone (mean over PPO's seeds in bench/results/popgym.json). For each side,
"steps to reach" is the first evaluation step at which the running max of the greedy
evaluation return reaches the target (`reverie.eval.mmer.steps_to_reach`); the ratio is
PPO's steps over imagine's. Both are upper bounds by up to one evaluation interval (PPO
evaluates every 16,384 env steps, imagine every 1,000), so the ratio is coarse. Where imagine
does not reach the target within its budget the ratio is not defined, and the JSON says so;
the MMER of both at their own budgets is reported beside it, and the env steps PPO needed to
reach imagine's MMER.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import collect_runs, ensure_run, evaluations, progress, recorded, wall_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "bench" / "runs" / "popgym-imagine"
# tasks PPO solves at 500k steps (MMER ~1 with most memories), and one (RepeatPrevious) where
# the memories differ most under PPO
TASKS = ["PositionOnlyCartPoleEasy", "RepeatPreviousEasy", "RepeatFirstEasy"]
# RepeatFirst's cue is the episode's first observation (episodes of 52 steps): imagination
# that starts from a replayed context of the preset's 16 steps has, for most starts, never
# seen it, so the actor cannot learn the task in imagination (a first run with context 16
# fell from -0.2 to -0.99 over 3k env steps). A context of a whole training sequence (64)
# holds the cue for every start that the world model itself could have learned from.
TASK_OVERRIDES = {"RepeatFirstEasy": ["--set", "imagine.context=64"]}
BACKBONES = ["ffm", "mamba2", "gru"]
EVAL_EVERY = 1000


def run_folder(task: str, backbone: str, seed: int) -> Path:
    return RUNS / f"{task}-{backbone}-s{seed}"


def ensure(task: str, backbone: str, seed: int, steps: int, threads: int) -> dict:
    args = ["--preset", "popgym", "--env", f"popgym-{task}-v0", "--backbone", backbone,
            "--seed", str(seed), "--set", f"run.eval_every={EVAL_EVERY}",
            *TASK_OVERRIDES.get(task, [])]
    earlier = recorded(RESULTS / "popgym_imagine.json").get(f"{task}/{backbone}/s{seed}")
    return ensure_run(run_folder(task, backbone, seed), args, steps, threads, earlier)


def ppo_side(task: str, backbone: str) -> dict | None:
    """PPO's evaluation curves of `task` with `backbone`, over the seeds it has run (from
    bench/popgym_mmer.py's committed results)."""
    from reverie.eval.mmer import mmer

    curves = {key: list(zip(r["eval_steps"], r["eval_return"]))
              for key, r in sorted(recorded(RESULTS / "popgym.json").items())
              if key.startswith(f"{task}/{backbone}/") and r["eval_steps"]}
    if not curves:
        return None
    finals = [mmer(c) for c in curves.values()]
    return {"runs": sorted(curves), "curves": curves,
            "budget": max(s for c in curves.values() for s, _ in c),
            "mmer_mean": round(statistics.mean(finals), 4),
            "mmer_min": round(min(finals), 4), "mmer_max": round(max(finals), 4)}


def compare(task: str, backbone: str, evals: list[tuple[int, float]]) -> dict:
    """Imagine's run against PPO's curves with the same memory."""
    from reverie.eval.mmer import mmer, steps_to_reach

    ppo = ppo_side(task, backbone)
    if ppo is None:
        return {"ppo": None}
    target = ppo["mmer_mean"]
    ppo_steps = [steps_to_reach(c, target) for c in ppo["curves"].values()]
    ppo_steps = [s for s in ppo_steps if s is not None]
    ppo_reach = statistics.mean(ppo_steps) if ppo_steps else None
    own = steps_to_reach(evals, target)
    own_mmer = mmer(evals)
    ppo_to_own = [steps_to_reach(c, own_mmer) for c in ppo["curves"].values()]
    ppo_to_own = [s for s in ppo_to_own if s is not None]
    return {
        "ppo": {k: v for k, v in ppo.items() if k != "curves"},
        "target": target,
        "imagine_steps_to_target": own,
        "ppo_steps_to_target": ppo_reach,
        "ratio": round(ppo_reach / own, 1) if own and ppo_reach else None,
        "ppo_steps_to_imagine_mmer": statistics.mean(ppo_to_own) if ppo_to_own else None,
    }


def read_run(run: Path) -> dict | None:
    from reverie.eval.mmer import mmer
    from reverie.run.logger import read_jsonl

    evals = evaluations(run)
    if not evals:
        return None
    timing = read_jsonl(run / "timing.jsonl")
    return {"env_steps": progress(run), "eval_steps": [s for s, _ in evals],
            "eval_return": [round(v, 4) for _, v in evals], "mmer": round(mmer(evals), 4),
            "wall_s": round(wall_seconds(timing), 1)}


def report(tasks: list[str], backbones: list[str], seeds: list[int], steps: int) -> dict:
    runs, missing = collect_runs(((t, b, s) for t in tasks for b in backbones for s in seeds),
                                 run_folder, read_run, steps,
                                 recorded(RESULTS / "popgym_imagine.json"))
    for key, r in runs.items():
        task, backbone, _ = key.split("/")
        r.update(compare(task, backbone, list(zip(r["eval_steps"], r["eval_return"]))))
    return {"benchmark": "popgym_imagine", "preset": "popgym", "steps_per_run": steps,
            "eval_every": EVAL_EVERY, "task_overrides": TASK_OVERRIDES, "tasks": tasks,
            "backbones": backbones, "seeds": seeds,
            "ppo_preset": "popgym-ppo", "runs": runs, "missing": missing,
            "loadavg_1min": round(os.getloadavg()[0], 2)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, backbone in enumerate(result["backbones"]):
            color = f"C{i}"
            for key, r in result["runs"].items():
                if key.startswith(f"{task}/{backbone}/"):
                    ax.plot(r["eval_steps"], r["eval_return"], color=color, label=backbone)
                    if r.get("ppo"):
                        ax.axhline(r["target"], color=color, ls=":", lw=1)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylim(-1.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("greedy eval return")
    handles, labels = axes[0][0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=len(uniq), fontsize=8)
    fig.suptitle("imagine (world model) on POPGym; dotted: recurrent PPO's final MMER at "
                 "500k env steps, same memory", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reported_seeds() -> set[int]:
    """The seeds the committed popgym_imagine.json reports (none if it is missing)."""
    try:
        return {int(s) for s in json.loads((RESULTS / "popgym_imagine.json").read_text())["seeds"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def write(args: argparse.Namespace) -> None:
    # the default grid and whatever this call adds, and the seeds reported before: a partial
    # call (--report-only, or one seed trained on) must not drop the others
    result = report(TASKS + [t for t in args.tasks if t not in TASKS],
                    BACKBONES + [b for b in args.backbones if b not in BACKBONES],
                    sorted(set(args.seeds) | {0} | reported_seeds()), args.steps)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "popgym_imagine.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / "popgym_imagine.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="*", default=TASKS)
    p.add_argument("--backbones", nargs="*", default=BACKBONES)
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for seed in args.seeds:
            for task in args.tasks:
                for backbone in args.backbones:
                    r = ensure(task, backbone, seed, args.steps, args.threads)
                    print(json.dumps({"task": task, "backbone": backbone, "seed": seed, **r}),
                          flush=True)
                    write(args)
    write(args)


if __name__ == "__main__":
    main()
