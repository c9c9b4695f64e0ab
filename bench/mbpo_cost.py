"""What an env step of the MBPO presets costs on this CPU.

For each preset: `warmup` random env steps (observed, not timed), then one model-refit period
(`model_train_every` env steps) timed through the agent's driver protocol — act, observe,
`updates_due`, `update` — so the time covers the model fit, one rollout generation, G SAC
steps per env step and UP-MPC acting. The rollout length is the schedule's at the first
generation; `--at-max-length` also times one generation at the schedule's max length (what
later epochs cost). Writes bench/results/mbpo_cost.json.

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

RESULTS = Path(__file__).resolve().parent / "results"


class Step:
    def __init__(self, obs, action, reward, term, trunc, next_obs) -> None:
        self.obs, self.action, self.reward = obs, action, np.array([reward], np.float32)
        self.terminated, self.truncated = np.array([term]), np.array([trunc])
        self.next_obs, self.first = next_obs, np.array([False])


def batched(obs: dict) -> dict:
    return {k: np.asarray(v)[None] for k, v in obs.items()}


def measure(preset: str, at_max_length: bool, seed: int = 0) -> dict:
    data = load_preset(preset)
    cfg: MBPOConfig = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(MBPOConfig), data["mbpo"]))
    env = make_env(data["env"]["id"])
    agent = MBPOAgent(make_obs_spec(env.observation_space), env.action_space, cfg,
                      torch.device("cpu"), seed)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    step, timed, updates, t0 = 0, None, 0, 0.0
    fit_s = 0.0
    while step < cfg.warmup + cfg.model_train_every:
        if step == cfg.warmup:
            t0 = time.perf_counter()
        if step < cfg.warmup:
            action = rng.uniform(-1, 1, (1, *env.action_space.shape)).astype(np.float32)
        else:
            action, _ = agent.act(batched(obs), np.array([False]), None, True)
        nxt, r, term, trunc, _ = env.step(action[0])
        agent.observe(Step(batched(obs), action, r, term, trunc, batched(nxt)))
        step += 1
        for _ in range(agent.updates_due(step)):
            due = agent.model_due()
            t1 = time.perf_counter()
            metrics = agent.update(None)
            if due:
                fit_s = time.perf_counter() - t1
                timed = metrics
            updates += 1
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
    total = time.perf_counter() - t0
    result = {
        "preset": preset, "mode": cfg.mode, "threads": torch.get_num_threads(),
        "load_avg": os.getloadavg()[0],
        "seconds_per_env_step": total / cfg.model_train_every,
        "first_fit_and_rollouts_s": fit_s,
        "rollout_length": timed["model/rollout_length"],
        "model_epochs": timed["model/epochs"],
        "updates": updates,
    }
    if at_max_length:
        length = max(cfg.schedule[2:])
        agent.cfg.schedule = [0, 0, length, length]
        t1 = time.perf_counter()
        agent.generate_rollouts()
        gen = time.perf_counter() - t1
        result["generation_s_at_max_length"] = gen
        # per env step later on: the measured step minus its first generation's share
        result["rollouts_per_env_step_s_at_max_length"] = gen / cfg.model_train_every
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--at-max-length", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "mbpo_cost.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for preset in args.presets:
        r = measure(preset, args.at_max_length)
        print(json.dumps(r), flush=True)
        results[preset] = r
        path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
