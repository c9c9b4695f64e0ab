"""run.compile=auto vs on at each preset's own sizes: seconds per update, compile seconds on a
cold and a warm cache, and whether `on` pays within the preset's default-length run.

    python bench/compile_presets.py                       # minatar, dmc-proprio, cartpole
    python bench/compile_presets.py --presets minatar --updates 10
    python bench/compile_presets.py --quick               # smoke test: no files

`run.compile=auto` (the default) compiles the imagined step only, the rule measured at the
cartpole preset (bench/compile.py --auto); `on` also compiles the world-model loss, the
context warm-up and the actor-critic losses, and builds reverie's own kernels (the one-hot
weight gradient, imagination's latent sample and Mamba-2 step).
Per preset (seed 0, `--threads` torch threads, fp32, a replay of random env steps through the
driver, `runlib.bench_agent`), five fresh processes:
- cold: `on` alone with an empty inductor cache, then `auto` alone with another empty one;
  each times its first update and `--warmup` + 3 more: compile seconds = the first update
  minus the median of the 3 after;
- warm: the same two again on those caches (what a second run of the same config pays);
- updates: both agents in one process (the caches warm), updates alternating auto, on,
  on, auto, ... (`runlib.alternate`, the order reversed every other round): median and
  min-max seconds per update of each and of the per-round ratio auto / on (> 1: on is faster).
Compile seconds include the kernels' builds, which `on` runs when the agent is set up
(`Compiler.build`, timed there), before its first update.
A preset's default run has (steps − prefill) x train_ratio / (batch x seq_len) updates;
`on` saves the median over rounds of (auto − on) per update times those, and pays on a cold
cache when that exceeds (cold compile of on − cold compile of auto). Reported with the
1-minute load and an fp32 matmul probe.

Writes bench/results/compile_presets.json (a run of some presets keeps the others').
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
from runlib import (  # noqa: E402
    BENCH_PRESETS,
    alternate,
    bench_agent,
    matmul_gflops,
    preset_report,
    spread,
)

PRESETS = [n for n in BENCH_PRESETS if n != "matched"]  # atari100k ~5 s per update
DEFAULT_PRESETS = ["minatar", "dmc-proprio", "cartpole"]
MODES = ("auto", "on")
AFTER_FIRST = 3  # updates timed after the first to tell its compile seconds


def first_update(name: str, mode: str, warmup: int, threads: int) -> dict:
    """One agent: its first update's seconds, the median of AFTER_FIRST after `warmup`, and
    the seconds of the kernel builds its set-up ran (`Compiler.build`, before any update)."""
    from reverie.compiler import Compiler

    build, built = Compiler.build, [0.0]

    def timed_build(self, *a, **k):
        t = time.perf_counter()
        try:
            return build(self, *a, **k)
        finally:
            built[0] += time.perf_counter() - t

    Compiler.build = timed_build
    with bench_agent(name, mode, threads) as (agent, replay):
        t0 = time.perf_counter()
        agent.update(replay)
        first = time.perf_counter() - t0
        for _ in range(warmup):
            agent.update(replay)
        after = alternate({mode: lambda: agent.update(replay)}, AFTER_FIRST, 0)[mode]
    steady = statistics.median(after)
    return {"first_update_s": round(first, 3), "steady_update_s": round(steady, 4),
            "kernel_build_s": round(built[0], 2),
            "compile_s": round(first - steady + built[0], 2)}


def updates(name: str, rounds: int, warmup: int, threads: int) -> dict:
    """Both agents in one process, updates alternating (module doc)."""
    with bench_agent(name, "auto", threads) as (auto, replay_a), \
            bench_agent(name, "on", threads) as (on, replay_o):
        times = alternate({"auto": lambda: auto.update(replay_a),
                           "on": lambda: on.update(replay_o)}, rounds, warmup, flip=True)
    return {"update": {m: spread(times[m], 4) for m in MODES},
            "ratio_auto_over_on": spread([a / b for a, b in zip(times["auto"], times["on"])],
                                         3)}


def default_updates(name: str) -> dict:
    """The preset's default run: env steps, prefill, train ratio, and its updates."""
    from reverie.config import build_config

    preset, over, _ = BENCH_PRESETS[name]
    cfg = build_config(preset, over, {})
    per = cfg.imagine.batch_size * cfg.imagine.seq_len
    n = (cfg.run.steps - cfg.run.prefill) * cfg.run.train_ratio / per
    return {"steps": cfg.run.steps, "prefill": cfg.run.prefill,
            "train_ratio": cfg.run.train_ratio, "replayed_per_update": per,
            "updates": int(n)}


def _worker(args: list[str], cache: str | None = None) -> dict:
    env = dict(os.environ)
    if cache is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         timeout=7200, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(name: str, rounds: int, warmup: int, threads: int) -> dict:
    """The five processes of one preset (module doc)."""
    load0, gflops = os.getloadavg()[0], matmul_gflops(threads)
    common = ["--warmup", str(warmup), "--threads", str(threads)]
    with tempfile.TemporaryDirectory(prefix="compile-on-") as on_dir, \
            tempfile.TemporaryDirectory(prefix="compile-auto-") as auto_dir:
        dirs = {"on": on_dir, "auto": auto_dir}
        first = {cache: {m: _worker(["--first", name, m, *common], dirs[m]) for m in MODES}
                 for cache in ("cold", "warm")}
        timed = _worker(["--updates-of", name, "--rounds", str(rounds), *common], on_dir)
    run = default_updates(name)
    cold = {m: first["cold"][m]["compile_s"] for m in MODES}
    # per round (the arms alternate so that a machine slowing down falls on both alike)
    per_round = statistics.median(a - b for a, b in zip(timed["update"]["auto"]["values"],
                                                        timed["update"]["on"]["values"]))
    saved = per_round * run["updates"]
    return {"preset": name, "threads": threads, "rounds": rounds, "warmup": warmup,
            "date": time.strftime("%Y-%m-%d %H:%M"), "matmul_gflops_before": gflops,
            "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "first_update": first, "update": timed["update"],
            "ratio_auto_over_on": timed["ratio_auto_over_on"], "default_run": run,
            "on_saves_s_per_default_run": round(saved, 1),
            "on_extra_cold_compile_s": round(cold["on"] - cold["auto"], 1),
            "on_pays_on_a_cold_cache": saved > cold["on"] - cold["auto"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS, choices=PRESETS)
    p.add_argument("--rounds", type=int, default=8, help="timed rounds (one update per mode)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke test: 2 rounds, no files")
    p.add_argument("--first", nargs=2, metavar=("PRESET", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--updates-of", metavar="PRESET", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.first:
        name, mode = args.first
        print(json.dumps(first_update(name, mode, args.warmup, args.threads)))
        return 0
    if args.updates_of:
        print(json.dumps(updates(args.updates_of, args.rounds, args.warmup, args.threads)))
        return 0
    if args.quick:
        args.rounds, args.warmup = 2, 1
    preset_report("compile_presets", args.presets, PRESETS, args.threads, args.quick,
                  lambda name: measure(name, args.rounds, args.warmup, args.threads),
                  ("preset", "update", "ratio_auto_over_on", "first_update",
                   "on_saves_s_per_default_run", "on_extra_cold_compile_s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
