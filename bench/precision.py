"""run.precision fp32 vs bf16, measured: seconds per update of the world-model agent at the
bundled presets' sizes, and how far bf16's losses sit from fp32's.

    python bench/precision.py                       # cartpole, minatar, dmc-proprio, atari100k
    python bench/precision.py --presets cartpole --rounds 5
    python bench/precision.py --quick               # smoke test: 1 round, few updates, no files
    python bench/precision.py --learning 0 1        # + the default CartPole run in bf16, seeds

Per preset: `--rounds` rounds of fp32, bf16, fp32, bf16, ... each a fresh process that
builds the preset's agent (seed 0, `--threads` torch threads, the preset's own
run.compile), fills its replay with
`PRESETS`' prefill of real env steps through the driver (the data
do not change the cost of an update), then times `--warmup` + `--updates` updates and
reports the median of the last `--updates`. Both precisions see the same env steps and the
same first batch (same seed), so the first update's world-model loss differs by rounding
alone (reported per process in `first_losses`, and as `relative_loss_difference`); its
actor-critic losses come from imagined rollouts, which sample other latents and actions as
soon as the world model's weights differ, so they are not a rounding measure. Summaries:
median and min-max over rounds, and the per-round ratio fp32 / bf16 (> 1: bf16 is faster).
The CPU's bf16 features (`amx_bf16`, `avx512_bf16` in /proc/cpuinfo) and its fp32 matmul
speed are recorded: without them bf16 is emulated.

`--learning SEED...`: whether bf16 still learns: the default `reverie train` (CartPole,
Mamba-2, 5k env steps, 1 thread) with `--set run.precision=bf16`, one seed at a time,
archived under bench/results/runs/precision/, beside `bench/cartpole.py`'s fp32 runs of the
same seeds (cartpole.json); merged into precision.json's `learning`.

Writes bench/results/precision.json and precision.png.
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
from compile import summary  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PRESETS = {  # preset -> (extra overrides, prefill env steps)
    "cartpole": ([], 600),
    "minatar": (["env.id=minatar:breakout"], 1100),
    "dmc-proprio": (["env.id=dmc:walker-walk"], 1100),
    "atari100k": (["env.id=ALE/Pong-v5"], 1100),
}
LOSSES = ("wm/loss", "ac/actor_loss", "ac/critic_loss")


def measure(preset: str, precision: str, updates: int, warmup: int, threads: int) -> dict:
    """One process: the preset's agent at `precision`, seconds per update (module doc)."""
    import torch

    from reverie.allocator import keep_freed_memory
    from reverie.config import build_config
    from reverie.run.driver import Trainer

    keep_freed_memory()  # as the `reverie` command does
    extra, prefill = PRESETS[preset]
    load0 = os.getloadavg()[0]
    cfg = build_config(preset, [*extra, f"run.precision={precision}", f"run.threads={threads}",
                                f"run.prefill={prefill}", "run.eval_episodes=0",
                                "run.progress=false", "run.checkpoint_every=1000000000"],
                       {"steps": prefill})
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        trainer.train()  # prefill only: random actions into the replay
        agent, replay = trainer.agent, trainer.replay
        torch.manual_seed(0)
        t0 = time.perf_counter()
        first = agent.update(replay)
        first_s = time.perf_counter() - t0
        times = []
        for i in range(warmup + updates):
            t0 = time.perf_counter()
            agent.update(replay)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return {"preset": preset, "precision": precision, "threads": threads,
            "first_update_s": round(first_s, 3),
            "seconds_per_update": round(statistics.median(times), 4), "updates": updates,
            "first_losses": {k: float(first[k]) for k in LOSSES if k in first},
            "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def run_worker(preset: str, precision: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", preset, precision, "--updates",
           str(args.updates), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"worker {preset}/{precision} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_bf16_features() -> list[str]:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("amx_bf16", "avx512_bf16", "amx_tile")})


def summarise(rounds: list[dict]) -> dict:
    per = {p: [r["seconds_per_update"] for r in rounds if r["precision"] == p]
           for p in ("fp32", "bf16")}
    ratios = [a["seconds_per_update"] / b["seconds_per_update"]
              for a, b in zip([r for r in rounds if r["precision"] == "fp32"],
                              [r for r in rounds if r["precision"] == "bf16"])]
    first = {p: [r["first_losses"] for r in rounds if r["precision"] == p][0]
             for p in ("fp32", "bf16")}
    return {"fp32": summary(per["fp32"]), "bf16": summary(per["bf16"]),
            "ratio_fp32_over_bf16": summary(ratios, 3),
            "first_losses": first,
            "relative_loss_difference": {
                "wm/loss": round(abs(first["bf16"]["wm/loss"] - first["fp32"]["wm/loss"])
                                 / abs(first["fp32"]["wm/loss"]), 6)}}


def learning(seeds: list[int]) -> int:
    """The default CartPole run in bf16 (module doc), merged into precision.json."""
    from cartpole import TARGET_STEPS, run_reverie
    from runlib import RUNS_ROOT

    path = RESULTS / "precision.json"
    fp32 = {e["seed"]: e for e in json.loads((RESULTS / "cartpole.json").read_text())["runs"]
            if e.get("backbone") == "mamba2" and "eval_return" in e}
    for seed in seeds:
        entry = run_reverie("mamba2", seed, TARGET_STEPS, RUNS_ROOT / "precision" / "cartpole",
                            ["run.precision=bf16", "run.threads=1"], reuse=True)
        entry = dict(entry, precision="bf16",
                     fp32_eval_return=fp32.get(seed, {}).get("eval_return"))
        print(json.dumps(entry), flush=True)
        report = json.loads(path.read_text()) if path.exists() else {"benchmark": "precision"}
        report["learning"] = [e for e in report.get("learning", []) if e["seed"] != seed]
        report["learning"].append(entry)
        report["learning"].sort(key=lambda e: e["seed"])
        path.write_text(json.dumps(report, indent=1))
    return 0


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(report["presets"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(presets), 3.4))
    width = 0.38
    for i, p in enumerate(("fp32", "bf16")):
        med = [report["presets"][k][p]["median"] for k in presets]
        lo = [m - report["presets"][k][p]["min"] for k, m in zip(presets, med)]
        hi = [report["presets"][k][p]["max"] - m for k, m in zip(presets, med)]
        xs = [j + (i - 0.5) * width for j in range(len(presets))]
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, label=p)
    ax.set_xticks(range(len(presets)), presets)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per update (log)")
    ax.set_title(f"world-model agent update, {report['threads']} thread(s): median, min-max")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--updates", type=int, default=None,
                   help="timed updates per process (default: 20, atari100k 3)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="1 round, 3 updates, no files")
    p.add_argument("--learning", nargs="+", type=int, metavar="SEED",
                   help="train the default CartPole run in bf16 for these seeds (only that)")
    p.add_argument("--worker", nargs=2, metavar=("PRESET", "PRECISION"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(*args.worker, args.updates or 3, args.warmup, args.threads)))
        return 0
    if args.learning:
        return learning(args.learning)
    if args.quick:
        args.rounds, args.updates, args.warmup = 1, 3, 1
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from runlib import matmul_gflops

    report = {"benchmark": "precision", "threads": args.threads, "rounds": args.rounds,
              "cpu_bf16_features": cpu_bf16_features(), "cores": os.cpu_count(),
              "matmul_gflops_before": round(matmul_gflops(args.threads), 1),
              "loadavg_1min_before": round(os.getloadavg()[0], 2), "presets": {}, "runs": []}
    for preset in args.presets:
        n = args.updates or (3 if preset == "atari100k" else 20)
        rounds = []
        for _ in range(args.rounds):
            for precision in ("fp32", "bf16"):
                r = run_worker(preset, precision, argparse.Namespace(
                    updates=n, warmup=args.warmup, threads=args.threads))
                print(json.dumps(r), flush=True)
                rounds.append(r)
        report["runs"] += rounds
        report["presets"][preset] = summarise(rounds)
        print(json.dumps({preset: report["presets"][preset]}), flush=True)
    report["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    report["loaded"] = max(report["loadavg_1min_before"], report["loadavg_1min_after"]) > (
        os.cpu_count() or 1)
    if args.quick:
        return 0
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "precision.json"
    if path.exists():  # the learning runs are recorded apart (--learning)
        report["learning"] = json.loads(path.read_text()).get("learning", [])
    path.write_text(json.dumps(report, indent=1))
    plot(report, RESULTS / "precision.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
