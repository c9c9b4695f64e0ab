"""The Atari100k preset end to end on CPU: a short Pong run, its GIFs, and what 100k steps cost.

Runs `reverie train --preset atari100k --env ALE/Pong-v5` for 1000 prefill steps plus a few
updates at full Drama scale (7.4M-parameter Mamba-2 world model, 1024 imagined rollouts),
then `reverie watch` (policy GIF and real-vs-imagined GIF), and writes
bench/results/atari_smoke.json with the measured seconds per update and the extrapolated
wall time of the full protocol (100k env steps at one update per env step).

    python bench/atari_smoke.py                    # ~5 min on 2 cores
    python bench/atari_smoke.py --from-run runs/atari-smoke   # summarise an existing run
    git worktree add /tmp/base <commit>
    python bench/atari_smoke.py --baseline-src /tmp/base/src --rounds 3
        # seconds per update of this tree and of the older one at /tmp/base, alternating
        # (A B A B ..., the order reversed every round) -> bench/results/atari_ab.json
    python bench/atari_smoke.py --current-set run.compile=on --baseline-set run.compile=auto \
        --name atari_compile_ab                   # this tree with two settings, alternating
    python bench/atari_smoke.py --baseline-env GOMP_SPINCOUNT=300000 --name atari_spin_ab
        # this tree as the `reverie` command runs it against an environment variable set
    python bench/atari_smoke.py --bound-only      # FLOPs per update over the matmul peak
    python bench/atari_smoke.py --breakdown       # where an update's time goes

Each JSON also gets the compute bound: the FLOPs of one update (torch's FlopCounterMode) over
the machine's fp32 matmul peak, the fewest seconds per update that any implementation of the
same update could take on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCRATCH = ROOT / "runs" / "atari-smoke"  # the smoke run's default folder
MARK = ".atari-smoke"  # in a run folder this script made, which its next run replaces


def command(out: Path, updates: int, threads: int, sets: list[str] | None = None) -> list[str]:
    extra = [arg for kv in sets or [] for arg in ("--set", kv)]
    return [sys.executable, "-m", "reverie", "train", "--preset", "atari100k",
            "--env", "ALE/Pong-v5", "--steps", str(1000 + updates), "--set", "run.prefill=1000",
            "--set", "run.eval_episodes=0", "--set", "run.log_every=4",
            "--set", f"run.threads={threads}", *extra, "--out", str(out), "--no-progress"]


def as_typed(cmd: list[str]) -> list[str]:
    """The command as a user types it in the repository: `reverie ...` instead of this
    interpreter's `python -m reverie`, paths inside the repository relative to it (the JSON
    is committed and must not carry this machine's paths)."""
    shown = ["reverie", *cmd[3:]] if cmd[1:3] == ["-m", "reverie"] else list(cmd)
    for i, arg in enumerate(shown):
        path = Path(arg)
        if path.is_absolute() and path.is_relative_to(ROOT):
            shown[i] = str(path.relative_to(ROOT))
    return shown


def summarise(run: Path, cmd: list[str] | None, watch_s: float | None,
              after: int = 1000) -> dict:
    """The run's numbers; seconds per update from the first timing row at or after env step
    `after` (1000: the end of the prefill) to its last row."""
    rows = [json.loads(x) for x in (run / "timing.jsonl").read_text().splitlines()]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    grad = [r for r in metrics if "grad_steps" in r]
    first = next(r for r in rows if r["step"] >= after)
    last = rows[-1]
    steps = last["step"] - first["step"]
    per_update = (last["time/wall"] - first["time/wall"]) / max(steps, 1)
    full_hours = per_update * 100_000 / 3600
    gifs = sorted(p.name for p in run.glob("*.gif"))
    return {
        "benchmark": "atari_smoke",
        "command": None if cmd is None else as_typed(cmd),
        "env_steps": last["step"],
        "grad_steps": grad[-1]["grad_steps"] if grad else 0,
        "seconds_per_update": round(per_update, 2),
        "note": f"seconds per update measured between the first logged step at or after "
                f"{after} and the last (excludes start-up); one update per env step as in "
                "the preset",
        "full_protocol_hours_extrapolated": round(full_hours, 1),
        "full_protocol_days_extrapolated": round(full_hours / 24, 1),
        "gifs": gifs,
        "watch_seconds": None if watch_s is None else round(watch_s, 1),
        "wm_loss_last": grad[-1].get("wm/loss") if grad else None,
    }


# The first update comes at env step 1000, the end of the prefill, and compiles (the
# preset's run.compile: on since 2026-12-07, auto before); the first timing row after the
# prefill, at 1000 + WARMUP, follows WARMUP + 1 updates, and the timed window starts there
# (log_every 4: one row)
WARMUP = 4
TIMED = f"updates {{}} (the first {WARMUP + 1} include run.compile's compile)"


def alternate(args: argparse.Namespace) -> dict:
    """Seconds per update of this tree ("current", with --current-set) and of the reverie
    source at --baseline-src or this tree with --baseline-set ("baseline"), each a fresh
    run, alternating round by round."""
    import shutil

    from runlib import revision, spread  # bench/ is the script's directory

    base_src = None
    if args.baseline_src:
        base_src = Path(args.baseline_src).resolve()
        if not (base_src / "reverie" / "__init__.py").is_file():
            sys.exit(f"--baseline-src {base_src}: no reverie package there (give a tree's "
                     "src/)")
    here = revision(ROOT / "src")  # the code each side times: a tree's src/
    commit = revision(base_src) if base_src else here
    sets = {"current": args.current_set or [], "baseline": args.baseline_set or []}
    base_env = dict(kv.split("=", 1) for kv in args.baseline_env or [])
    per: dict[str, list[float]] = {"current": [], "baseline": []}
    loads = [round(os.getloadavg()[0], 2)]
    for r in range(args.rounds):
        for side in (("current", "baseline") if r % 2 == 0 else ("baseline", "current")):
            run = Path(args.out).with_name(f"atari-ab-{side}")
            shutil.rmtree(run, ignore_errors=True)
            env = dict(os.environ)
            if side == "baseline" and base_src:  # the older package first on the path
                env["PYTHONPATH"] = str(base_src)
            if side == "baseline":
                env.update(base_env)
            subprocess.run(command(run, args.updates + WARMUP, args.threads, sets[side]),
                           check=True, env=env)
            # after the first WARMUP updates: the first one compiles (run.compile=auto)
            per[side].append(summarise(run, None, None, 1000 + WARMUP)["seconds_per_update"])
            loads.append(round(os.getloadavg()[0], 2))
            print(f"round {r} {side}: {per[side][-1]} s/update", file=sys.stderr, flush=True)
    ratios = [b / c for b, c in zip(per["baseline"], per["current"])]
    return {"benchmark": "atari_ab",
            "command": as_typed(command(Path(args.out), args.updates + WARMUP, args.threads)),
            "baseline_commit": commit, "current_commit": here,
            "baseline_is_this_tree": base_src is None,
            "current_sets": sets["current"], "baseline_sets": sets["baseline"],
            "baseline_env": base_env,
            # libgomp's settings as this script was started (both sides, but --baseline-env)
            "openmp_env": {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")},
            "rounds": args.rounds,
            "torch_threads": args.threads,
            "seconds_per_update": {k: spread(v, 3, "rounds") for k, v in per.items()},
            "speedup_baseline_over_current": spread(ratios, 3, "rounds"),
            "loadavg_1min": loads,
            "timed": TIMED.format(f"{WARMUP + 2}-{WARMUP + 1 + args.updates} of each run"),
            "loaded": max(loads) > 1.5 * (os.cpu_count() or 1)}


def compute_bound(threads: int) -> dict:
    """The FLOPs of one update of the preset (runlib.update_flops) over this machine's fp32
    matmul peak on `threads` torch threads (throughput.matmul_peak; `peak_source` says which):
    the fewest seconds per update that any implementation of the same update could take
    here, with zero time for everything but its matmuls and convolutions."""
    from runlib import update_flops
    from throughput import matmul_peak

    flops = update_flops("atari100k", ["run.prefill=300", "run.steps=301",
                                       "run.eval_episodes=0", f"run.threads={threads}",
                                       "run.checkpoint_every=1000000000"])
    peak, source = matmul_peak(threads)
    return {"flops_per_update": flops, "matmul_peak_flops": peak, "peak_source": source,
            "min_seconds_per_update": round(flops / peak, 2)}


def breakdown(threads: int, updates: int) -> dict:
    """Where an update's time goes (throughput.reverie_breakdown, in this process): the
    preset as `command` runs it, timed from update WARMUP + 2 on, like the smoke run."""
    from throughput import reverie_breakdown

    return reverie_breakdown({}, threads, "mamba2", preset="atari100k", matched=False,
                             steps=1000 + WARMUP + updates, skip=WARMUP + 1,
                             overrides=("run.prefill=1000",))


def with_bound(path: Path, threads: int) -> dict:
    """Add the compute bound to the report at `path` (and its fraction of peak per side), at
    the thread count its runs recorded (`threads` for one that records none)."""
    report = json.loads(path.read_text())
    bound = compute_bound(int(report.get("torch_threads") or threads))
    spu = report.get("seconds_per_update")
    if isinstance(spu, dict):  # atari_ab: per side
        bound["fraction_of_peak"] = {k: round(bound["min_seconds_per_update"] / v["median"], 3)
                                     for k, v in spu.items()}
    elif spu:
        bound["fraction_of_peak"] = round(bound["min_seconds_per_update"] / spu, 3)
    report["compute_bound"] = bound
    path.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(SCRATCH),
                   help="the smoke run's folder (default runs/atari-smoke; a smoke run of "
                        "this script there is replaced, anything else is refused)")
    p.add_argument("--from-run", default=None, help="summarise this existing run instead")
    p.add_argument("--baseline-src", default=None, metavar="DIR",
                   help="alternate with the reverie package under DIR (an older tree's src/)")
    p.add_argument("--baseline-set", action="append", metavar="KEY=VALUE",
                   help="alternate with this tree run with this --set (repeatable), or add "
                        "it to the --baseline-src side")
    p.add_argument("--current-set", action="append", metavar="KEY=VALUE",
                   help="a --set of this tree's side of the alternation (repeatable)")
    p.add_argument("--baseline-env", action="append", metavar="NAME=VALUE",
                   help="an environment variable of the baseline side's runs (repeatable): "
                        "alternate with this tree run in that environment, or add it to the "
                        "--baseline-src side")
    p.add_argument("--name", default="atari_ab",
                   help="the alternation's JSON: bench/results/NAME.json (default atari_ab)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the alternation")
    p.add_argument("--breakdown", action="store_true",
                   help="only measure where an update's time goes (one in-process run) and "
                        "add it to atari_smoke.json")
    p.add_argument("--bound-only", action="store_true",
                   help="only add the compute bound (FLOPs per update over the matmul peak) "
                        "to the existing atari_*.json (smoke run, alternations)")
    args = p.parse_args()
    for kv in args.baseline_env or []:
        if "=" not in kv or not kv.split("=", 1)[0]:
            p.error(f"--baseline-env {kv!r}: give NAME=VALUE")
    alternation = args.baseline_src or args.baseline_set or args.baseline_env
    if (args.current_set or args.name != "atari_ab") and not alternation:
        p.error("--current-set and --name are for an alternation: add --baseline-src DIR, "
                "--baseline-set KEY=VALUE or --baseline-env NAME=VALUE")
    if args.breakdown:
        path = RESULTS / "atari_smoke.json"
        report = json.loads(path.read_text())
        report["breakdown"] = breakdown(args.threads, args.updates)
        path.write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report["breakdown"], indent=1))
        return
    if args.bound_only:  # each at its own runs' thread count
        for path in sorted(RESULTS.glob("atari_*.json")):  # the smoke run and alternations
            print(path.name, with_bound(path, args.threads)["compute_bound"])
        return
    if alternation:
        result = alternate(args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{args.name}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(with_bound(path, args.threads), indent=1))
        return
    if args.from_run:
        run, cmd, watch_s = Path(args.from_run), None, None
    else:
        run = Path(args.out)
        if (run / MARK).is_file():  # a smoke run this script made: measured anew
            import shutil

            shutil.rmtree(run)
        elif run.exists():
            p.error(f"{run} exists and is not a smoke run of this script; move it away or "
                    "give another --out")
        cmd = command(run, args.updates + WARMUP, args.threads)
        load0 = os.getloadavg()[0]
        subprocess.run(cmd, check=True)
        (run / MARK).write_text("a smoke run of bench/atari_smoke.py, replaced by its next\n")
        load1 = os.getloadavg()[0]
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "reverie", "watch", str(run), "--steps", "64"],
                       check=True)
        watch_s = time.time() - t0
    # after the first WARMUP updates: the first one compiles (run.compile=auto), which the
    # window of the 2026-12-02 measurement (9.7 s per update) included
    result = summarise(run, cmd, watch_s, 1000 + WARMUP)
    result["timed"] = TIMED.format(f"{WARMUP + 2} on")
    if cmd is not None:
        result["torch_threads"] = args.threads
        result["loadavg_1min"] = [round(load0, 2), round(load1, 2)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "atari_smoke.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(with_bound(RESULTS / "atari_smoke.json", args.threads), indent=1))


if __name__ == "__main__":
    main()
