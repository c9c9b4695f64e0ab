"""The default `reverie train` (CartPole-v1, default preset, 5k env steps), alone on the machine:
wall time per run and the returns it reaches, over seeds.

    python bench/default_run.py                 # seeds 0 1 2, one run at a time
    python bench/default_run.py --seeds 0 --steps 1000
    python bench/default_run.py --alt run.compile=off   # default, alt, default, alt, ... per seed
    python bench/default_run.py --cold                  # each run on an empty inductor cache
    python bench/default_run.py --set run.threads=1 --alt run.num_envs=4
        # --set applies to both sides (here: 1 thread each, beside another job)
    python bench/default_run.py --alt-env MALLOC_MMAP_THRESHOLD_=131072 \
        MALLOC_TRIM_THRESHOLD_=131072 --json default_run_allocator_ab.json
        # the same command without reverie's allocator fix (reverie/allocator.py)
    python bench/default_run.py --alt-env GOMP_SPINCOUNT=300000
        # ... with libgomp's default spin waits instead of reverie's 1000 (reverie/openmp.py)

This is what `make demo` trains, measured as a user runs it: the plain command with the
preset's own thread setting, one run at a time (nothing else of this benchmark on the
cores), a fresh run folder per seed under runs/bench-default/. Reported per seed: wall time
of the whole command (process start to exit, prefill and evaluations included),
milliseconds of wall time per env step after the prefill (evaluations included), and the
evaluation returns; over seeds: median and min-max of the wall time, the mean return at the
last step, and the targets (<= 3 min per run, mean >= 450 at 5k). The 1-minute load average
before and after each run is recorded: a run that shared the cores with other work says so
(the run itself keeps the load near the core count).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cartpole import ROOT, TARGET_RETURN, run_reverie  # noqa: E402
from reverie.openmp import SPINCOUNT, USER_SETTINGS, wants_long_spin  # noqa: E402
from runlib import matmul_gflops  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGET_MINUTES = 3.0


def per_step_ms(run: Path, after: int) -> float | None:
    """Milliseconds of wall time per env step from step `after` to the run's last log row."""
    from reverie.run.logger import read_jsonl

    rows = [r for r in read_jsonl(run / "timing.jsonl") if "time/wall" in r]
    later = [r for r in rows if r["step"] >= after]
    if len(later) < 2:
        return None
    a, b = later[0], later[-1]
    return round(1000 * (b["time/wall"] - a["time/wall"]) / (b["step"] - a["step"]), 1)


def walls_and_finals(runs: list[dict], steps: int) -> tuple[list[float], list[float]]:
    good = [r for r in runs if "error" not in r]
    return ([r["wall_s"] for r in good],
            [r["eval_return"][-1] for r in good if r["eval_steps"][-1:] == [steps]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--backbone", default="mamba2", help="the default preset's backbone")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-default")
    p.add_argument("--alt", nargs="+", default=[], metavar="KEY=VALUE",
                   help="also run every seed with these --set overrides, alternating with the "
                        "default run (default, alt, default, alt, ...)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="base",
                   help="--set overrides of every run, the default's and the alt's (e.g. "
                        "run.threads=1 to measure beside another job)")
    p.add_argument("--alt-env", nargs="+", default=[], metavar="NAME=VALUE",
                   help="also run every seed with these environment variables, alternating "
                        "with the default run (with --alt: both in the alt run)")
    p.add_argument("--json", default="default_run.json",
                   help="file name under bench/results/ (default: %(default)s)")
    p.add_argument("--beside", default=None, metavar="TEXT",
                   help="what else ran on the machine during the measurement, on purpose "
                        "(e.g. 'a 1-thread reverie train run'), recorded in the JSON")
    p.add_argument("--default-label", default="default", metavar="TEXT",
                   help="the default arm's name in the table (default: %(default)s)")
    p.add_argument("--alt-label", default=None, metavar="TEXT",
                   help="the alt arm's name in the table (default: its overrides and env, "
                        "e.g. for --alt-env PYTHONPATH=<another tree>/src, what that tree is)")
    p.add_argument("--cold", action="store_true",
                   help="every run starts from an empty inductor cache, as the first run of "
                        "a fresh install does (default: the user's cache, warm after a run)")
    args = p.parse_args()
    from reverie.config import build_config

    cfg = build_config("cartpole", args.base, {"backbone": args.backbone, "steps": args.steps})
    # a bad --set or --alt fails now
    build_config("cartpole", [*args.base, *args.alt], {"backbone": args.backbone})
    if any("=" not in kv or not kv.split("=", 1)[0] for kv in args.alt_env):
        p.error("--alt-env takes NAME=VALUE pairs")
    alt_env = dict(kv.split("=", 1) for kv in args.alt_env)
    if Path(args.json).name != args.json or not args.json.endswith(".json"):
        p.error("--json takes a file name ending in .json (it is written to bench/results/)")
    prefill = int(cfg.run.prefill)

    def one(seed: int, overrides: list[str], out: Path, env: dict[str, str]) -> dict:
        cold = tempfile.mkdtemp(prefix="inductor-cold-") if args.cold else None
        child = {**env, **({"TORCHINDUCTOR_CACHE_DIR": cold} if cold else {})}
        with mock.patch.dict(os.environ, child):  # the child `reverie train` inherits them
            load0, gflops = os.getloadavg()[0], matmul_gflops()
            r = run_reverie(args.backbone, seed, args.steps, out, overrides)
            set_by_user = {k: v for k, v in os.environ.items() if k in USER_SETTINGS}
        r["matmul_gflops_before"] = gflops
        r["loadavg_1min_before"], r["loadavg_1min_after"] = load0, os.getloadavg()[0]
        r["overrides"], r["inductor_cache"] = overrides, "empty" if cold else "user's"
        r["env"] = env
        # what libgomp got: the child's own setting, else the one `reverie train` sets itself
        # (none for a train with run.share_cores: libgomp's own spin, reverie/openmp.py)
        kept = wants_long_spin(["train", *(x for o in overrides for x in ("--set", o))])
        r["openmp"] = set_by_user or {"GOMP_SPINCOUNT": "libgomp's own (run.share_cores)"
                                      if kept else f"{SPINCOUNT} (set by reverie)"}
        if cold:
            shutil.rmtree(cold, ignore_errors=True)
        if "error" not in r:
            r["ms_per_env_step_after_prefill"] = per_step_ms(out / f"{args.backbone}-s{seed}",
                                                             prefill)
        print(json.dumps({k: v for k, v in r.items() if k != "eval_steps"}), flush=True)
        return r

    runs, alt_runs = [], []
    for seed in args.seeds:
        runs.append(one(seed, args.base, args.out, {}))
        if args.alt or alt_env:
            alt_runs.append(one(seed, [*args.base, *args.alt], args.out / "alt", alt_env))
        # after every round: a benchmark stopped part-way keeps the rounds it measured
        result = summary(args, cfg, prefill, alt_env, runs, alt_runs)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "alt")}, indent=1))


def summary(args: argparse.Namespace, cfg, prefill: int, alt_env: dict[str, str],
            runs: list[dict], alt_runs: list[dict]) -> dict:
    """The JSON of the rounds run so far (`seeds_missing`: the rounds still to come)."""
    walls, finals = walls_and_finals(runs, args.steps)
    cores = os.cpu_count() or 1
    result = {
        "benchmark": "default_run", "command": f"reverie train --steps {args.steps} "
        f"(preset cartpole, backbone {args.backbone}, seed S)"
        + "".join(f" --set {o}" for o in args.base), "steps": args.steps,
        "prefill": prefill, "threads": str(cfg.run.threads), "overrides": args.base, "cores": cores,
        "compile": str(cfg.run.compile), "inductor_cache": "empty" if args.cold else "user's",
        "beside": args.beside, "default_label": args.default_label,
        "seeds_missing": [s for s in args.seeds if s not in {r["seed"] for r in runs}],
        "runs": runs,
        "wall_s_median": statistics.median(walls) if walls else None,
        "wall_s_min": min(walls, default=None), "wall_s_max": max(walls, default=None),
        "final_return_mean": round(statistics.mean(finals), 1) if finals else None,
        # the run itself keeps every core busy (load ~ cores): loaded means other work too
        "loaded": any(max(r["loadavg_1min_before"], r["loadavg_1min_after"]) > 1.5 * cores
                      for r in runs + alt_runs),
        "loaded_rule": "1-min load average above 1.5 x cores before or after a run (the run "
                       "itself accounts for about 1 x cores)",
        # the targets are the default command's (5k env steps, its own config)
        "targets": {} if args.steps != 5000 or args.base else {
            f"wall <= {TARGET_MINUTES:g} min per run (median)":
                None if not walls else statistics.median(walls) <= 60 * TARGET_MINUTES,
            f"mean return >= {TARGET_RETURN:g} at {args.steps}":
                None if len(finals) < len(args.seeds) else
                statistics.mean(finals) >= TARGET_RETURN},
    }
    if args.alt or alt_env:
        alt_walls, alt_finals = walls_and_finals(alt_runs, args.steps)
        ratios = [b["wall_s"] / a["wall_s"] for a, b in zip(runs, alt_runs)
                  if "error" not in a and "error" not in b]
        result["alt"] = {
            "overrides": args.alt, "env": alt_env, "label": args.alt_label, "runs": alt_runs,
            "wall_s_median": statistics.median(alt_walls) if alt_walls else None,
            "wall_s_min": min(alt_walls, default=None), "wall_s_max": max(alt_walls, default=None),
            "final_return_mean": round(statistics.mean(alt_finals), 1) if alt_finals else None,
            "wall_ratio_alt_over_default": {
                "median": round(statistics.median(ratios), 3) if ratios else None,
                "min": round(min(ratios), 3) if ratios else None,
                "max": round(max(ratios), 3) if ratios else None}}
    return result


if __name__ == "__main__":
    main()
