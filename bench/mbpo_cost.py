"""What an env step of the MBPO presets costs on this CPU.

For each preset: `warmup` random env steps (observed, not timed), then one model-refit period
(`model_train_every` env steps) timed through the agent's driver protocol — act, observe,
`updates_due`, `update` — so the time covers the model fit, one rollout generation, G SAC
steps per env step and UP-MPC acting. The rollout length is the schedule's at its minimum
then; a rollout step costs the same at any length, so later epochs add (length − min_len) x
that per generation: `seconds_per_env_step_at_max_length` extrapolates to the schedule's
max length (an upper bound: rollouts that the model ends early cost less).
Writes bench/results/mbpo_cost.json.

    python bench/mbpo_cost.py mbpo-pendulum mbpo-inverted-pendulum
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from reverie.agents.mbpo import MBPOAgent, MBPOConfig
from reverie.config import load_preset
from reverie.envs import make_env, make_obs_spec
from reverie.run.collector import Transition

RESULTS = Path(__file__).resolve().parent / "results"


def batched(obs: dict) -> dict:
    return {k: np.asarray(v)[None] for k, v in obs.items()}


def measure(preset: str, seed: int = 0) -> dict:
    data = load_preset(preset)
    cfg: MBPOConfig = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(MBPOConfig), data["mbpo"]))
    env = make_env(data["env"]["id"])
    agent = MBPOAgent(make_obs_spec(env.observation_space), env.action_space, cfg,
                      torch.device("cpu"), seed)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    step, timed, updates, t0 = 0, None, 0, 0.0
    spent = {"fit": 0.0, "rollouts": 0.0}

    def timed_call(name, fn):
        def call():
            t = time.perf_counter()
            out = fn()
            spent[name] += time.perf_counter() - t
            return out
        return call

    agent.train_model = timed_call("fit", agent.train_model)
    agent.generate_rollouts = timed_call("rollouts", agent.generate_rollouts)
    while step < cfg.warmup + cfg.model_train_every:
        if step == cfg.warmup:
            t0 = time.perf_counter()
        if step < cfg.warmup:
            action = rng.uniform(-1, 1, (1, *env.action_space.shape)).astype(np.float32)
        else:
            action, _ = agent.act(batched(obs), np.array([False]), None, True)
        nxt, r, term, trunc, _ = env.step(action[0])
        agent.observe(Transition(batched(obs), action, np.array([r], np.float32),
                                 np.array([term]), np.array([trunc]), batched(nxt),
                                 np.array([False])))
        step += 1
        for _ in range(agent.updates_due(step)):
            due = agent.model_due()
            metrics = agent.update(None)
            if due:
                timed = metrics
            updates += 1
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
    total = time.perf_counter() - t0
    period = cfg.model_train_every
    length = timed["model/rollout_length"]
    per_rollout_step = spent["rollouts"] / length
    extra = (max(cfg.schedule[2:]) - length) * per_rollout_step / period
    result = {
        "preset": preset, "mode": cfg.mode, "threads": torch.get_num_threads(),
        "load_avg": round(os.getloadavg()[0], 2),
        "seconds_per_env_step": round(total / period, 4),
        "model_fit_s": round(spent["fit"], 2),
        "model_epochs": timed["model/epochs"],
        "rollout_generation_s": round(spent["rollouts"], 2),
        "rollout_length": length,
        "seconds_per_env_step_at_max_length": round((total / period) + extra, 4),
        "updates": updates,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "mbpo_cost.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for preset in args.presets:
        r = measure(preset)
        print(json.dumps(r), flush=True)
        results[preset] = r
        path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
