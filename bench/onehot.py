"""The one-hot first layers (reverie/nets/onehot.py) against the dense products they
replace, and their weight gradients as row scatters (reverie/nets/onehot_kernel.py, what
run.compile=on adds): seconds per update of the world-model agent, fp32.

    python bench/onehot.py                      # matched, cartpole, minatar, dmc-proprio
    python bench/onehot.py --presets matched --updates 10
    python bench/onehot.py --presets atari100k --updates 6   # ~5 s per update (fp32)
    python bench/onehot.py --quick              # smoke test: 2 updates each, no files

The actor's and critic's first layers and the backbone's input projection read the latent z,
an exact one-hot of S ones in S·K values; given where the ones are they sum S weight columns
instead of a dense product (today's code). `dense` is the code before 2026-12-07: the same
agent inside `runlib.dense_latent_layers`, so every layer takes the dense product (the agent's
numbers differ only by float rounding, the random draws are the same). `scatter` is today's
one-hot layers with the actor's and critic's weight gradients from the row-scatter kernel
(their `onehot_kernel` flag, which run.compile=on sets; here it is set alone, and the rest of
the update runs as run.compile=auto has it, the imagined step compiled: with compiled losses
the dense arm's switch would be traced into their graphs).

Per preset, one process: the preset's agent (seed 0, `--threads` torch threads,
run.compile=auto at every preset) with a replay of random env steps (`runlib.bench_agent`),
updates alternating dense, onehot, scatter, scatter, onehot, dense, ... (`runlib.alternate`,
the order reversed every other round). `matched` is bench/throughput.py's matched sizes (CartPole,
32x32 latents, 1024 imagined rollouts of 15 steps, 256-wide networks), the comparison with
sheeprl. Reported: median and min-max seconds per update of each arm and of the per-round
ratios dense / onehot and onehot / scatter (> 1: the second is faster), the 1-minute load
before and after, and the
fp32 matmul speed, per preset (a run of some presets keeps the others' results in the JSON).

Writes bench/results/onehot.json.
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
    dense_latent_layers,
    matmul_gflops,
    preset_bench_main,
    spread,
)

# at atari100k Drama's actor reads a normalised feat (actor_input_norm): only the critics and
# the backbone input read the one-hot latent there
PRESETS = list(BENCH_PRESETS)
DEFAULT_PRESETS = ["matched", "cartpole", "minatar", "dmc-proprio"]
ARMS = ("dense", "onehot", "scatter")


def measure(name: str, updates: int, warmup: int, threads: int) -> dict:
    """One process: the preset's agent, updates alternating the arms (module doc)."""
    import contextlib

    import torch

    from reverie.nets import onehot_kernel

    load0, gflops = os.getloadavg()[0], matmul_gflops(threads)
    # run.compile=auto at every preset (minatar, dmc-proprio: the preset says on)
    with bench_agent(name, "auto", threads) as (agent, replay):
        if agent.world.stoch_dim <= 0 or torch.is_autocast_enabled("cpu"):
            raise SystemExit(f"{name}: no one-hot layers to compare")
        onehot_kernel.load()

        def update(arm: str):
            def call() -> None:
                agent.behavior.use_onehot_kernel(arm == "scatter")
                with dense_latent_layers() if arm == "dense" else contextlib.nullcontext():
                    agent.update(replay)
            return call

        times = alternate({arm: update(arm) for arm in ARMS}, updates, warmup, flip=True)
    world, b = agent.world, agent.behavior
    return {"preset": name, "threads": threads, "updates": updates, "warmup": warmup,
            "date": time.strftime("%Y-%m-%d %H:%M"), "matmul_gflops_before": gflops,
            "actor_input_norm": bool(b.cfg.actor_input_norm),
            "latent": [world.stoch, world.classes], "deter": world.deter_dim,
            "imag_batch": agent.cfg.imag_batch, "horizon": agent.cfg.horizon,
            "actor_hidden": b.cfg.actor_hidden, "critic_hidden": b.cfg.critic_hidden,
            "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "update": {arm: spread(times[arm], 4) for arm in ARMS},
            "ratio_dense_over_onehot": spread(
                [a / b for a, b in zip(times["dense"], times["onehot"])], 3),
            "ratio_onehot_over_scatter": spread(
                [a / b for a, b in zip(times["onehot"], times["scatter"])], 3)}


def main() -> int:
    return preset_bench_main(__file__, __doc__, "onehot", measure, PRESETS, DEFAULT_PRESETS,
                             ("preset", "update", "ratio_dense_over_onehot",
                              "ratio_onehot_over_scatter"))


if __name__ == "__main__":
    sys.exit(main())
