"""reverie's probabilistic ensemble next to mbrl-lib's `GaussianMLP`: speed of one training
step and of one rollout step, measured side by side in alternating rounds.

    python bench/ensemble_speed.py               # 5 rounds, HalfCheetah- and Pendulum-sized
    python bench/ensemble_speed.py --quick       # 2 rounds, few iterations: a smoke test

Both ensembles have the same size: E=7 members (5 elites), 4 hidden layers of 200 SiLU
units, a Gaussian head over [Δobs, reward], all members in one batched matmul per layer.
Two problem sizes: HalfCheetah-like (obs 17, action 6) and Pendulum-like (obs 3, action 1).

* training step: forward + Gaussian NLL + backward + Adam step on one batch of 256 rows per
  member (MBPO's model batch), inputs already normalised: reverie `EnsembleDynamics.loss`
  (which also trains its termination head and applies MBPO's per-layer L2 in the loss) +
  `optimizer.step()`, exactly the body of `EnsembleDynamics.fit`'s loop; mbrl-lib
  `GaussianMLP.update(x, optimizer, target)` with mbrl-lib's MBPO settings
  (`learn_logvar_bounds=False`, Adam lr 1e-3, weight_decay 1e-5, as `ModelTrainer`).
  Four pre-drawn batches are cycled. Speed = steps/s = 1 / median step time.
* rollout step: next observation + reward for N = 100,000 states (MBPO's rollout batch:
  400 rollouts per env step x 250 env steps between model fits), each row from one
  random elite (TS1), sampled from its Gaussian: reverie `sample_next(mode="ts1")`; mbrl-lib
  `OneDTransitionRewardModel.sample` (its `ModelEnv.step`'s model call; input normaliser in
  double precision as in its MBPO config) with `propagation_method="random_model"` and 5
  elites set. Speed = samples/s = N / median step time. reverie's `rollout_step` (what its
  MBPO agent calls: every elite on every row, for COPlanner's disagreement u) is timed too,
  as information, not against the target.

Each round starts one fresh worker process per system (reverie with this Python, mbrl-lib
with `.venv-mbrl/bin/python`, importing nothing of reverie), in the order A B, then B A on
the next round, and so on. A worker sets `torch.set_num_threads(--threads)` (and the OMP/MKL
variables) and glibc's mmap and trim thresholds to 2**31-1 by `mallopt` (reverie:
`reverie.keep_freed_memory()`; mbrl-lib: the same two `mallopt` calls, values checked to be
reverie's), then warms up and times many iterations of each measurement. Per system: median,
min and max over rounds of the per-round median; ratio = reverie speed / mbrl-lib speed of
the same round. Target: median ratio >= 2 for the training step and the rollout step (each
size). Writes bench/results/ensemble_speed.json and .png; records the 1-minute load average
before and after.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("reverie", "mbrl")
SIZES = {"halfcheetah": (17, 6), "pendulum": (3, 1)}  # (obs dim, action dim)
MEMBERS, ELITES, HIDDEN, LAYERS = 7, 5, 200, 4
TRAIN_BATCH = 256  # rows per member
FULL = {"rounds": 5, "rollout_n": 100_000, "train_warmup": 5, "train_iters": 60,
        "rollout_warmup": 1, "rollout_iters": 5}
QUICK = {"rounds": 2, "rollout_n": 2_000, "train_warmup": 1, "train_iters": 3,
         "rollout_warmup": 1, "rollout_iters": 2}
TARGET = 2.0
# glibc mallopt parameters and the value reverie.allocator.keep_freed_memory() sets; the
# mbrl-lib worker cannot import reverie, so main() checks these against reverie.allocator.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, KEEP = -1, -3, 2**31 - 1


# -- the two systems (each worker imports only its own) ---------------------------------
def reverie_steps(obs_dim: int, act_dim: int, seed: int):
    from reverie.world.ensemble import EnsembleDynamics

    torch.manual_seed(seed)
    model = EnsembleDynamics(obs_dim, act_dim, members=MEMBERS, elites=ELITES,
                             hidden=HIDDEN, layers=LAYERS)
    gen = torch.Generator().manual_seed(seed)

    def train(x, y, term) -> None:  # the body of EnsembleDynamics.fit's batch loop
        total, nll = model.loss(x, y, term)
        model.optimizer.zero_grad(set_to_none=True)
        total.backward()
        model.optimizer.step()
        nll.mean().item()

    def rollout(obs, act) -> None:
        model.sample_next(obs, act, gen, mode="ts1")

    def agent_rollout(obs, act) -> None:
        model.rollout_step(obs, act, gen)

    return train, rollout, agent_rollout


def mbrl_steps(obs_dim: int, act_dim: int, seed: int):
    from mbrl.models import GaussianMLP, OneDTransitionRewardModel

    torch.manual_seed(seed)
    net = GaussianMLP(obs_dim + act_dim, obs_dim + 1, "cpu", num_layers=LAYERS,
                      ensemble_size=MEMBERS, hid_size=HIDDEN, deterministic=False,
                      propagation_method="random_model", learn_logvar_bounds=False,
                      activation_fn_cfg={"_target_": "torch.nn.SiLU"})
    model = OneDTransitionRewardModel(net, target_is_delta=True, normalize=True,
                                      normalize_double_precision=True, learned_rewards=True,
                                      num_elites=ELITES)
    model.set_elite(list(range(ELITES)))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5, eps=1e-8)
    gen = torch.Generator().manual_seed(seed)

    def train(x, y, term) -> None:
        net.update(x, opt, y)  # zero_grad, loss, backward, step; returns loss.item()

    def rollout(obs, act) -> None:
        model.sample(act, {"obs": obs, "propagation_indices": None}, deterministic=False,
                     rng=gen)

    return train, rollout, None


# -- the worker ---------------------------------------------------------------------------
def keep_memory(system: str) -> bool:
    if system == "reverie":
        import reverie

        return reverie.keep_freed_memory()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return bool(libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(KEEP))) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(KEEP)))


def median_seconds(fn, args_list: list[tuple], warmup: int, iters: int) -> float:
    for i in range(warmup):
        fn(*args_list[i % len(args_list)])
    times = []
    for i in range(iters):
        a = args_list[i % len(args_list)]
        t0 = time.perf_counter()
        fn(*a)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker(args: argparse.Namespace) -> None:
    cfg = QUICK if args.quick else FULL
    kept = keep_memory(args.worker)
    torch.set_num_threads(args.threads)
    build = reverie_steps if args.worker == "reverie" else mbrl_steps
    out: dict = {"allocator_set": kept, "torch": torch.__version__,
                 "threads": torch.get_num_threads()}
    if args.worker == "mbrl":
        import hydra
        import mbrl
        import omegaconf

        out["versions"] = {"mbrl": mbrl.__version__, "hydra-core": hydra.__version__,
                           "omegaconf": omegaconf.__version__}
    else:
        import reverie

        out["versions"] = {"reverie": reverie.__version__}
    g = torch.Generator().manual_seed(args.seed)
    n = cfg["rollout_n"]
    for size, (o, a) in SIZES.items():
        train, rollout, agent_rollout = build(o, a, args.seed)
        batches = [(torch.randn(MEMBERS, TRAIN_BATCH, o + a, generator=g),
                    0.1 * torch.randn(MEMBERS, TRAIN_BATCH, o + 1, generator=g),
                    torch.zeros(MEMBERS, TRAIN_BATCH)) for _ in range(4)]
        states = [(torch.randn(n, o, generator=g), torch.rand(n, a, generator=g) * 2 - 1)]
        res = {"train_s": median_seconds(train, batches, cfg["train_warmup"], cfg["train_iters"])}
        with torch.no_grad():
            res["rollout_s"] = median_seconds(rollout, states, cfg["rollout_warmup"],
                                              cfg["rollout_iters"])
            if agent_rollout is not None:
                res["agent_rollout_s"] = median_seconds(agent_rollout, states,
                                                        cfg["rollout_warmup"],
                                                        cfg["rollout_iters"])
        out[size] = res
    print(json.dumps(out))


# -- the driver ---------------------------------------------------------------------------
def worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(ROOT / "src")] + env.get("PYTHONPATH", "").split(os.pathsep) if p)
    return env


def run_worker(system: str, python: str, args: argparse.Namespace) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", system, "--threads",
           str(args.threads), "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
    env = worker_env(args.threads)
    if system == "mbrl":  # nothing of reverie on its path
        env.pop("PYTHONPATH")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT),
                          timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{system} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per worker call")
    p.add_argument("--mbrl-venv", default=str(ROOT / ".venv-mbrl"))
    p.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    from backbones import machine_info
    from reverie import allocator
    from runlib import spread  # bench/ is the script's directory

    assert (M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, KEEP) == (
        allocator.M_TRIM_THRESHOLD, allocator.M_MMAP_THRESHOLD, allocator.KEEP)
    cfg = QUICK if args.quick else FULL
    rounds = args.rounds or cfg["rounds"]
    mbrl_python = str(Path(args.mbrl_venv) / "bin" / "python")
    if not Path(mbrl_python).exists():
        raise SystemExit(f"no mbrl-lib venv at {args.mbrl_venv}: run `make bench` (it builds "
                         ".venv-mbrl, see bench/peers/README.md) or pass --mbrl-venv")
    pythons = {"reverie": sys.executable, "mbrl": mbrl_python}
    load0 = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {s: [] for s in SYSTEMS}
    for r in range(rounds):
        for system in (SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]):
            runs[system].append(run_worker(system, pythons[system], args))
            m = runs[system][-1]
            print(f"round {r} {system:8s} " + "  ".join(
                f"{s}: train {m[s]['train_s'] * 1e3:.2f} ms, rollout {m[s]['rollout_s']:.3f} s"
                for s in SIZES), file=sys.stderr, flush=True)
    load1 = os.getloadavg()[0]

    n = cfg["rollout_n"]
    results: dict = {}
    for size in SIZES:
        train = {s: [1.0 / m[size]["train_s"] for m in runs[s]] for s in SYSTEMS}
        roll = {s: [n / m[size]["rollout_s"] for m in runs[s]] for s in SYSTEMS}
        agent = [n / m[size]["agent_rollout_s"] for m in runs["reverie"]]
        entry = {}
        for name, speeds, unit in (("train_step", train, "steps_per_s"),
                                   ("rollout_step", roll, "samples_per_s")):
            ratio = spread([a / b for a, b in zip(speeds["reverie"], speeds["mbrl"])], 3)
            entry[name] = {
                **{s: {unit: spread(v, 3)} for s, v in speeds.items()},
                "ratio_reverie_over_mbrl": ratio, "target": TARGET,
                "pass": ratio["median"] >= TARGET}
        entry["reverie_agent_rollout_step"] = {
            "samples_per_s": spread(agent, 3),
            "ratio_over_mbrl_ts1": spread([a / b for a, b in zip(agent, roll["mbrl"])], 3)}
        results[size] = {"obs_dim": SIZES[size][0], "action_dim": SIZES[size][1], **entry}
    result = {
        "benchmark": "ensemble_speed", "quick": args.quick,
        "settings": {"members": MEMBERS, "elites": ELITES, "hidden": HIDDEN, "layers": LAYERS,
                     "activation": "SiLU", "train_batch_per_member": TRAIN_BATCH,
                     "rollout_batch": n, "rounds": rounds, "threads": args.threads,
                     **{k: v for k, v in cfg.items() if k not in ("rounds", "rollout_n")}},
        "what": {
            "train_step": "reverie EnsembleDynamics.loss + zero_grad + backward + Adam step "
                          "(fit's loop body); mbrl GaussianMLP.update(x, Adam(lr 1e-3, wd 1e-5), "
                          "target), learn_logvar_bounds=False (mbrl-lib's MBPO config)",
            "rollout_step": "reverie sample_next(mode='ts1'); mbrl OneDTransitionRewardModel"
                            ".sample with random_model propagation over 5 elites, double-"
                            "precision input normaliser (mbrl-lib's MBPO config)",
            "reverie_agent_rollout_step": "reverie rollout_step (agents/mbpo.py's model call: "
                                          "all elites on every row + disagreement u); "
                                          "information, not the target",
            "ratio": "per round: reverie speed / mbrl speed; median, min, max over rounds"},
        "protocol": f"{rounds} rounds, each a fresh worker process per system, order "
                    "alternating (reverie, mbrl), (mbrl, reverie), ...; per worker the median "
                    "of the timed iterations after warm-up",
        "allocator": "glibc mmap and trim thresholds 2**31-1 via mallopt in both workers "
                     "(reverie.keep_freed_memory(); the same mallopt calls in the mbrl worker)",
        "allocator_set": {s: all(m["allocator_set"] for m in runs[s]) for s in SYSTEMS},
        "versions": {s: {**runs[s][0]["versions"], "torch": runs[s][0]["torch"]}
                     for s in SYSTEMS},
        "machine": machine_info(args.threads),
        "cores": os.cpu_count(),
        "loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(load1, 2),
        "loaded": max(load0, load1) > (os.cpu_count() or 1),
        "results": results,
        "raw_seconds": runs,
    }
    print(json.dumps({size: {k: e[k]["ratio_reverie_over_mbrl"]["median"]
                             for k in ("train_step", "rollout_step")}
                      for size, e in results.items()}))
    RESULTS.mkdir(exist_ok=True)
    stem = "ensemble_speed_quick" if args.quick else "ensemble_speed"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, RESULTS / f"{stem}.png")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, med, lo, hi = [], [], [], []
    for size, e in result["results"].items():
        for name in ("train_step", "rollout_step"):
            r = e[name]["ratio_reverie_over_mbrl"]
            labels.append(f"{size}\n{name.replace('_', ' ')}")
            med.append(r["median"])
            lo.append(r["median"] - r["min"])
            hi.append(r["max"] - r["median"])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(labels, med, yerr=[lo, hi], capsize=4, color="tab:blue")
    ax.axhline(TARGET, color="tab:red", ls="--", lw=1, label=f"target {TARGET:g}x")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_ylabel("reverie / mbrl-lib speed")
    ax.set_title(f"Ensemble speed vs mbrl-lib GaussianMLP "
                 f"({result['settings']['threads']} thread, median, min-max)", fontsize=9)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
