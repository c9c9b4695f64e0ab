"""Is Mamba-2's recurrent step memory-bound? `ssd_step` beside a copy of its state.

    python bench/ssd_step.py            # 9 rounds at the cartpole preset's imagination shape
    python bench/ssd_step.py --quick    # 2 rounds, no files

One imagined step of the world-model agent runs `reverie.sequence.ssd.ssd_step` once per
Mamba-2 block on a state [rows, heads, head_dim, d_state] (the `cartpole` preset: 256
imagined rows, 8 heads of 32, d_state 16: 4 MiB of fp32 per block). The step must read the
state and write the new one, so a copy of the state is the floor any implementation of it
can reach; the script times, in one process, alternating every round (A B C D, then
D C B A): the state copied (`h.clone()`), `ssd_step` eager, `ssd_step` compiled (inductor,
as run.compile=auto compiles the imagined step) and, compiled, the same recurrence written
so that y is reduced from the new state in the pass that writes it (one read and one write
of the state instead of two reads and one write). Medians and min-max over rounds of the
per-call time (median of `calls` calls per round), 1 torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import spread  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (256, 8, 32, 16)  # rows, heads, head_dim, d_state: the cartpole preset's imagination


def fused_step(x, dt, A, B, C, h):
    """ssd_step's recurrence with y reduced from the new state (for the compiled variant)."""
    import torch

    a = torch.exp(dt * A)
    xdt = x * dt.unsqueeze(-1)
    h = h * a[:, :, None, None] + xdt.unsqueeze(-1) * B[:, None, None, :]
    return (h * C[:, None, None, :]).sum(-1), h


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    import torch

    from reverie.allocator import keep_freed_memory
    from reverie.compiler import OPTIONS
    from reverie.sequence.ssd import ssd_step

    keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rounds, calls = (2, 10) if args.quick else (args.rounds, args.calls)
    Bt, H, P, N = SHAPE
    x, dt, A = torch.randn(Bt, H, P), torch.rand(Bt, H), -torch.rand(H)
    B, C, h = torch.randn(Bt, N), torch.randn(Bt, N), torch.randn(Bt, H, P, N)
    compiled = torch.compile(ssd_step, dynamic=False, options=OPTIONS)
    fused = torch.compile(fused_step, dynamic=False, options=OPTIONS)
    arms = {
        "copy of the state": lambda: h.clone(),
        "ssd_step, eager": lambda: ssd_step(x, dt, A, B, C, h),
        "ssd_step, compiled": lambda: compiled(x, dt, A, B, C, h),
        "y from the new state, compiled": lambda: fused(x, dt, A, B, C, h),
    }
    load0 = os.getloadavg()[0]
    with torch.no_grad():
        y0, h0 = ssd_step(x, dt, A, B, C, h)
        for name in ("ssd_step, compiled", "y from the new state, compiled"):
            y1, h1 = arms[name]()  # compiles; the variants compute the same step
            assert torch.allclose(y0, y1, atol=1e-4) and torch.allclose(h0, h1, atol=1e-5)
        times: dict[str, list[float]] = {n: [] for n in arms}
        for r in range(rounds + 1):  # round 0 warms up
            for name in (list(arms) if r % 2 else list(arms)[::-1]):
                per_call = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    arms[name]()
                    per_call.append(time.perf_counter() - t0)
                if r:
                    times[name].append(statistics.median(per_call))
    load1 = os.getloadavg()[0]
    copy = times["copy of the state"]
    result = {
        "benchmark": "ssd_step", "shape": list(SHAPE), "state_mib": Bt * H * P * N * 4 / 2**20,
        "rounds": rounds, "calls_per_round": calls, "torch_threads": 1,
        "torch": torch.__version__,
        "ms": {n: spread([1000 * t for t in ts], 4) for n, ts in times.items()},
        "x_copy": {n: spread([t / c for t, c in zip(ts, copy)], 3) for n, ts in times.items()},
        "loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(load1, 2),
        "cores": os.cpu_count(), "loaded": max(load0, load1) > (os.cpu_count() or 1),
    }
    print(json.dumps({n: v["median"] for n, v in result["ms"].items()}))
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "ssd_step.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
