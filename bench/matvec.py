"""Batched matrix-vector products: torch's one-column matmul vs `reverie.sequence.base.matvec`.

    python bench/matvec.py              # kernels and whole updates, 7 rounds, 1 thread
    python bench/matvec.py --quick      # 2 rounds, no update part, no files

The Mamba steps read their state out with a batched [R, N] x [N] product (Mamba-2's
`ssd_step`: [H·P, 16] per row of the batch; Mamba-1's step: [d_inner, 16]) and the
selective scan's backward takes two per step ([N, C] x [C]). Written as `m @ v[..., None]`,
torch's CPU matmul takes a slow path for the one-column result; `matvec` computes the same
as the row vector vᵀ times the transposed m. Part 1 times both forms on those shapes; part 2
times whole agent updates of the `cartpole` preset (Mamba-2 and Mamba-1 world models,
`run.compile=off`, so the eager kernels are what runs) with the column form patched back in
against `matvec`. Both parts alternate the arms in one process (A B A B ..., the order
flipped every round) and report the median and min-max of each arm and of the per-round
ratio column / matvec, with the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reverie.sequence import base, mamba1, selective_scan, ssd  # noqa: E402
from runlib import alternate, prefilled_agent, spread  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# name -> (m shape, v shape): the cartpole preset (d_model 128, head_dim 32, d_state 16,
# 256 imagined starts), the throughput benchmark's matched size (d_model 512, 1024 starts)
# and the world-model training batch (16 x 64, chunks of 16)
SHAPES = {
    "mamba2 step, cartpole preset": ((256, 256, 16), (256, 16)),
    "mamba2 step, matched size": ((1024, 1024, 16), (1024, 16)),
    "mamba1 step, cartpole preset": ((256, 256, 16), (256, 16)),
    "scan backward dC, d_inner 256": ((16, 4, 16, 256), (16, 4, 256)),
    "scan backward dC, d_inner 1024": ((16, 4, 16, 1024), (16, 4, 1024)),
}
MODULES = (ssd, mamba1, selective_scan)  # the modules that call matvec


def column(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The form `matvec` replaced."""
    return (m @ v.unsqueeze(-1)).squeeze(-1)


def compare(times: dict[str, list[float]], scale: float, digits: int) -> dict:
    out = {name: spread([t * scale for t in ts], digits) for name, ts in times.items()}
    out["ratio_column_over_matvec"] = spread(
        [c / m for c, m in zip(times["column"], times["matvec"])], 2)
    return out


def kernels(rounds: int) -> dict:
    result = {}
    for name, (m_shape, v_shape) in SHAPES.items():
        m, v = torch.randn(m_shape), torch.randn(v_shape)
        torch.testing.assert_close(base.matvec(m, v), column(m, v), rtol=1e-4, atol=1e-4)
        arms = {"column": lambda m=m, v=v: column(m, v),
                "matvec": lambda m=m, v=v: base.matvec(m, v)}
        times = alternate(arms, rounds, warmup=1, calls=20, flip=True)
        result[name] = {"m": list(m_shape), "v": list(v_shape), "unit": "microseconds",
                        **compare(times, 1e6, 1)}
        print(name, json.dumps(result[name]["ratio_column_over_matvec"]), flush=True)
    return result


def use(fn) -> None:
    for module in MODULES:
        module.matvec = fn


def updates(rounds: int) -> dict:
    result = {}
    for backbone in ("mamba2", "mamba1"):
        overrides = ["run.compile=off", f"imagine.world.backbone={backbone}"]
        if backbone == "mamba1":
            overrides.append("imagine.world.backbone_kwargs={}")
        with prefilled_agent("cartpole", overrides, 600, threads=1) as (agent, replay):
            def arm(fn, agent=agent, replay=replay):
                return lambda: (use(fn), agent.update(replay))
            try:
                times = alternate({"column": arm(column), "matvec": arm(base.matvec)},
                                  rounds, warmup=1, calls=2, flip=True)
            finally:
                use(base.matvec)
        result[f"cartpole preset, {backbone}"] = {"unit": "seconds per update",
                                                   **compare(times, 1.0, 4)}
        print(backbone, json.dumps(result[f"cartpole preset, {backbone}"]), flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rounds = 2 if args.quick else args.rounds
    load0 = os.getloadavg()[0]
    result = {"benchmark": "matvec", "threads": 1, "rounds": rounds, "cores": os.cpu_count(),
              "kernels": kernels(rounds)}
    if not args.quick:
        result["updates"] = updates(rounds)
    load1 = os.getloadavg()[0]
    result["loadavg_1min_before_after"] = [round(load0, 2), round(load1, 2)]
    if max(load0, load1) > (os.cpu_count() or 1):
        result["note"] = "load average above the core count: absolute times are noisy"
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "matvec.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
