"""OpenMP's waits on a shared CPU: seconds per world-model-agent update at the `cartpole`
preset with 2 torch threads under OpenMP's default (spinning) waits, shorter spins
(`GOMP_SPINCOUNT`), `OMP_WAIT_POLICY=PASSIVE` and run.share_cores (libgomp's own spin with
threads that follow the free cores), and with 1 thread, on a quiet machine
and beside a second training process (one thread, the same agent's updates).

    python bench/omp_wait.py                    # 3 rounds x both conditions
    python bench/omp_wait.py --rounds 5 --conditions beside

Each setting is a fresh process (the wait policy is read when OpenMP starts), the settings in
alternation within a round (order rotated every round); a process builds the agent (run.compile
off, coplanner off), does one warm-up update on a synthetic replay with CartPole's shapes
(bench/coplanner_cost.py's) and reports the median of `--updates` more. "beside" starts a
process that runs this agent's updates on one thread for the whole condition. Records the
1-min load average around every measurement. Writes bench/results/omp_wait.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from runlib import spread  # bench/ is the script's directory

RESULTS = Path(__file__).resolve().parent / "results"
# name -> (torch threads, extra environment, run.share_cores); "default" leaves
# OMP_WAIT_POLICY unset; share_cores: libgomp's own spin, and reverie's ThreadGovernor
# lowering torch's threads while another process runs (applied before every update, as the
# training loop does before every env step)
SETTINGS = {
    "2 threads, OpenMP default": (2, {}, False),
    "2 threads, GOMP_SPINCOUNT=10000": (2, {"GOMP_SPINCOUNT": "10000"}, False),
    "2 threads, GOMP_SPINCOUNT=3000": (2, {"GOMP_SPINCOUNT": "3000"}, False),
    "2 threads, GOMP_SPINCOUNT=1000": (2, {"GOMP_SPINCOUNT": "1000"}, False),
    "2 threads, OMP_WAIT_POLICY=PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}, False),
    "2 threads, run.share_cores (OpenMP default spin)": (2, {}, True),
    "1 thread": (1, {}, False),
}
OMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# the busy neighbour: another training process (this agent's updates, 1 thread, forever)
BUSY = [sys.executable, __file__, "--worker", "1", "--forever"]


def worker(threads: int, updates: int, forever: bool = False, share: bool = False) -> None:
    import torch

    from coplanner_cost import SyntheticReplay, build
    from reverie.openmp import ThreadGovernor

    torch.set_num_threads(threads)
    governor = ThreadGovernor(threads) if share else None
    if governor is not None and not governor.start():
        raise RuntimeError("run.share_cores cannot see this machine's load (/proc)")
    agent, replay = build("off", ["run.compile=off"]), SyntheticReplay()
    agent.update(replay)
    while forever:  # the neighbour: killed when its condition ends
        agent.update(replay)
    times, used = [], []
    for _ in range(updates):
        if governor is not None:
            governor.apply()
        used.append(torch.get_num_threads())
        t = time.perf_counter()
        agent.update(replay)
        times.append(time.perf_counter() - t)
    if governor is not None:
        governor.stop()
    print(json.dumps({"seconds_per_update": statistics.median(times), "threads_used": used}))


def measure(name: str, updates: int) -> dict:
    threads, extra, share = SETTINGS[name]
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARIABLES}
    env.update(extra)
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, __file__, "--worker", str(threads),
                           "--updates", str(updates), *(["--share"] if share else [])],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "load_avg": [round(load, 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--updates", type=int, default=3)
    p.add_argument("--conditions", nargs="+", default=["quiet", "beside"],
                   choices=["quiet", "beside"])
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--forever", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--share", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        worker(args.worker, args.updates, args.forever, args.share)
        return
    names = list(SETTINGS)
    result = {"preset": "cartpole", "rounds": args.rounds, "updates": args.updates,
              "cores": os.cpu_count(), "conditions": {}}
    for condition in args.conditions:
        busy = subprocess.Popen(BUSY) if condition == "beside" else None
        try:
            runs: dict[str, list[dict]] = {n: [] for n in names}
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    runs[name].append(measure(name, args.updates))
                    print(json.dumps({"condition": condition, "round": r, "setting": name,
                                      **runs[name][-1]}), flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        base = names[0]
        result["conditions"][condition] = {
            name: {"seconds_per_update": spread([x["seconds_per_update"] for x in rs], 3),
                   "ratio_to_default": spread([b["seconds_per_update"] / x["seconds_per_update"]
                                               for x, b in zip(rs, runs[base])], 2, keep=None),
                   "load_avg": [x["load_avg"] for x in rs],
                   "threads_used": [x["threads_used"] for x in rs]}
            for name, rs in runs.items()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "omp_wait.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
