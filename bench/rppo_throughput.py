"""Throughput of recurrent PPO (`popgym-ppo` preset) with FFM vs GRU memory, and where the
time goes: env steps per second of acting + training on a POPGym task, the two memories
measured in alternation (A B A B ..., a fresh process each), medians and min-max.

    python bench/rppo_throughput.py                  # 5 rounds x 32768 env steps each
    python bench/rppo_throughput.py --rounds 2 --steps 8192

Each measurement is a `Trainer` of the preset (evaluation off) whose agent and env methods
are wrapped with timers: `act` (policy step), `env` (the 16 envs), `observe` (storing the
step, final-observation values), `update` (PPO epochs), the rest (driver, logging).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import PartTimer, spread  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PARTS = ("act", "env", "observe", "update", "checkpoint")


def measure(backbone: str, task: str, steps: int, threads: int) -> dict:
    """One run in this process: env steps/s and seconds per part."""
    from reverie.allocator import keep_freed_memory
    from reverie.config import build_config
    from reverie.run import driver
    from reverie.run.driver import Trainer

    driver.plot_curve = lambda *a, **k: None  # once per run (matplotlib import): not per step
    keep_freed_memory()  # as the `reverie` command does
    cfg = build_config("popgym-ppo", ["run.progress=false", "run.eval_episodes=0",
                                      f"run.threads={threads}", f"env.id=popgym-{task}-v0"],
                       {"backbone": backbone, "steps": steps})
    timer = PartTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        agent = trainer.agent
        for obj, name, part in ((agent, "act", "act"), (agent, "observe", "observe"),
                                (agent, "update", "update"), (trainer.envs, "step", "env"),
                                (trainer, "checkpoint", "checkpoint")):
            timer.wrap(obj, name, part)
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    spent = timer.exclusive({}, wall)
    return {"env_steps_per_s": steps / wall, "wall_s": wall,
            "seconds": {k: round(v, 3) for k, v in spent.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=32768)
    p.add_argument("--task", default="RepeatPreviousEasy")
    p.add_argument("--backbones", nargs="+", default=["ffm", "gru"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.task, args.steps, args.threads)))
        return
    load0 = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {b: [] for b in args.backbones}
    for r in range(args.rounds):
        order = args.backbones if r % 2 == 0 else list(reversed(args.backbones))
        for b in order:
            proc = subprocess.run([sys.executable, __file__, "--worker", b, "--task", args.task,
                                   "--steps", str(args.steps), "--threads", str(args.threads)],
                                  capture_output=True, text=True, check=True)
            m = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[b].append(m)
            print(json.dumps({"round": r, "backbone": b, **m}), flush=True)
    load1 = os.getloadavg()[0]

    summary = {b: {"env_steps_per_s": spread([m["env_steps_per_s"] for m in ms], 2, keep=None),
                   "share_of_time": {k: round(statistics.median(
                       [m["seconds"][k] / m["wall_s"] for m in ms]), 3)
                       for k in (*PARTS, "other")}}
               for b, ms in runs.items()}
    ratios = {}
    if "ffm" in runs and "gru" in runs:
        ratios["ffm/gru"] = spread([a["env_steps_per_s"] / b["env_steps_per_s"]
                                    for a, b in zip(runs["ffm"], runs["gru"])], 2, keep=None)
    result = {"benchmark": "rppo-throughput", "preset": "popgym-ppo", "task": args.task,
              "steps_per_measurement": args.steps, "rounds": args.rounds,
              "threads": args.threads, "loadavg_1min_before": round(load0, 2),
              "loadavg_1min_after": round(load1, 2),
              "loaded": max(load0, load1) > (os.cpu_count() or 1),
              "target_env_steps_per_s": 3000, "summary": summary, "ratios": ratios,
              "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rppo_throughput.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({"summary": summary, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
