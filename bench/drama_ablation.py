"""Drama's differences as switches, each on vs off: which ones matter, and do they keep what
was learned (stability), on CartPole (10k env steps) and MinAtar Space Invaders (20k, the
MinAtar campaign's budget), 2 seeds.

    python bench/drama_ablation.py                               # every variant x task x seed
    python bench/drama_ablation.py --tasks cartpole --variants baseline targets-drama
    python bench/drama_ablation.py --report-only                 # summary of what is recorded

Each run is `reverie train --preset P --env E --seed S --steps N --set ...` (the variant's
overrides on top of the task's preset); finished runs with the same resolved config are reused
(`run_reverie(..., reuse=True)` of bench/cartpole.py; their logs are archived under
bench/results/runs/drama-ablation/ by `runlib.keep`), and runs recorded in the committed JSON
with the same overrides and steps are not run again, so the benchmark can be run in pieces,
across checkouts, and by several processes at once (other seeds): each re-reads the JSON before
it writes. Each entry records the run's `run.compile` (runs before the auto default: off).
Reported per variant and task: final evaluation return, best evaluation, and the mean of the
last three evaluations (a policy that peaks and then drifts shows a gap between best and
last-three), each over seeds; drama_ablation.png: the evaluation curves, mean over seeds with
a 95% bootstrap band, the preset's defaults drawn thicker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cartpole import RESULTS, ROOT, finished_run, run_reverie  # noqa: E402
from runlib import RUNS_ROOT, locate, plot_seed_curves, seed_mean_ci  # noqa: E402

# name -> (preset, env, eval every, env steps, task overrides). MinAtar: Space Invaders, the
# one game on which the agent beats the random policy (and SB3 DQN/PPO) at the campaign's CPU
# budget (bench/campaign_minatar.py, whose overrides these are), so the switches can show a
# difference; on Breakout it stays at the random policy's level there.
TASKS = {
    "cartpole": ("cartpole", "CartPole-v1", 1000, 10_000, []),
    "minatar-space_invaders": ("minatar", "minatar:space_invaders", 2000, 20_000,
                               ["run.train_ratio=64", "imagine.imag_batch=256",
                                "run.eval_episodes=10", "run.checkpoint_every=2000"]),
}
# Runs of other benchmarks that may be this benchmark's runs too: where one of them has the
# same resolved config (`cartpole.same_command`: preset, overrides, seed, steps), it is
# recorded instead of training it again (the campaign's Space Invaders runs are the
# MinAtar baseline's, run for run).
ELSEWHERE = {"minatar-space_invaders": "minatar/imagine/minatar_space_invaders__s{seed}"}
DEFAULTS = ("baseline", "targets-dreamerv3")  # the preset as it is (targets: dreamerv3)
VARIANTS: dict[str, list[str]] = {
    "baseline": [],  # the preset as it is (targets: dreamerv3 since that became the default)
    # the default targets before this ablation chose dreamerv3 (the runs recorded as
    # "baseline" before then were these)
    "targets-reverie": ["imagine.behavior.targets=reverie"],
    "free-bits-batch": ["imagine.world.free_bits_mode=batch"],
    "prior-linear": ["imagine.world.prior_layers=0"],
    "targets-dreamerv3": ["imagine.behavior.targets=dreamerv3"],
    "targets-drama": ["imagine.behavior.targets=drama"],
    "act-window-16": ["imagine.act_context=window", "imagine.act_window=16"],
    "act-window-16-prior": ["imagine.act_context=window", "imagine.act_window=16",
                            "imagine.act_latent=prior"],
    "imag-start-prior": ["imagine.imag_start=prior"],
    "actor-input-norm": ["imagine.behavior.actor_input_norm=true"],
    # every switch of the atari100k preset at once (Drama's code, as far as reverie goes)
    "drama-all": ["imagine.world.free_bits_mode=batch", "imagine.world.prior_layers=0",
                  "imagine.behavior.targets=drama", "imagine.act_context=window",
                  "imagine.act_window=16", "imagine.act_latent=prior",
                  "imagine.imag_start=prior", "imagine.behavior.actor_input_norm=true"],
}


def summarise(entries: list[dict]) -> dict:
    """Per task and variant, over seeds: the mean of the final evaluation, of the best one and
    of the last three, each with its 95% bootstrap interval over seeds (`reverie.eval.stats`)."""
    out: dict[str, dict] = {}
    for e in entries:
        if "error" in e or not e.get("eval_return"):
            continue
        key = f"{e['task']}/{e['variant']}"
        out.setdefault(key, {"task": e["task"], "variant": e["variant"], "runs": []})
        out[key]["runs"].append(e)
    for s in out.values():
        runs = sorted(s.pop("runs"), key=lambda e: e["seed"])
        s["seeds"] = [e["seed"] for e in runs]
        per_seed = {"final": [e["eval_return"][-1] for e in runs],
                    "best": [max(e["eval_return"]) for e in runs],
                    "last3": [float(np.mean(e["eval_return"][-3:])) for e in runs]}
        for name, values in per_seed.items():
            est = seed_mean_ci(values)
            s[name], s[f"{name}_ci95"] = est["mean"], est["ci95"]
        s["wall_min"] = round(max(e["wall_s"] for e in runs) / 60, 1)
    return out


def write(path: Path, entries: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "benchmark": "drama-ablation", "variants": VARIANTS, "tasks": TASKS,
        "summary": summarise(entries), "runs": entries}, indent=1))
    panels: dict[str, dict[str, list[dict]]] = {}
    for e in sorted(entries, key=lambda e: (list(TASKS).index(e["task"]),
                                            list(VARIANTS).index(e["variant"]), e["seed"])):
        if "error" not in e and e.get("eval_return"):
            panels.setdefault(e["task"], {}).setdefault(e["variant"], []).append(e)
    if panels:
        plot_seed_curves(panels, path.with_suffix(".png"), bold=DEFAULTS)


def run_compile(run: Path) -> str | None:
    """The run's run.compile (runs made before it defaulted to auto were eager: off)."""
    from reverie.config import load_run_config

    try:
        return str(load_run_config(run).run.compile)
    except Exception:  # no run folder (the run failed before writing one)
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=None,
                   help="env steps per run (default: the task's, TASKS)")
    p.add_argument("--out", default=str(RUNS_ROOT / "drama-ablation"))
    p.add_argument("--report-only", action="store_true",
                   help="recompute the summary of the recorded runs; train nothing")
    args = p.parse_args()
    path = RESULTS / "drama_ablation.json"
    entries = json.loads(path.read_text())["runs"] if path.exists() else []
    if args.report_only:
        return write(path, entries)
    for seed in args.seeds:
        for task in args.tasks:
            preset, env, every, task_steps, task_overrides = TASKS[task]
            steps = args.steps or task_steps
            for variant in args.variants:
                overrides = [*task_overrides, *VARIANTS[variant], f"env.id={env}",
                             f"run.eval_every={every}", "run.threads=1"]
                done = [e for e in entries if (e["task"], e["variant"], e["seed"]) ==
                        (task, variant, seed) and "error" not in e
                        and e.get("overrides") == overrides
                        and e.get("eval_steps", [None])[-1] == steps]
                if done:  # recorded in the committed JSON (run folders are not kept)
                    continue
                load0 = os.getloadavg()[0]
                run = Path(args.out) / task / variant / f"mamba2-s{seed}"
                other = (locate(RUNS_ROOT / ELSEWHERE[task].format(seed=seed))
                         if task in ELSEWHERE else None)
                r = other and finished_run(other, "mamba2", seed, steps, overrides, preset)
                if r:
                    run = other
                    r["same_run_as"] = str(other.relative_to(ROOT))
                else:  # archived under bench/results/runs/drama-ablation/ (runlib.keep)
                    r = run_reverie("mamba2", seed, steps, run.parent, overrides,
                                    reuse=True, preset=preset)
                entry = dict(r, task=task, variant=variant, overrides=overrides,
                             compile=run_compile(run),
                             loadavg_1min=[round(load0, 2), round(os.getloadavg()[0], 2)])
                print(json.dumps({k: v for k, v in entry.items() if k != "eval_steps"}),
                      flush=True)
                # re-read: another process of this script (other seeds) may have written since
                if path.exists():
                    entries = json.loads(path.read_text())["runs"]
                entries = [e for e in entries
                           if (e["task"], e["variant"], e["seed"]) != (task, variant, seed)]
                entries.append(entry)
                write(path, entries)


if __name__ == "__main__":
    main()
