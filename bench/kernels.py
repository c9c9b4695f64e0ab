"""reverie's kernels of run.compile=on against the torch ops they replace: imagination's
(reverie/nets/categorical_kernel.py: the latent's sample in one pass;
reverie/sequence/ssd_kernel.py: Mamba-2's step over its own state and its conv step over
its prefix) and, with image observations, the conv nets' (reverie/nets/image_kernel.py: the
encoder's pixel scaling, ImageNorm + SiLU forward and backward, the decoder's bias sums):
seconds per update of the world-model agent, fp32
(atari100k-bf16: mixed precision).

    python bench/kernels.py                     # matched, minatar, dmc-proprio
    python bench/kernels.py --presets matched --updates 10
    python bench/kernels.py --presets atari100k atari100k-bf16 --updates 6
        # ~4 s and ~2 s per update on a quiet machine
    python bench/kernels.py --quick             # smoke test: 2 updates each, no files

Per preset, one process: the preset's agent with run.compile=on (seed 0, `--threads` torch
threads) and a replay of random env steps (`runlib.bench_agent`); updates alternate
`torch` (the kernels off: `WorldModel.use_sample_kernel(False)`,
`Backbone.use_step_kernel(False)`, `WorldModel.use_image_kernels(False)`; the compiled
graphs then trace the torch ops, a second graph each, compiled in the warm-up) and `kernels`
(all on, as run.compile=on runs), the
order reversed every other round (`runlib.alternate`). Everything else is as
run.compile=on has it in both arms (the one-hot weight-gradient kernel included:
bench/onehot.py measures that one). `matched` is bench/throughput.py's matched sizes (CartPole,
32x32 latents, 1024 imagined rollouts of 15 steps), the comparison with sheeprl; the
presets are those that default to run.compile=on. Reported: median and min-max seconds per
update of each arm and of the per-round ratio torch / kernels (> 1: the kernels are faster),
the 1-minute load before and after, and the fp32 matmul speed, per preset (a run of some
presets keeps the others' results in the JSON).

Writes bench/results/kernels.json.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import (  # noqa: E402
    BENCH_PRESETS,
    alternate,
    bench_agent,
    matmul_gflops,
    preset_bench_main,
    spread,
)

PRESETS = [n for n in BENCH_PRESETS if n != "cartpole"]  # cartpole defaults to auto
DEFAULT_PRESETS = ["matched", "minatar", "dmc-proprio"]
ARMS = ("torch", "kernels")


def measure(name: str, updates: int, warmup: int, threads: int) -> dict:
    """One process: the preset's agent, updates alternating the arms (module doc)."""
    load0, gflops = os.getloadavg()[0], matmul_gflops(threads)
    with bench_agent(name, "on", threads) as (agent, replay):
        world = agent.world
        nets = world.image_nets()
        if not (world.sample_kernel and world.backbone.step_kernel_blocks()
                and all(b.step_kernel for b in world.backbone.step_kernel_blocks())
                and all(net.kernels for net in nets)):
            raise SystemExit(f"{name}: run.compile=on did not build its kernels "
                             "(a Mamba-2 world model and a C++ compiler are needed)")

        def update(arm: str):
            def call() -> None:
                world.use_sample_kernel(arm == "kernels")
                world.backbone.use_step_kernel(arm == "kernels")
                world.use_image_kernels(arm == "kernels")
                agent.update(replay)
            return call

        times = alternate({arm: update(arm) for arm in ARMS}, updates, warmup, flip=True)
        if agent.compiler is None or agent.compiler.eager:  # both arms ran eager code
            raise SystemExit(f"{name}: run.compile=on fell back to eager; nothing measured")
    b = agent.behavior
    return {"preset": name, "threads": threads, "updates": updates, "warmup": warmup,
            "date": time.strftime("%Y-%m-%d %H:%M"), "matmul_gflops_before": gflops,
            "latent": [world.stoch, world.classes], "deter": world.deter_dim,
            "layers": world.backbone.n_layers, "imag_batch": agent.cfg.imag_batch,
            "overrides": BENCH_PRESETS[name][1], "image_kernels": bool(nets),
            "horizon": agent.cfg.horizon, "actor_hidden": b.cfg.actor_hidden,
            "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "update": {arm: spread(times[arm], 4) for arm in ARMS},
            "ratio_torch_over_kernels": spread(
                [a / b for a, b in zip(times["torch"], times["kernels"])], 3)}


def main() -> int:
    return preset_bench_main(__file__, __doc__, "kernels", measure, PRESETS, DEFAULT_PRESETS,
                             ("preset", "update", "ratio_torch_over_kernels"))


if __name__ == "__main__":
    sys.exit(main())
