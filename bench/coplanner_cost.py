"""What COPlanner costs the imagination agent: seconds per `update` (and per `act`) at the
`cartpole` preset's sizes, coplanner off vs conservative vs coplanner.

    python bench/coplanner_cost.py               # 5 rounds x 3 updates per mode
    python bench/coplanner_cost.py --quick       # 2 rounds x 1 update, a smoke test
    python bench/coplanner_cost.py --set imagine.coplanner.head_layers=1 --tag small-heads

Modes are measured in one process in alternation (the order rotates every round), each on a
synthetic replay with CartPole's shapes (4-d observations, 2 actions): the cost does not
depend on the data. Per mode: median and min-max over rounds of the median seconds per
update; per-round ratios to `off`; the planner's extra model steps per update and per act;
seconds per act(explore=True) of one env (the optimistic planner runs there in mode
coplanner); the preset's env steps per update, which turn the per-update costs into costs per
env step.
Writes bench/results/coplanner_cost.json and .png; records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from gymnasium.spaces import Discrete

from reverie.agents.imagine import ImagineAgent
from reverie.config import build_config, to_object
from runlib import spread  # bench/ is the script's directory

RESULTS = Path(__file__).parent / "results"
MODES = ("off", "conservative", "coplanner")


class SyntheticReplay:
    def __init__(self, seed: int = 0) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int, seq_len: int, purpose: str = "train") -> dict:
        B, T, g = batch_size, seq_len, self.g
        return {
            "vector": torch.randn(B, T, 4, generator=g),
            "action": torch.randint(0, 2, (B, T), generator=g),
            "reward": torch.ones(B, T),
            "terminal": torch.rand(B, T, generator=g) < 0.02,
            "reset": torch.rand(B, T, generator=g) < 0.02,
        }


def build(mode: str, overrides: list[str]) -> ImagineAgent:
    cfg = build_config("cartpole", [*overrides, f"imagine.coplanner.mode={mode}"])
    cfg = to_object(cfg, "imagine")
    return ImagineAgent({"vector": ((4,), "float32")}, Discrete(2), cfg, torch.device("cpu"), 0)


def env_steps_per_update(overrides: list[str]) -> float:
    cfg = build_config("cartpole", overrides)
    return cfg.imagine.batch_size * cfg.imagine.seq_len / cfg.run.train_ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--updates", type=int, default=3, help="timed updates per mode and round")
    p.add_argument("--set", action="append", default=[], help="config override, all modes")
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared machine, 2 threads beside other work "
                        "measured 27 s per update where 1 thread took 1 s)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rounds, updates = (2, 1) if args.quick else (args.rounds, args.updates)
    torch.manual_seed(0)
    agents = {m: build(m, args.set) for m in MODES}
    replays = {m: SyntheticReplay() for m in MODES}
    steps = {}
    for m in MODES:  # warm-up (first-call allocations), and the planner's model steps
        steps[m] = agents[m].update(replays[m]).get("coplanner/model_steps", 0.0)
    load = [os.getloadavg()[0]]
    upd: dict[str, list[float]] = {m: [] for m in MODES}
    act: dict[str, list[float]] = {m: [] for m in MODES}
    act_steps: dict[str, float] = {}
    obs = {"vector": np.zeros((1, 4), np.float32)}
    for r in range(rounds):
        order = MODES[r % 3:] + MODES[: r % 3]
        for m in order:
            times = []
            for _ in range(updates):
                t0 = time.perf_counter()
                agents[m].update(replays[m])
                times.append(time.perf_counter() - t0)
            upd[m].append(statistics.median(times))
            state, first, times = agents[m].initial_state(1), np.ones(1, bool), []
            for _ in range(20):
                t0 = time.perf_counter()
                _, state = agents[m].act(obs, first, state, True)
                times.append(time.perf_counter() - t0)
                first = np.zeros(1, bool)
            act[m].append(statistics.median(times))
            cop = agents[m].coplanner  # its act counter restarts at every update
            act_steps[m] = cop.act_model_steps / 20 if cop is not None else 0.0
    load.append(os.getloadavg()[0])
    result = {
        "preset": "cartpole", "overrides": args.set, "rounds": rounds, "updates_per_round": updates,
        "threads": torch.get_num_threads(), "load_avg_1min_before_after": load,
        "cores": os.cpu_count(),
        "seconds_per_update": {m: spread(upd[m], 4) for m in MODES},
        "ratio_to_off": {m: spread([a / b for a, b in zip(upd[m], upd["off"])], 4)
                         for m in MODES[1:]},
        "planner_model_steps_per_update": steps,
        "seconds_per_act_explore": {m: spread(act[m], 4) for m in MODES},
        "planner_model_steps_per_act": act_steps,
        # the preset's cadence: env steps per update = batch x seq_len / run.train_ratio
        "env_steps_per_update": env_steps_per_update(args.set),
    }
    if max(load) > (os.cpu_count() or 1):
        result["note"] = "load average above the core count: numbers are noisy"
    print(json.dumps(result, indent=1))
    if args.quick:
        return
    RESULTS.mkdir(exist_ok=True)
    name = "coplanner_cost" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    med = [result["seconds_per_update"][m]["median"] for m in MODES]
    err = [[med[i] - result["seconds_per_update"][m]["min"] for i, m in enumerate(MODES)],
           [result["seconds_per_update"][m]["max"] - med[i] for i, m in enumerate(MODES)]]
    ax.bar(MODES, med, yerr=err, capsize=4)
    ax.set_ylabel("seconds per update")
    ax.set_title(f"COPlanner cost, cartpole {args.tag} (median, min-max)".replace("  ", " "))
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


if __name__ == "__main__":
    main()
