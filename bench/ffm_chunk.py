"""FFM's chunk length, measured: forward + backward of one FFM layer per chunk_size, at the
sizes where reverie uses FFM (PPO memory on POPGym, the cartpole world model, long sequences).

    python bench/ffm_chunk.py                     # chunk 64 32 16 8, 5 rounds
    python bench/ffm_chunk.py --rounds 3 --chunks 64 16

`aggregate` (reverie/sequence/ffm.py) multiplies each chunk of L steps by an [2cL, L + 2c]
operator, so its work per step grows with L, while the carry between chunks is a Python loop
over T/L chunks. Per size, the chunk lengths are measured in alternation (64, 32, 16, 8, 64,
...), `--rounds` rounds, each the median of several calls after a warm-up, one torch thread,
with an episode reset inside the batch (the segment path PPO takes). Reported: the median and
min-max over rounds, per chunk length, and the 1-minute load average before and after.
Writes bench/results/ffm_chunk.json.
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
from runlib import matmul_gflops, spread  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# (name, batch, T, d_model): popgym-ppo's minibatch of 64-step sequences, the cartpole preset's
# world-model batch, and two long-sequence sizes of bench/backbones.py
SIZES = [("popgym-ppo", 8, 64, 64), ("cartpole world model", 16, 32, 128),
         ("T=256", 16, 256, 256), ("T=1024", 16, 1024, 512)]


def time_once(chunk: int, B: int, T: int, D: int, calls: int) -> float:
    """Median milliseconds of forward + backward of a 1-layer FFM with this chunk length."""
    import torch

    from reverie.sequence import make_backbone

    torch.manual_seed(0)
    m = make_backbone("ffm", d_model=D, n_layers=1, chunk_size=chunk)
    x = torch.randn(B, T, D, requires_grad=True)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[:, 0] = True
    reset[B // 2, T // 2] = True  # one row with an episode boundary inside
    state = m.initial_state(B)

    def call() -> None:
        y, _ = m(x, state, reset)
        y.sum().backward()

    call()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--chunks", nargs="+", type=int, default=[64, 32, 16, 8])
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    load0, gflops = os.getloadavg()[0], matmul_gflops(1)
    sizes = []
    for name, B, T, D in SIZES:
        calls = 3 if T > 256 else 10
        ms: dict[int, list[float]] = {c: [] for c in args.chunks}
        for _ in range(args.rounds):
            for c in args.chunks:
                ms[c].append(round(time_once(c, B, T, D, calls), 2))
        summary = {str(c): spread(v) for c, v in ms.items()}
        best = min(args.chunks, key=lambda c: statistics.median(ms[c]))
        sizes.append({"name": name, "B": B, "T": T, "d_model": D, "ms_fwd_bwd": summary,
                      "fastest_chunk": best})
        print(json.dumps({"name": name, **{c: s["median"] for c, s in summary.items()}}),
              flush=True)
    result = {"benchmark": "ffm_chunk", "torch_threads": 1, "rounds": args.rounds,
              "chunks": args.chunks, "cores": os.cpu_count(), "matmul_gflops_1_thread": gflops,
              "loadavg_1min_before": round(load0, 2),
              "loadavg_1min_after": round(os.getloadavg()[0], 2), "sizes": sizes}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ffm_chunk.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
