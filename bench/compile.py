"""run.compile off vs on, measured: seconds per update of the `cartpole` preset's agent, the
compile time with a cold and a warm cache, and the matmul share of two backbones' time.

    python bench/compile.py                 # mamba2 and gru, 3 rounds, + the profiles
    python bench/compile.py --rounds 5 --backbones mamba2
    python bench/compile.py --quick         # smoke test: 1 round, few updates, no files
    python bench/compile.py --drift-only    # add the off-vs-on drift to compile.json
    python bench/compile.py --auto          # run.compile=auto's rule -> compile_auto.json
    python bench/compile.py --isa           # vector ISA trusted vs probed -> compile_isa.json

Per backbone: one process with compile on and an empty inductor cache (cold: the first
update pays tracing, code generation and C++ compilation), one more on that cache (warm),
then `--rounds` rounds of off, on, off, on, ... each a fresh process on the warm cache.
Every process builds the preset's agent (seed 0, 1 torch thread), trains it on a synthetic
replay with CartPole's shapes (the cost does not depend on the data; 2% of steps start an
episode, so the reset paths run), and reports the first update's seconds and the median of
`--updates` updates after `--warmup` more. Compile time = first update − that median.
Summaries: median and min-max over rounds; the per-round ratio off / on (> 1: compile is
faster). The 1-minute load average is recorded around every process; `loaded` says it
exceeded the core count.

Drift (`drift`): compile off and on from the same seed on the same synthetic batches, in
one process: the differences of the losses update by update (float rounding only).

Profiles (`matmul_share`): forward + backward of the mamba2 and ffm backbones at B=16,
T=256, D=256, 2 layers, eager and compiled, under torch.profiler: the share of the op time
spent in matmul ops (aten::mm, addmm, bmm, baddbmm, matmul, linear; inductor calls the same
aten GEMMs, and the time of its fused C++ kernels counts as time of the compiled region).

`--auto`: the rule behind run.compile=auto, per backbone (all five by default): the imagined
step compiled alone (mode "step") vs eager, cold and warm compile time as above, `--rounds`
rounds alternating off and step; the step pays on a cold cache when (median off − median
step) x 1125 updates (a default 5000-step run) exceeds the cold compile time.

`--isa`: the compile time of run.compile=auto (mamba2's imagined step) with the CPU's vector
ISA trusted (reverie's default, src/reverie/compiler.py) vs probed (inductor's own dry
compiles of a probe library per ISA), `--rounds` rounds alternating the two, each a process
on an empty cache (cold) and one more on that cache (warm).

Writes bench/results/compile.json and compile.png (`--auto`: compile_auto.json, `--isa`:
compile_isa.json and .md).
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

from runlib import spread  # bench/ is the script's directory

RESULTS = Path(__file__).parent / "results"
ISA_ENV = "REVERIE_BENCH_ISA"  # --isa's child: "probed" turns reverie's ISA trust off
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
              "aten::linear")


# -- one measurement, in its own process ----------------------------------------------------
def measure(mode: str, backbone: str, updates: int, warmup: int) -> dict:
    """Seconds of the first update and the median of `updates` later ones (see module doc)."""
    import torch
    from gymnasium.spaces import Discrete

    from coplanner_cost import SyntheticReplay  # bench/ is the script's directory
    from reverie.agents.imagine import ImagineAgent
    from reverie.allocator import keep_freed_memory
    from reverie.compiler import Compiler
    from reverie.config import build_config, to_object
    from runlib import PartTimer

    keep_freed_memory()  # as the `reverie` command does
    torch.set_num_threads(1)
    if os.environ.get(ISA_ENV) == "probed":  # --isa: inductor's probes, as without reverie
        from reverie import compiler as compiler_module

        compiler_module.TRUSTING = compiler_module.OPTIONS
    load0 = os.getloadavg()[0]
    cfg = to_object(build_config("cartpole", [], {"backbone": backbone}), "imagine")
    torch.manual_seed(0)
    agent = ImagineAgent({"vector": ((4,), "float32")}, Discrete(2), cfg,
                         torch.device("cpu"), 0)
    notes: list[str] = []
    compiler = None
    if mode == "on":
        compiler = Compiler(notes.append)
        agent.compile(compiler)
    elif mode == "step":  # run.compile=auto as if this backbone were in AUTO_COMPILE_STEP
        from reverie.agents import imagine

        imagine.AUTO_COMPILE_STEP = frozenset({backbone})
        compiler = Compiler(notes.append, "auto")
        agent.compile(compiler)
    replay = SyntheticReplay()
    timer = PartTimer()
    for obj, name, part in ((agent, "train_world", "world-model step"),
                            (agent, "imagine", "imagination"),
                            (agent.behavior, "update", "actor-critic")):
        timer.wrap(obj, name, part)
    t0 = time.perf_counter()
    agent.update(replay)
    first = time.perf_counter() - t0
    times = []
    for i in range(warmup + updates):
        if i == warmup:
            before = dict(timer.seconds)
        t0 = time.perf_counter()
        agent.update(replay)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    parts = {k: round(1000 * (v - before[k]) / updates, 1) for k, v in timer.seconds.items()}
    from torch._inductor.cpu_vec_isa import pick_vec_isa  # the ISA its kernels were built for

    isa = str(pick_vec_isa()) if mode != "off" else None
    return {"mode": mode, "backbone": backbone, "first_update_s": round(first, 3), "isa": isa,
            "seconds_per_update": round(median, 4), "ms_per_update_by_part": parts,
            "compile_s": round(first - median, 2) if mode != "off" else None,
            "fell_back": bool(compiler is not None and compiler.eager), "notes": notes,
            "updates": updates, "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def drift(backbone: str, updates: int) -> dict:
    """Compile off vs on from the same seed on the same batches, in one process: how far
    the metrics of update n drift apart by float rounding alone (no env in the loop)."""
    import torch
    from gymnasium.spaces import Discrete

    from coplanner_cost import SyntheticReplay
    from reverie.agents.imagine import ImagineAgent
    from reverie.compiler import Compiler
    from reverie.config import build_config, to_object

    torch.set_num_threads(1)
    cfg = to_object(build_config("cartpole", [], {"backbone": backbone}), "imagine")
    runs = {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        agent = ImagineAgent({"vector": ((4,), "float32")}, Discrete(2), cfg,
                             torch.device("cpu"), 0)
        if mode == "on":
            agent.compile(Compiler(print))
        replay = SyntheticReplay()
        runs[mode] = [agent.update(replay) for _ in range(updates)]
    keys = ("wm/loss", "ac/actor_loss", "ac/critic_loss")
    per_update = []
    for n, (a, b) in enumerate(zip(runs["off"], runs["on"]), 1):
        rel = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-8) for k in a)
        per_update.append({"update": n, **{k: abs(a[k] - b[k]) for k in keys},
                           "max_rel_any_metric": rel})
    return {"backbone": backbone, "updates": updates,
            "identical_updates": sum(a == b for a, b in zip(runs["off"], runs["on"])),
            "max_abs_diff": {k: max(u[k] for u in per_update) for k in keys},
            "max_rel_diff_any_metric": max(u["max_rel_any_metric"] for u in per_update),
            "per_update": per_update, "loadavg_1min": round(os.getloadavg()[0], 2)}


def part_medians(runs: list[dict]) -> dict[str, float]:
    """Median over processes of the ms per update in each part."""
    parts = runs[0]["ms_per_update_by_part"]
    return {k: round(statistics.median(r["ms_per_update_by_part"][k] for r in runs), 1)
            for k in parts}


def run_child(mode: str, backbone: str, updates: int, warmup: int, cache: Path,
              isa: str = "trusted") -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1",
           ISA_ENV: isa}
    cmd = [sys.executable, __file__, "--child", mode, backbone, str(updates), str(warmup)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode}/{backbone} failed: {proc.stderr.strip()[-800:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in result.items() if k != "notes"}), flush=True)
    return result


# -- matmul share under torch.profiler ------------------------------------------------------
def matmul_share(backbone: str, compiled: bool, B: int, T: int, D: int, iters: int) -> dict:
    """Share of profiled op time in matmul ops, forward + backward of one backbone."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from reverie.compiler import OPTIONS
    from reverie.sequence import make_backbone

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = make_backbone(backbone, d_model=D, n_layers=2)
    x = torch.randn(B, T, D)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x, None, None)[0]

    fwd = torch.compile(forward, dynamic=False, options=OPTIONS) if compiled else forward

    def step() -> None:
        fwd(x).square().mean().backward()

    t0 = time.perf_counter()
    step()  # compiles (when compiled)
    first = time.perf_counter() - t0
    step()
    walls = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    by_op = {e.key: e.self_cpu_time_total for e in events if e.key in MATMUL_OPS}
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return {"backbone": backbone, "compiled": compiled, "B": B, "T": T, "D": D, "n_layers": 2,
            "first_call_s": round(first, 2),
            "ms_fwd_bwd": round(1000 * statistics.median(walls), 2),
            "matmul_share": round(sum(by_op.values()) / total, 4),
            "matmul_share_by_op": {k: round(v / total, 4) for k, v in sorted(by_op.items())},
            "top_self_time": {e.key: round(e.self_cpu_time_total / total, 4) for e in top},
            "loadavg_1min": round(os.getloadavg()[0], 2)}


def cold_warm_rounds(mode: str, backbone: str, rounds: int, updates: int, warmup: int,
                     cache: Path) -> tuple[dict, dict, dict[str, list[dict]]]:
    """One process compiling in `mode` on the empty `cache` (cold), one more on it (warm),
    then `rounds` rounds alternating eager ("off") and `mode`, each a fresh process."""
    cold = run_child(mode, backbone, updates, warmup, cache)
    warm = run_child(mode, backbone, updates, warmup, cache)
    runs: dict[str, list[dict]] = {"off": [], mode: []}
    for _ in range(rounds):
        for m in ("off", mode):
            runs[m].append(run_child(m, backbone, updates, warmup, cache))
    return cold, warm, runs


def run_drift(backbone: str, updates: int, cache: Path) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--drift-child", backbone, str(updates)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"drift {backbone} failed: {proc.stderr.strip()[-800:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in result.items() if k != "per_update"}), flush=True)
    return result


def run_profile(backbone: str, compiled: bool, cache: Path, quick: bool) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--profile-child", backbone, "on" if compiled else "off"]
    if quick:
        cmd.append("--quick")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"profile {backbone} failed: {proc.stderr.strip()[-800:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def profile_both(backbones: list[str], tmp: Path, quick: bool) -> dict[str, dict]:
    """The matmul share of each backbone with compile off and on, each in its own process
    (the compiled one on a fresh inductor cache under `tmp`)."""
    return {bb: {m: run_profile(bb, m == "on", tmp / f"profile-{bb}", quick)
                 for m in ("off", "on")} for bb in backbones}


# -- the whole benchmark ----------------------------------------------------------------------
def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    names = list(result["agent"])
    for i, mode in enumerate(("off", "on")):
        s = [result["agent"][b]["seconds_per_update"][mode] for b in names]
        med = [v["median"] for v in s]
        err = [[m - v["min"] for m, v in zip(med, s)], [v["max"] - m for m, v in zip(med, s)]]
        axes[0].bar([j + 0.38 * i for j in range(len(names))], med, 0.38, yerr=err, capsize=3,
                    label=f"compile {mode}")
    axes[0].set_xticks([j + 0.19 for j in range(len(names))], names)
    axes[0].set_ylabel("seconds per update")
    axes[0].set_title("cartpole preset (median, min-max)")
    axes[0].legend()
    prof = result.get("matmul_share", {})
    labels, shares = [], []
    for b, modes in prof.items():
        for mode, r in modes.items():
            labels.append(f"{b}\n{mode}")
            shares.append(r["matmul_share"])
    axes[1].bar(labels, shares)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("matmul share, fwd+bwd B16 T256 D256")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


AUTO_BACKBONES = ("mamba2", "mamba1", "ffm", "transformer", "gru")
DEFAULT_RUN_UPDATES = 1125  # the cartpole preset's 5000 env steps: (5000 - 500) / 4


def auto_benchmark(backbones: list[str], rounds: int, updates: int, warmup: int) -> dict:
    """run.compile=auto's rule, measured per backbone: compile only the imagined step
    (mode "step") vs eager, and whether its cold compile is repaid within a default run."""
    cores = os.cpu_count() or 1
    load0 = os.getloadavg()[0]
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="reverie-compile-auto-") as tmp:
        for bb in backbones:
            cold, warm, runs = cold_warm_rounds("step", bb, rounds, updates, warmup,
                                                Path(tmp) / f"cache-{bb}")
            spu = {m: [r["seconds_per_update"] for r in rs] for m, rs in runs.items()}
            saved = (statistics.median(spu["off"]) - statistics.median(spu["step"])) * \
                DEFAULT_RUN_UPDATES
            loads = [x for r in [cold, warm, *runs["off"], *runs["step"]]
                     for x in r["loadavg_1min"]]
            out[bb] = {
                "seconds_per_update": {m: spread(v, 4) for m, v in spu.items()},
                "speedup_off_over_step": spread([a / b for a, b in zip(spu["off"], spu["step"])],
                                                3),
                "ms_per_update_by_part_median": {m: part_medians(rs) for m, rs in runs.items()},
                "compile_s": {"cold": cold["compile_s"], "warm": warm["compile_s"]},
                "saved_s_per_default_run": round(saved, 1),
                "pays_on_cold_cache": bool(saved > cold["compile_s"]
                                           and not cold["fell_back"]),
                "fell_back": any(r["fell_back"] for r in [cold, warm, *runs["step"]]),
                "notes": sorted({n for r in [cold, warm, *runs["step"]] for n in r["notes"]}),
                "loadavg_1min_max": max(loads),
                "runs": {"cold": cold, "warm": warm, **runs},
            }
    import torch

    load1 = os.getloadavg()[0]
    loads = [load0, load1] + [a["loadavg_1min_max"] for a in out.values()]
    return {"benchmark": "compile_auto", "preset": "cartpole", "torch": torch.__version__,
            "torch_threads": 1, "cores": cores, "rounds": rounds,
            "updates_per_process": updates, "warmup_updates": warmup,
            "default_run_updates": DEFAULT_RUN_UPDATES,
            "loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(load1, 2),
            "loadavg_1min_max": round(max(loads), 2), "loaded": max(loads) > cores,
            "agent": out}


def isa_benchmark(rounds: int, updates: int, warmup: int, backbone: str = "mamba2") -> dict:
    """Cold and warm compile time of run.compile=auto with the vector ISA trusted vs probed
    (module doc), rounds alternating the two."""
    from reverie.agents.imagine import AUTO_COMPILE_STEP

    assert backbone in AUTO_COMPILE_STEP, backbone
    cores = os.cpu_count() or 1
    load0 = os.getloadavg()[0]
    runs: dict[str, dict[str, list[dict]]] = {m: {"cold": [], "warm": []}
                                              for m in ("trusted", "probed")}
    with tempfile.TemporaryDirectory(prefix="reverie-compile-isa-") as tmp:
        for r in range(rounds):
            for isa in ("trusted", "probed"):
                cache = Path(tmp) / f"{isa}-{r}"
                for temp in ("cold", "warm"):
                    runs[isa][temp].append(run_child("step", backbone, updates, warmup, cache,
                                                     isa))
    load1 = os.getloadavg()[0]
    compile_s = {isa: {t: spread([x["compile_s"] for x in rs], 2) for t, rs in by.items()}
                 for isa, by in runs.items()}
    saved = {t: spread([p["compile_s"] - q["compile_s"]
                        for p, q in zip(runs["probed"][t], runs["trusted"][t])], 2)
             for t in ("cold", "warm")}
    every = [x for by in runs.values() for rs in by.values() for x in rs]
    loads = [load0, load1] + [v for x in every for v in x["loadavg_1min"]]
    import torch

    return {"benchmark": "compile_isa", "preset": "cartpole", "backbone": backbone,
            "compile": "auto (the imagined step)", "torch": torch.__version__,
            "isa_picked": {isa: sorted({x["isa"] for rs in by.values() for x in rs})
                           for isa, by in runs.items()}, "cores": cores, "rounds": rounds,
            "torch_threads": 1, "compile_s": compile_s, "saved_s_per_round": saved,
            "fell_back": any(x["fell_back"] for x in every),
            "loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(load1, 2),
            "loadavg_1min_max": round(max(loads), 2), "loaded": max(loads) > cores,
            "runs": runs}


def isa_markdown(r: dict) -> str:
    c = r["compile_s"]

    def cell(s: dict) -> str:
        return f"{s['median']:.1f} ({s['min']:.1f}–{s['max']:.1f})"

    rows = [f"| {isa} | {cell(c[isa]['cold'])} | {cell(c[isa]['warm'])} |"
            for isa in ("probed", "trusted")]
    rows.append(f"| probed − trusted, per round | {cell(r['saved_s_per_round']['cold'])} | "
                f"{cell(r['saved_s_per_round']['warm'])} |")
    return "\n".join([
        "| vector ISA | compile s, cold cache | compile s, warm cache |", "| --- | --- | --- |",
        *rows, "",
        f"`{r['preset']}` preset, {r['backbone']}, run.compile={r['compile']}: compile s = "
        "first update − median update, each a fresh process; cold: an empty inductor cache, "
        f"warm: a second process on it. {r['rounds']} rounds alternating probed and trusted; "
        f"median (min–max). ISA of the kernels: probed {', '.join(r['isa_picked']['probed'])}"
        f", trusted {', '.join(r['isa_picked']['trusted'])}; torch {r['torch']}, "
        f"{r['torch_threads']} torch thread, {r['cores']} cores; 1-min load "
        f"{r['loadavg_1min_before']} before, {r['loadavg_1min_after']} after, at most "
        f"{r['loadavg_1min_max']}{' (**loaded**)' if r['loaded'] else ''}.", ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--updates", type=int, default=20, help="timed updates per process")
    p.add_argument("--warmup", type=int, default=3, help="updates after the first, untimed")
    p.add_argument("--backbones", nargs="*", default=["mamba2", "gru"])
    p.add_argument("--profiles", nargs="*", default=["mamba2", "ffm"])
    p.add_argument("--child", nargs=4, metavar=("MODE", "BACKBONE", "UPDATES", "WARMUP"))
    p.add_argument("--profile-child", nargs=2, metavar=("BACKBONE", "MODE"))
    p.add_argument("--drift-updates", type=int, default=30,
                   help="updates compared off vs on from one seed (0: skip)")
    p.add_argument("--drift-child", nargs=2, metavar=("BACKBONE", "UPDATES"))
    p.add_argument("--drift-only", action="store_true",
                   help="only add the off-vs-on drift to an existing compile.json")
    p.add_argument("--profiles-only", action="store_true",
                   help="only (re)measure the matmul share of --profiles (compile off and on) "
                        "into compile.json, keeping its other backbones and measurements")
    p.add_argument("--auto", action="store_true",
                   help="measure run.compile=auto's rule per backbone (the imagined step "
                        "alone vs eager) into compile_auto.json")
    p.add_argument("--isa", action="store_true",
                   help="compile time with the vector ISA trusted vs probed -> compile_isa.json")
    args = p.parse_args()
    if args.isa:
        updates, warmup = (2, 1) if args.quick else (5, 1)
        result = isa_benchmark(1 if args.quick else args.rounds, updates, warmup)
        print(isa_markdown(result))
        if not args.quick:
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "compile_isa.json").write_text(json.dumps(result, indent=1) + "\n")
            (RESULTS / "compile_isa.md").write_text(isa_markdown(result))
        return
    if args.auto:
        bbs = args.backbones if args.backbones != ["mamba2", "gru"] else list(AUTO_BACKBONES)
        result = auto_benchmark(bbs, args.rounds, args.updates, args.warmup)
        print(json.dumps({b: [a["speedup_off_over_step"]["median"], a["compile_s"]["cold"],
                              a["saved_s_per_default_run"]] for b, a in result["agent"].items()}))
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "compile_auto.json").write_text(json.dumps(result, indent=1) + "\n")
        return
    if args.drift_child:
        print(json.dumps(drift(args.drift_child[0], int(args.drift_child[1]))))
        return
    if args.profiles_only:
        path = RESULTS / "compile.json"
        result = json.loads(path.read_text())
        with tempfile.TemporaryDirectory(prefix="reverie-compile-bench-") as tmp:
            result.setdefault("matmul_share", {}).update(
                profile_both(args.profiles, Path(tmp), args.quick))
        if not args.quick:
            path.write_text(json.dumps(result, indent=1) + "\n")
            plot(result, RESULTS / "compile.png")
        return
    if args.drift_only:
        path = RESULTS / "compile.json"
        result = json.loads(path.read_text())
        with tempfile.TemporaryDirectory(prefix="reverie-compile-bench-") as tmp:
            result["drift"] = {bb: run_drift(bb, args.drift_updates, Path(tmp) / bb)
                               for bb in args.backbones}
        path.write_text(json.dumps(result, indent=1) + "\n")
        return
    if args.child:
        mode, backbone, updates, warmup = args.child
        print(json.dumps(measure(mode, backbone, int(updates), int(warmup))))
        return
    if args.profile_child:
        backbone, mode = args.profile_child
        sizes = (2, 64, 32, 2) if args.quick else (16, 256, 256, 5)
        print(json.dumps(matmul_share(backbone, mode == "on", *sizes)))
        return
    rounds, updates, warmup = (1, 2, 1) if args.quick else (args.rounds, args.updates,
                                                            args.warmup)
    cores = os.cpu_count() or 1
    load0 = os.getloadavg()[0]
    agent: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="reverie-compile-bench-") as tmp:
        for bb in args.backbones:
            cold, warm, runs = cold_warm_rounds("on", bb, rounds, updates, warmup,
                                                Path(tmp) / f"cache-{bb}")
            spu = {m: [r["seconds_per_update"] for r in rs] for m, rs in runs.items()}
            loads = [x for r in [cold, warm, *runs["off"], *runs["on"]] for x in r["loadavg_1min"]]
            agent[bb] = {
                "seconds_per_update": {m: spread(v, 4) for m, v in spu.items()},
                "speedup_off_over_on": spread([a / b for a, b in zip(spu["off"], spu["on"])], 3),
                "ms_per_update_by_part_median": {m: part_medians(rs) for m, rs in runs.items()},
                "compile_s": {"cold": cold["compile_s"], "warm": warm["compile_s"],
                              "warm_runs": [r["compile_s"] for r in runs["on"]]},
                "first_update_s": {"cold": cold["first_update_s"],
                                   "warm": warm["first_update_s"],
                                   "eager": [r["first_update_s"] for r in runs["off"]]},
                "fell_back": any(r["fell_back"] for r in [cold, warm, *runs["on"]]),
                "notes": sorted({n for r in [cold, warm, *runs["on"]] for n in r["notes"]}),
                "loadavg_1min_max": max(loads),
                "runs": {"cold": cold, "warm": warm, **runs},
            }
        drifts = {bb: run_drift(bb, 3 if args.quick else args.drift_updates,
                                Path(tmp) / f"cache-{bb}")
                  for bb in args.backbones if args.drift_updates}
        profiles = profile_both(args.profiles, Path(tmp), args.quick)
    import torch

    load1 = os.getloadavg()[0]
    loads = [load0, load1] + [a["loadavg_1min_max"] for a in agent.values()] + \
        [r["loadavg_1min"] for m in profiles.values() for r in m.values()]
    result = {
        "benchmark": "compile", "quick": args.quick, "preset": "cartpole",
        "torch": torch.__version__, "torch_threads": 1, "cores": cores, "rounds": rounds,
        "updates_per_process": updates, "warmup_updates": warmup,
        "loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(load1, 2),
        "loadavg_1min_max": round(max(loads), 2), "loaded": max(loads) > cores,
        "agent": agent, "drift": drifts, "matmul_share": profiles,
    }
    print(json.dumps({b: a["speedup_off_over_on"]["median"] for b, a in agent.items()}))
    if args.quick:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compile.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, RESULTS / "compile.png")


if __name__ == "__main__":
    main()
