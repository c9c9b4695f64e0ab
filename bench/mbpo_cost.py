"""What an env step of the MBPO presets costs on this CPU, and where the time goes.

For each preset: `warmup` random env steps (observed, not timed), then one model-refit period
(`model_train_every` env steps) timed through the agent's driver protocol — act, observe,
`updates_due`, `update` — so the time covers the model fit, one rollout generation, G SAC
steps per env step and UP-MPC acting. The rollout length is the schedule's at its minimum
then; a rollout step costs the same at any length, so later epochs add (length − min_len) x
that per generation: `seconds_per_env_step_at_max_length` extrapolates to the schedule's
max length (an upper bound: rollouts that the model ends early cost less).

`parts` splits the timed period (wall seconds, and their share of it): `model_fit`
(`train_model`), `rollouts` (`generate_rollouts`, UP-MPC planning included in the
conservative modes), `sac_update` (the G SAC gradient steps), `sac_batch` (drawing their
mixed real/model batches), `act` (the policy, or UP-MPC's optimistic plan), `env` (env step
and `observe`) and `other` (the rest of the loop: `updates_due`, metrics). The wrappers are
attribute patches on the agent, so the same script times older checkouts of the agent.
`cpu_seconds_per_env_step` is the process CPU time: on this shared machine it moves less
with the load than the wall time does.

`--ab OLD_SRC` compares two checkouts: each preset runs in fresh processes, alternately
with PYTHONPATH=OLD_SRC (before) and with this checkout's src/ (after), `--rounds` times
each (A B A B ...), and the entry gets the medians, ranges and 1-min load averages of both
plus the per-part shares before/after. Writes bench/results/mbpo_cost.json (entries keyed
by preset, or preset@mode with --mode).

    python bench/mbpo_cost.py mbpo-pendulum mbpo-inverted-pendulum
    python bench/mbpo_cost.py mbpo-dmc --mode mbpo
    python bench/mbpo_cost.py mbpo-dmc --ab ../old-checkout/src --rounds 3
    python bench/mbpo_cost.py mbpo-pendulum --modes mbpo conservative optimistic coplanner

`--modes` is UP-MPC's cost: the modes of one preset, each in fresh processes, alternately,
`--rounds` times; per mode the wall and CPU seconds per env step (and their ratios to the
first mode, round by round) and the model evaluations per env step, counted by phase: `act`
(UP-MPC's optimistic plan in the real env) and `rollouts` (generation of model data; UP-MPC's
conservative plans included). A model evaluation is one state-action pair through the
ensemble (`model_pairs_per_env_step`); `member_evals_per_env_step` weighs each pair by the
members it runs (every elite for UP-MPC's step and for the u metric, one for MBPO's TS1
step). Writes bench/results/upmpc_cost.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runlib import revision, spread  # bench/ is the script's directory

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parent.parent / "src"
PARTS = ("model_fit", "rollouts", "sac_update", "sac_batch", "act", "env", "other")


def batched(obs: dict) -> dict:
    return {k: np.asarray(v)[None] for k, v in obs.items()}


def measure(preset: str, seed: int = 0, mode: str | None = None) -> dict:
    import torch
    from omegaconf import OmegaConf

    from reverie.agents.mbpo import MBPOAgent, MBPOConfig
    from reverie.config import load_preset
    from reverie.envs import make_env, make_obs_spec
    from reverie.run.collector import Transition

    data = load_preset(preset)
    cfg: MBPOConfig = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(MBPOConfig), data["mbpo"]))
    if mode is not None:
        cfg.mode = mode
    env = make_env(data["env"]["id"])
    agent = MBPOAgent(make_obs_spec(env.observation_space), env.action_space, cfg,
                      torch.device("cpu"), seed)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    step, timed, updates, t0, c0 = 0, None, 0, 0.0, 0.0
    spent = dict.fromkeys(PARTS, 0.0)
    on = [False]  # parts are counted in the timed period only

    def timed_call(name, fn):
        def call(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            if on[0]:
                spent[name] += time.perf_counter() - t
            return out
        return call

    agent.train_model = timed_call("model_fit", agent.train_model)
    agent.generate_rollouts = timed_call("rollouts", agent.generate_rollouts)
    agent.sac.update = timed_call("sac_update", agent.sac.update)
    agent.sample_batch = timed_call("sac_batch", agent.sample_batch)
    act = timed_call("act", agent.act)

    def env_step(action):
        nxt, r, term, trunc, _ = env.step(action[0])
        agent.observe(Transition(batched(obs), action, np.array([r], np.float32),
                                 np.array([term]), np.array([trunc]), batched(nxt),
                                 np.array([False])))
        return nxt, term, trunc

    env_step = timed_call("env", env_step)
    # model evaluations by phase: state-action pairs fed to the ensemble, and member
    # evaluations (pairs x members run on each: every elite for UP-MPC's step and the u
    # metric, one member per pair for plain MBPO's TS1 step)
    phase = ["act"]
    pairs = {"act": 0, "rollouts": 0}
    members = {"act": 0, "rollouts": 0}
    elites = agent.model.num_elites

    def counted(fn, per_pair):
        def call(obs_, action_, *args, **kwargs):
            if on[0]:
                pairs[phase[0]] += obs_.shape[0]
                members[phase[0]] += obs_.shape[0] * per_pair
            return fn(obs_, action_, *args, **kwargs)
        return call

    def in_phase(name, fn):
        def call(*args, **kwargs):
            phase[0] = name
            try:
                return fn(*args, **kwargs)
            finally:
                phase[0] = "act"
        return call

    agent.model.rollout_step = counted(agent.model.rollout_step, elites)
    agent.model.disagreement = counted(agent.model.disagreement, elites)
    agent.model.sample_next = counted(agent.model.sample_next, 1)
    agent.generate_rollouts = in_phase("rollouts", agent.generate_rollouts)
    rollout_rows = [0.0]
    load_start = os.getloadavg()[0]
    while step < cfg.warmup + cfg.model_train_every:
        if step == cfg.warmup:
            on[0] = True
            load_start = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
        if step < cfg.warmup:
            action = rng.uniform(-1, 1, (1, *env.action_space.shape)).astype(np.float32)
        else:
            action, _ = act(batched(obs), np.array([False]), None, True)
        nxt, term, trunc = env_step(action)
        step += 1
        for _ in range(agent.updates_due(step)):
            due = agent.model_due()
            metrics = agent.update(None)
            if due:
                timed = metrics
                if on[0]:
                    rollout_rows[0] += metrics["model/rollout_rows"]
            updates += 1
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    # sac_update's time includes nothing of sac_batch (the batch is drawn before the call)
    spent["other"] = total - sum(v for k, v in spent.items() if k != "other")
    period = cfg.model_train_every
    length = timed["model/rollout_length"]
    per_rollout_step = spent["rollouts"] / length
    extra = (max(cfg.schedule[2:]) - length) * per_rollout_step / period
    return {
        "preset": preset, "mode": cfg.mode, "threads": torch.get_num_threads(),
        "load_avg": round(load_start, 2), "load_avg_end": round(os.getloadavg()[0], 2),
        "seconds_per_env_step": round(total / period, 4),
        "cpu_seconds_per_env_step": round(cpu / period, 4),
        "model_fit_s": round(spent["model_fit"], 2),
        "model_epochs": timed["model/epochs"],
        "rollout_generation_s": round(spent["rollouts"], 2),
        "rollout_length": length,
        "seconds_per_env_step_at_max_length": round((total / period) + extra, 4),
        "updates": updates,
        "elites": elites,
        # per env step of the timed period: the pairs that became model data (rollout
        # rows), and the model evaluations of acting and of rollout generation
        "rollout_rows_per_env_step": round(rollout_rows[0] / period, 2),
        "model_pairs_per_env_step": {k: round(v / period, 2) for k, v in pairs.items()},
        "member_evals_per_env_step": {k: round(v / period, 2) for k, v in members.items()},
        "parts": {k: {"s": round(v, 2), "share": round(v / total, 3)}
                  for k, v in spent.items()},
    }


# -- A/B of two checkouts ------------------------------------------------------------------------
def run_isolated(src: Path, preset: str, mode: str | None, threads: int) -> dict:
    """One `measure` in a fresh process importing reverie from `src`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), preset, "--threads", str(threads),
           "--print-only"] + (["--mode", mode] if mode else [])
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{src}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    out = {k: spread([r[k] for r in runs], 4, keep="runs") for k in
           ("seconds_per_env_step", "cpu_seconds_per_env_step",
            "seconds_per_env_step_at_max_length", "model_fit_s", "rollout_generation_s")}
    out["model_epochs"] = [r["model_epochs"] for r in runs]
    out["load_avg"] = [r["load_avg"] for r in runs]
    out["load_avg_end"] = [r["load_avg_end"] for r in runs]
    out["parts_s"] = {p: round(statistics.median(r["parts"][p]["s"] for r in runs), 2)
                      for p in PARTS}
    out["parts_share"] = {p: round(statistics.median(r["parts"][p]["share"] for r in runs), 3)
                          for p in PARTS}
    return out


def ab(old_src: Path, preset: str, mode: str | None, threads: int,
       rounds: int) -> tuple[dict, list[dict]]:
    """(the A/B summary, the "after" runs)."""
    before, after = [], []
    for i in range(rounds):
        # A B, then B A: neither side always runs first
        order = [("before", old_src), ("after", SRC)]
        for side, src in order if i % 2 == 0 else order[::-1]:
            r = run_isolated(src, preset, mode, threads)
            (before if side == "before" else after).append(r)
            print(json.dumps({"round": i, "side": side, **r}), flush=True)
    b, a = summarise(before), summarise(after)
    return {
        "rounds": rounds, "order": "alternating, A B then B A",
        "before_revision": revision(old_src), "after_revision": revision(SRC),
        "before": b, "after": a,
        "speedup_median": {k: round(b[k]["median"] / a[k]["median"], 2) for k in
                           ("seconds_per_env_step", "cpu_seconds_per_env_step",
                            "seconds_per_env_step_at_max_length")},
    }, after


# -- the modes side by side: what UP-MPC costs --------------------------------------------------
def compare_modes(preset: str, modes: list[str], threads: int, rounds: int) -> dict:
    """Each mode in fresh processes, in alternation (the order rotates every round): wall and
    CPU seconds per env step (median, min-max) and their per-round ratios to the first mode,
    and the model evaluations per env step (counted, the same in every round for a seed)."""
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for i in range(rounds):
        for mode in modes[i % len(modes):] + modes[:i % len(modes)]:
            r = run_isolated(SRC, preset, mode, threads)
            runs[mode].append(r)
            print(json.dumps({"round": i, "mode": mode, **r}), flush=True)
    base = modes[0]
    out: dict = {"preset": preset, "rounds": rounds, "threads": threads,
                 "order": "alternating, rotated every round", "revision": revision(SRC),
                 "cores": os.cpu_count(), "baseline": base, "modes": {}}
    for mode, rs in runs.items():
        out["modes"][mode] = {
            **summarise(rs),
            "ratio_to_baseline": {
                k: spread([a[k] / b[k] for a, b in zip(rs, runs[base])], 2, keep=None)
                for k in ("seconds_per_env_step", "cpu_seconds_per_env_step")},
            "rollout_length": rs[0]["rollout_length"],
            "elites": rs[0]["elites"],
            "rollout_rows_per_env_step": rs[0]["rollout_rows_per_env_step"],
            "model_pairs_per_env_step": rs[0]["model_pairs_per_env_step"],
            "member_evals_per_env_step": rs[0]["member_evals_per_env_step"],
        }
    loads = [x for rs in runs.values() for r in rs for x in (r["load_avg"], r["load_avg_end"])]
    out["load_avg_max"] = max(loads)
    if max(loads) > (os.cpu_count() or 1):
        out["note"] = "load average above the core count: wall times are noisy"
    return out


def plot_modes(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.2), squeeze=False)
    for ax, (preset, entry) in zip(axes[0], results.items()):
        modes = list(entry["modes"])
        for offset, key, label in ((-0.2, "seconds_per_env_step", "wall"),
                                   (0.2, "cpu_seconds_per_env_step", "CPU")):
            v = [entry["modes"][m][key] for m in modes]
            med = [x["median"] for x in v]
            err = [[a - x["min"] for a, x in zip(med, v)], [x["max"] - a for a, x in zip(med, v)]]
            ax.bar(np.arange(len(modes)) + offset, med, width=0.4, yerr=err, capsize=3,
                   label=label)
        ax.set_xticks(np.arange(len(modes)), modes, rotation=15)
        ax.set_ylabel("seconds per env step")
        ax.set_title(f"{preset}: UP-MPC cost (median, min-max)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mode", default=None, help="override mbpo.mode (entry preset@mode)")
    parser.add_argument("--print-only", action="store_true", help="print, do not write")
    parser.add_argument("--ab", type=Path, default=None, metavar="OLD_SRC",
                        help="compare with the checkout whose src/ is OLD_SRC")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=None, metavar="MODE",
                        help="compare these mbpo.mode values (the first is the baseline) in "
                             "alternating fresh processes; writes bench/results/upmpc_cost.*")
    args = parser.parse_args()
    if args.modes is not None:
        path = RESULTS / "upmpc_cost.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        for preset in args.presets:
            results[preset] = compare_modes(preset, args.modes, args.threads, args.rounds)
            RESULTS.mkdir(exist_ok=True)
            path.write_text(json.dumps(results, indent=1) + "\n")
        plot_modes(results, path.with_suffix(".png"))
        return
    path = RESULTS / "mbpo_cost.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for preset in args.presets:
        key = preset if args.mode is None else f"{preset}@{args.mode}"
        if args.ab is not None:
            entry, after = ab(args.ab.resolve(), preset, args.mode, args.threads,
                              args.rounds)
            # the entry's top level: the "after" run of median speed
            median = entry["after"]["seconds_per_env_step"]["median"]
            r = {**min(after, key=lambda x: abs(x["seconds_per_env_step"] - median)),
                 "ab": entry}
        else:
            import torch

            torch.set_num_threads(args.threads)
            r = measure(preset, mode=args.mode)
        print(json.dumps(r), flush=True)
        if not args.print_only:
            RESULTS.mkdir(exist_ok=True)
            results[key] = r
            path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
