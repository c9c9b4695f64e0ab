"""The MuJoCo termination rules MBPO ends model rollouts with, against the envs themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reverie.world.termination import RULES, rule_of_env

pytest.importorskip("mujoco")
import gymnasium as gym  # noqa: E402

# the qpos entry each rule reads first (height, or the pole's angle), to force an ending
FIRST = {"hopper": 1, "walker2d": 1, "ant": 2, "humanoid": 2, "inverted_pendulum": 1}
BAD = {"hopper": 0.3, "walker2d": 0.3, "ant": 1.6, "humanoid": 0.5, "inverted_pendulum": 0.5}


@pytest.mark.parametrize("rule", list(RULES))
def test_each_rule_says_what_its_env_says_at_every_step(rule):
    fn, task = RULES[rule]
    env_id = f"{task}-v5"
    assert rule_of_env(env_id) == rule
    env = gym.make(env_id)
    seen = {True: 0, False: 0}

    def check(obs, terminated):
        said = bool(fn(torch.as_tensor(obs[None], dtype=torch.float64))[0])
        assert said == terminated, (rule, obs[:3], terminated)
        seen[terminated] += 1

    for episode in range(4):
        obs, _ = env.reset(seed=episode)
        check(obs, False)
        for step in range(200):
            if episode == 3 and step == 2:  # an ending forced by the state the rule reads
                qpos = env.unwrapped.data.qpos.copy()
                qpos[FIRST[rule]] = BAD[rule]
                env.unwrapped.set_state(qpos, env.unwrapped.data.qvel.copy())
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            check(obs, terminated)
            if terminated or truncated:
                break
    env.close()
    assert seen[True] >= 1 and seen[False] >= 1


def test_other_envs_have_no_rule():
    assert rule_of_env("Pendulum-v1") is None and rule_of_env("HalfCheetah-v5") is None
    assert rule_of_env("HumanoidStandup-v5") is None and rule_of_env("Hopper-v4") == "hopper"
    obs = torch.tensor([[np.nan, 0.0, 0.0, 0.0], [0.0, 0.1, 0.0, 0.0]])
    assert RULES["inverted_pendulum"][0](obs).tolist() == [True, False]
