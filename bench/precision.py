"""run.precision fp32 vs bf16, measured: seconds per update of the world-model agent at the
bundled presets' sizes, and how far bf16's losses sit from fp32's.

    python bench/precision.py                       # cartpole, minatar, dmc-proprio, atari100k
    python bench/precision.py --presets cartpole --updates 30
    python bench/precision.py --quick               # smoke test: 2 updates each, no files
    python bench/precision.py --learning 0 1        # + the default CartPole run in bf16, seeds
    python bench/precision.py --matmul --threads 2  # a 2048² matmul, fp32 vs bf16 (the ceiling)

Per preset, one process: the preset's agent (seed 0, `--threads` torch threads, the preset's
own run.compile) fills its replay with `PRESETS`' prefill of real env steps through the
driver (the data do not change the cost of an update), then runs `--warmup` + `--updates`
updates per precision in alternation, fp32, bf16, fp32, bf16, ... (`reverie.precision`'s
autocast around each), so a load that changes during the measurement falls on both alike.
Reported: median and min-max seconds per update of each, and of the ratios of neighbouring
fp32/bf16 pairs (> 1: bf16 is faster). Rounding alone: the world-model loss of one replay
batch with the same weights in both precisions (`wm_loss`). The CPU's
bf16 features (`amx_bf16`, `avx512_bf16` in /proc/cpuinfo) and its fp32 matmul speed are
recorded: without them bf16 is emulated.

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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import (  # noqa: E402
    add_worker_arguments,
    alternate,
    close_report,
    prefilled_agent,
    run_worker,
    spread,
)

RESULTS = Path(__file__).parent / "results"
PRESETS = {  # preset -> (extra overrides, prefill env steps)
    "cartpole": ([], 600),
    "minatar": (["env.id=minatar:breakout"], 1100),
    "dmc-proprio": (["env.id=dmc:walker-walk"], 1100),
    "atari100k": (["env.id=ALE/Pong-v5"], 1100),
}


def measure(preset: str, updates: int, warmup: int, threads: int) -> dict:
    """One process: the preset's agent, updates alternating fp32 and bf16 (module doc)."""
    import torch

    from reverie.precision import autocast

    extra, prefill = PRESETS[preset]
    load0 = os.getloadavg()[0]
    cpu = torch.device("cpu")
    with prefilled_agent(preset, extra, prefill, threads) as (agent, replay):
        # rounding alone: the world-model loss of one batch, same weights, both precisions
        torch.manual_seed(0)
        batch = agent._batch(replay.sample(agent.cfg.batch_size, agent.cfg.seq_len,
                                           purpose="train"))
        with torch.no_grad():
            loss = {"fp32": float(agent.world.loss_terms(batch)[0])}
            with autocast(cpu, "bf16"):
                loss["bf16"] = float(agent.world.loss_terms(batch)[0])

        def update(precision: str):
            def call() -> None:
                with autocast(cpu, precision):
                    agent.update(replay)
            return call

        times = alternate({p: update(p) for p in ("fp32", "bf16")}, updates, warmup)
    pairs = [a / b for a, b in zip(times["fp32"], times["bf16"])]
    return {"preset": preset, "threads": threads, "updates": updates, "warmup": warmup,
            "fp32": spread(times["fp32"], 4), "bf16": spread(times["bf16"], 4),
            "ratio_fp32_over_bf16": spread(pairs, 3),
            "wm_loss": loss,
            "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def matmul(threads: int, n: int = 2048, rounds: int = 5) -> int:
    """What bf16 could give at most: an n x n matmul's GFLOP/s in fp32 and in bf16 (torch's
    bf16 matmul, as autocast runs it), alternating, `rounds` rounds of 10 products each;
    merged into precision.json's `matmul`."""
    import torch

    torch.set_num_threads(threads)
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    pairs = {"fp32": (a32, b32), "bf16": (a32.bfloat16(), b32.bfloat16())}

    def product(dtype: str):
        a, b = pairs[dtype]
        return lambda: [a @ b for _ in range(10)]

    load0 = os.getloadavg()[0]
    times = alternate({k: product(k) for k in pairs}, rounds, warmup=1)
    rates = {k: [10 * 2 * n**3 / t / 1e9 for t in v] for k, v in times.items()}
    result = {"n": n, "threads": threads, "rounds": rounds,
              "gflops": {k: spread(v, 1) for k, v in rates.items()},
              "bf16_over_fp32": spread([b / f for f, b in zip(rates["fp32"], rates["bf16"])], 2),
              "cpu_bf16_features": cpu_bf16_features(),
              "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    print(json.dumps(result))
    path = RESULTS / "precision.json"
    report = json.loads(path.read_text()) if path.exists() else {"benchmark": "precision"}
    report["matmul"] = result
    path.write_text(json.dumps(report, indent=1))
    return 0


def cpu_bf16_features() -> list[str]:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("amx_bf16", "avx512_bf16", "amx_tile")})


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
    p.add_argument("--updates", type=int, default=None,
                   help="timed updates per precision (default: 15, atari100k 4)")
    add_worker_arguments(p, list(PRESETS))
    p.add_argument("--learning", nargs="+", type=int, metavar="SEED",
                   help="train the default CartPole run in bf16 for these seeds (only that)")
    p.add_argument("--matmul", action="store_true",
                   help="only a 2048² matmul in fp32 and bf16, alternating (into `matmul`)")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.updates or 3, args.warmup, args.threads)))
        return 0
    if args.learning:
        return learning(args.learning)
    if args.matmul:
        return matmul(args.threads)
    if args.quick:
        args.updates, args.warmup = 2, 1
    from runlib import matmul_gflops

    report = {"benchmark": "precision", "threads": args.threads,
              "cpu_bf16_features": cpu_bf16_features(), "cores": os.cpu_count(),
              "matmul_gflops_before": round(matmul_gflops(args.threads), 1),
              "loadavg_1min_before": round(os.getloadavg()[0], 2), "presets": {}}
    for preset in args.presets:
        n = args.updates or (4 if preset == "atari100k" else 15)
        r = run_worker(__file__, preset, n, args.warmup, args.threads)
        print(json.dumps(r), flush=True)
        report["presets"][preset] = r
    close_report(report)
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
