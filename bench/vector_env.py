"""Should a run set `run.vector=async`? The collector's env steps per second, sync vs async.

    python bench/vector_env.py            # 4 envs x 2 vector sizes, 5 alternating rounds,
                                          # added to the earlier runs in the JSON
    python bench/vector_env.py --fresh    # the same, replacing the earlier runs
    python bench/vector_env.py --quick    # one env, 2 rounds, no files

The driver steps its `run.num_envs` envs through one Gymnasium vector env: `sync`
(SyncVectorEnv, every env in the training process) or `async` (AsyncVectorEnv, one worker
process per env). For each env and number of envs, both collectors are built once (the async
start-up, which forks a server and imports the env in every worker, is timed apart) and then
take turns stepping with uniform random actions (A B, then B A, ...), each turn a fixed number
of vector steps; env steps per second per turn, medians and min-max over the rounds, and the
async / sync ratio per round. Before timing, the two are checked to give the same transitions
(stepped until every env has ended an episode, so that the resets with each episode's seed
are compared too). Acting and learning are left out:
this is the env-stepping share of a run, which is what `run.vector` changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import alternate, spread  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# each a bundled preset's env, as make_env builds it (Pong at the presets' 64x64)
ENVS = ("CartPole-v1", "popgym-RepeatPreviousEasy-v0", "dmc:cartpole-swingup", "ALE/Pong-v5")
NUM_ENVS = (2, 8)
VECTOR_STEPS = 200  # per turn, at 2 envs (scaled down for more envs: equal env steps)


def collector(env_id: str, n: int, vector: str):
    from reverie.envs import make_env
    from reverie.run.collector import Collector

    return Collector(partial(make_env, env_id), n, 0, env_id, vector=vector)


def same_data(a, b, n: int, cap: int = 20_000) -> dict:
    """Both collectors, stepped with the same actions until every env has ended an episode
    (so resets with the episode seeds are compared too; at most `cap` vector steps), give the
    same transitions -> {'same', 'vector_steps', 'all_envs_ended'}."""
    import numpy as np

    from reverie.envs.actions import random_actions

    rng, ended, steps, same = np.random.default_rng(1), np.zeros(n, bool), 0, True
    while not ended.all() and steps < cap:
        action = random_actions(a.action_space, n, rng)
        (ta, fa), (tb, fb) = a.step(action), b.step(action)
        for x, y in zip(ta, tb):
            pairs = [(x[k], y[k]) for k in x] if isinstance(x, dict) else [(x, y)]
            same &= all(np.array_equal(u, v) and u.dtype == v.dtype for u, v in pairs)
        same &= fa == fb and all(np.array_equal(a.obs[k], b.obs[k]) for k in a.obs)
        ended |= a.first
        steps += 1
    return {"same": bool(same), "vector_steps": steps, "all_envs_ended": bool(ended.all())}


def measure(env_id: str, n: int, rounds: int, vector_steps: int) -> dict:
    import numpy as np

    from reverie.envs.actions import random_actions

    t0 = time.perf_counter()
    sync = collector(env_id, n, "sync")
    t1 = time.perf_counter()
    workers = collector(env_id, n, "async")
    t2 = time.perf_counter()
    for c in (sync, workers):
        c.start()
    same = same_data(sync, workers, n)
    rng = np.random.default_rng(0)
    actions = [random_actions(sync.action_space, n, rng) for _ in range(vector_steps)]

    def turn(c):
        for a in actions:
            c.step(a)

    load0 = os.getloadavg()[0]
    secs = alternate({"sync": partial(turn, sync), "async": partial(turn, workers)},
                     rounds, warmup=1, flip=True)
    load1 = os.getloadavg()[0]
    for c in (sync, workers):
        c.close()
    rate = {k: [n * vector_steps / s for s in v] for k, v in secs.items()}
    return {
        "env": env_id, "num_envs": n, "vector_steps_per_turn": vector_steps,
        "same_data": same["same"] and same["all_envs_ended"], "same_data_check": same,
        "start_s": {"sync": round(t1 - t0, 2), "async": round(t2 - t1, 2)},
        "env_steps_per_s": {k: spread(v, 0) for k, v in rate.items()},
        "async_over_sync": spread([a / s for a, s in zip(rate["async"], rate["sync"])], 2),
        "loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(load1, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--fresh", action="store_true", help="drop the earlier runs in the JSON")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    envs, sizes, rounds = ((["CartPole-v1"], (2,), 2) if args.quick
                           else (args.envs, NUM_ENVS, args.rounds))
    cases = []
    for env_id in envs:
        for n in sizes:
            case = measure(env_id, n, rounds, max(VECTOR_STEPS * 2 // n, 20))
            print(json.dumps({k: case[k] for k in ("env", "num_envs", "same_data")}
                             | {k: v["median"] for k, v in case["env_steps_per_s"].items()}
                             | {"ratio": case["async_over_sync"]["median"]}), flush=True)
            cases.append(case)
    loads = [c[k] for c in cases for k in ("loadavg_1min_before", "loadavg_1min_after")]
    run = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "rounds": rounds, "cases": cases,
        "cores": os.cpu_count(), "loaded": max(loads) > (os.cpu_count() or 1),
    }
    if args.quick:
        return
    path = RESULTS / "vector_env.json"
    earlier = [] if args.fresh or not path.exists() else json.loads(path.read_text())["runs"]
    result = {
        "benchmark": "vector_env", "runs": [*earlier, run],
        "note": "random actions; env stepping only (no acting, no learning); 1 torch thread "
                "in the training process; each run measures every case afresh",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")

if __name__ == "__main__":
    main()
