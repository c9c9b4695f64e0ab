"""Adam as torch's per-parameter loop vs fused (one kernel over all parameters), measured:
seconds per update of the world-model agent at the bundled presets' sizes.

    python bench/optimizer.py                   # cartpole, minatar, dmc-proprio
    python bench/optimizer.py --presets cartpole --updates 30
    python bench/optimizer.py --quick           # smoke test: 2 updates each, no files

Every agent's Adam is `reverie.nets.optim.adam` (fused on CPU and CUDA). Per preset, one
process: the preset's agent (seed 0, `--threads` torch threads, the preset's own
run.compile) with a replay of random env steps (`runlib.prefilled_agent`), and two sets of
Adam optimisers over the same parameters (world model, actor, critic), the fused ones and
torch's per-parameter loop (`foreach=False`, what `torch.optim.Adam` does on the CPU by
default). Updates alternate between the two sets, loop, fused, loop, fused, ...
(`runlib.alternate`); each set keeps its own moments, so both do a real Adam step. Also the
optimiser steps alone: all three optimisers' `step()` on fixed gradients, alternating.
Reported: median and min-max of each and of the ratios of neighbouring pairs (> 1: fused
is faster), the 1-minute load before and after, and the fp32 matmul speed.

Writes bench/results/optimizer.json and optimizer.png.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import (  # noqa: E402
    alternate,
    prefilled_agent,
    preset_bench_main,
    spread,
)

RESULTS = Path(__file__).parent / "results"
PRESETS = {  # preset -> (extra overrides, prefill env steps); Adam presets only
    "cartpole": ([], 600),
    "minatar": (["env.id=minatar:breakout"], 1100),
    "dmc-proprio": (["env.id=dmc:walker-walk"], 1100),
}
ARMS = ("loop", "fused")


def optimisers(agent) -> dict[str, dict]:
    """arm -> {attribute path: optimiser} over the agent's world model, actor and critic."""
    import torch

    from reverie.nets.optim import adam

    b = agent.behavior
    owners = {"world_opt": (agent, agent.world_opt), "actor_opt": (b, b.actor_opt),
              "critic_opt": (b, b.critic_opt)}
    sets: dict[str, dict] = {arm: {} for arm in ARMS}
    for name, (owner, opt) in owners.items():
        if not isinstance(opt, torch.optim.Adam):
            raise SystemExit(f"{name} is {type(opt).__name__}: this bench compares Adams")
        group = opt.param_groups[0]
        params = [p for g in opt.param_groups for p in g["params"]]
        sets["loop"][name] = (owner, torch.optim.Adam(params, lr=group["lr"],
                                                      eps=group["eps"], foreach=False))
        sets["fused"][name] = (owner, adam(params, group["lr"], group["eps"]))
    return sets


def measure(preset: str, updates: int, warmup: int, threads: int) -> dict:
    """One process: the preset's agent, updates alternating loop and fused Adam (module doc)."""
    import torch

    extra, prefill = PRESETS[preset]
    load0 = os.getloadavg()[0]
    with prefilled_agent(preset, extra, prefill, threads) as (agent, replay):
        sets = optimisers(agent)

        def use(arm: str) -> None:
            for name, (owner, opt) in sets[arm].items():
                setattr(owner, name, opt)

        def update(arm: str):
            def call() -> None:
                use(arm)
                agent.update(replay)
            return call

        times = alternate({arm: update(arm) for arm in ARMS}, updates, warmup)
        # the optimiser steps alone, on the gradients the last update left (fixed)
        params = [p for _, opt in sets["loop"].values() for g in opt.param_groups
                  for p in g["params"]]
        for p in params:
            if p.grad is None:
                p.grad = torch.randn_like(p)

        def steps(arm: str):
            def call() -> None:
                for _, opt in sets[arm].values():
                    opt.step()
            return call

        step_times = alternate({arm: steps(arm) for arm in ARMS}, 5 * updates, warmup)
    n_params = sum(p.numel() for p in params)
    result = {"preset": preset, "threads": threads, "updates": updates, "warmup": warmup,
              "parameters": n_params, "tensors": len(params),
              "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    for label, t in (("update", times), ("step", step_times)):
        result[label] = {arm: spread(t[arm], 4) for arm in ARMS}
        result[label]["ratio_loop_over_fused"] = spread(
            [a / b for a, b in zip(t["loop"], t["fused"])], 3)
    return result


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(report["presets"])
    fig, axes = plt.subplots(1, 2, figsize=(3 + 2.4 * len(presets), 3.4))
    for ax, label, unit in zip(axes, ("update", "step"), ("update", "optimiser steps")):
        width = 0.38
        for i, arm in enumerate(ARMS):
            rows = [report["presets"][k][label][arm] for k in presets]
            med = [1e3 * r["median"] for r in rows]
            err = [[m - 1e3 * r["min"] for m, r in zip(med, rows)],
                   [1e3 * r["max"] - m for m, r in zip(med, rows)]]
            xs = [j + (i - 0.5) * width for j in range(len(presets))]
            ax.bar(xs, med, width, yerr=err, capsize=3, label=f"Adam {arm}")
        ax.set_xticks(range(len(presets)), presets)
        ax.set_ylabel(f"ms per {unit}")
        ax.set_title(f"{'whole update' if label == 'update' else 'world+actor+critic step()'}")
        ax.legend(fontsize=8)
    fig.suptitle(f"world-model agent, {report['threads']} thread(s): median, min-max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    return preset_bench_main(__file__, __doc__, "optimizer", measure, list(PRESETS),
                             list(PRESETS), ("preset", "update", "step"), updates=15,
                             threads=1, written=lambda r: plot(r, RESULTS / "optimizer.png"))


if __name__ == "__main__":
    sys.exit(main())
