"""The depthwise conv weight's memory layout in the Mamba blocks' recurrent `step` (the
imagination path): row-major [C, K] (each tap's weights 4 floats apart) against column-major
(each tap's C weights contiguous, the layout the blocks now use), with the step compiled as
`run.compile=auto` compiles it and eager.

    python bench/conv_layout.py            # writes bench/results/conv_layout.json
    python bench/conv_layout.py --rounds 2 --out /tmp/conv_layout.json   # a quick look

Row-major, inductor reads each tap's weight element by element, so the conv + SiLU of the
fused step kernel runs as a scalar loop; column-major it vectorises. The same values in both
layouts: eager results are identical, compiled ones differ by float rounding. The two
layouts are measured in alternation (A B A B ...), `ROUNDS` rounds, 16 steps each, 1 thread,
at the `cartpole` preset's sizes and its imagination batch.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import matmul_gflops, spread  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROUNDS = 15
BATCH = 256  # the cartpole preset's imag_batch
STEPS = 16  # its imagination horizon


def row_major(model):
    """A copy of `model` whose conv weights are stored row-major, as before."""
    other = copy.deepcopy(model)
    for module in other.modules():
        if hasattr(module, "conv_weight"):
            module.conv_weight = type(module.conv_weight)(module.conv_weight.detach().contiguous())
    return other


def main() -> None:
    global ROUNDS
    p = argparse.ArgumentParser(description="The Mamba blocks' depthwise conv weight layout in "
                                "their recurrent step: row- vs column-major, timed.")
    p.add_argument("--rounds", type=int, default=ROUNDS,
                   help=f"alternating rounds per layout and mode (default {ROUNDS})")
    p.add_argument("--out", type=Path, default=RESULTS / "conv_layout.json",
                   help="the JSON written (default bench/results/conv_layout.json)")
    args = p.parse_args()
    ROUNDS = args.rounds
    import torch

    import reverie
    from reverie.sequence import make_backbone

    reverie.keep_freed_memory()
    torch.set_num_threads(1)
    load = [round(os.getloadavg()[0], 2)]
    gflops = matmul_gflops(threads=1)
    x = torch.randn(BATCH, 128)
    out: dict = {}
    for name, kwargs in (("mamba2", {"head_dim": 32}), ("mamba1", {})):
        torch.manual_seed(0)
        col = make_backbone(name, d_model=128, n_layers=2, **kwargs)
        row = row_major(col)
        layouts = {"row-major": row, "column-major": col}

        def run(model, step):
            state = model.initial_state(BATCH)
            with torch.no_grad():
                for _ in range(STEPS):
                    y, state = step(x, state)
            return y

        for mode in ("compiled", "eager"):
            steps = {k: (torch.compile(m.step) if mode == "compiled" else m.step)
                     for k, m in layouts.items()}
            outs = {k: run(layouts[k], s) for k, s in steps.items()}  # compiles here
            diff = float((outs["row-major"] - outs["column-major"]).abs().max())
            ms: dict[str, list[float]] = {k: [] for k in layouts}
            for _ in range(ROUNDS):
                for k, s in steps.items():
                    t0 = time.perf_counter()
                    run(layouts[k], s)
                    ms[k].append((time.perf_counter() - t0) / STEPS * 1e3)
            ratios = [r / c for r, c in zip(ms["row-major"], ms["column-major"])]
            out[f"{name}/{mode}"] = {
                **{f"{k}_ms_per_step": spread(v, 3, keep=None) for k, v in ms.items()},
                "speedup_median": round(statistics.median(ratios), 3),
                "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)],
                "max_abs_output_difference": diff,
            }
            print(name, mode, json.dumps(out[f"{name}/{mode}"]), flush=True)
    load.append(round(os.getloadavg()[0], 2))
    result = {"benchmark": "conv_layout", "batch": BATCH, "steps": STEPS, "rounds": ROUNDS,
              "threads": 1, "d_model": 128, "n_layers": 2, "loadavg_1min": load,
              "loaded": max(load) > (os.cpu_count() or 1), "matmul_gflops_1_thread": gflops,
              "results": out}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
