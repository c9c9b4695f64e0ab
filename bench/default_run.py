"""The default `reverie train` (CartPole-v1, default preset, 5k env steps), alone on the machine:
wall time per run and the returns it reaches, over seeds.

    python bench/default_run.py                 # seeds 0 1 2, one run at a time
    python bench/default_run.py --seeds 0 --steps 1000

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
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cartpole import ROOT, TARGET_RETURN, run_reverie  # noqa: E402

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--backbone", default="mamba2", help="the default preset's backbone")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-default")
    args = p.parse_args()
    from reverie.config import build_config

    cfg = build_config("cartpole", [], {"backbone": args.backbone, "steps": args.steps})
    prefill = int(cfg.run.prefill)
    runs = []
    for seed in args.seeds:
        load0 = os.getloadavg()[0]
        r = run_reverie(args.backbone, seed, args.steps, args.out, [])
        r["loadavg_1min_before"], r["loadavg_1min_after"] = load0, os.getloadavg()[0]
        if "error" not in r:
            run = args.out / f"{args.backbone}-s{seed}"
            r["ms_per_env_step_after_prefill"] = per_step_ms(run, prefill)
        runs.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "eval_steps"}), flush=True)
    good = [r for r in runs if "error" not in r]
    walls = [r["wall_s"] for r in good]
    finals = [r["eval_return"][-1] for r in good if r["eval_steps"][-1:] == [args.steps]]
    cores = os.cpu_count() or 1
    result = {
        "benchmark": "default_run", "command": f"reverie train --steps {args.steps} "
        f"(preset cartpole, backbone {args.backbone}, seed S)", "steps": args.steps,
        "prefill": prefill, "threads": str(cfg.run.threads), "cores": cores, "runs": runs,
        "wall_s_median": statistics.median(walls) if walls else None,
        "wall_s_min": min(walls, default=None), "wall_s_max": max(walls, default=None),
        "final_return_mean": round(statistics.mean(finals), 1) if finals else None,
        # the run itself keeps every core busy (load ~ cores): loaded means other work too
        "loaded": any(max(r["loadavg_1min_before"], r["loadavg_1min_after"]) > 1.5 * cores
                      for r in runs),
        "loaded_rule": "1-min load average above 1.5 x cores before or after a run (the run "
                       "itself accounts for about 1 x cores)",
        "targets": {
            f"wall <= {TARGET_MINUTES:g} min per run (median)":
                None if not walls else statistics.median(walls) <= 60 * TARGET_MINUTES,
            f"mean return >= {TARGET_RETURN:g} at {args.steps}":
                None if len(finals) < len(args.seeds) else
                statistics.mean(finals) >= TARGET_RETURN},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "default_run.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
