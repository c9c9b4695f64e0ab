"""POPGym through `make_env`: every Easy env builds, resets and steps; observations are the
one-hot / concatenated float32 vectors POPGym's baselines use; MultiDiscrete actions pass;
bad names get a did-you-mean; returns stay in [-1, 1]."""

from __future__ import annotations

import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

pytest.importorskip("popgym", reason="needs the popgym extra (make test installs it)")

from reverie.envs import make_env  # noqa: E402
from reverie.envs.make import popgym_ids  # noqa: E402
from reverie.envs.wrappers import DictObservation  # noqa: E402
from reverie.errors import UserError  # noqa: E402

NAMES = ("Autoencode", "Battleship", "Concentration", "CountRecall", "HigherLower",
         "MineSweeper", "MultiarmedBandit", "NoisyPositionOnlyCartPole",
         "NoisyPositionOnlyPendulum", "PositionOnlyCartPole", "PositionOnlyPendulum",
         "RepeatFirst", "RepeatPrevious", "VelocityOnlyCartpole")
EASY = [f"popgym-{n}Easy-v0" for n in NAMES]
EVERY = [f"popgym-{n}{d}-v0" for n in NAMES for d in ("Easy", "Medium", "Hard")]


def _discrete_components(space: spaces.Space) -> int | None:
    """How many one-hot blocks `spaces.flatten` makes of an all-discrete space, else None."""
    if isinstance(space, spaces.Discrete):
        return 1
    if isinstance(space, spaces.MultiDiscrete):
        return int(space.nvec.size)
    if isinstance(space, spaces.Tuple):
        parts = [_discrete_components(s) for s in space.spaces]
        return None if None in parts else sum(parts)
    return None


def test_every_id_is_listed():
    ids = popgym_ids()
    # mazelib is optional in popgym: without it the two Labyrinth envs are not registered
    assert set(ids) >= {f"popgym-{n}{d}-v0" for n in NAMES for d in ("Easy", "Medium", "Hard")}
    assert all(i.endswith(("Easy-v0", "Medium-v0", "Hard-v0")) for i in ids)


@pytest.mark.parametrize("env_id", EVERY)
def test_every_env_resets_and_steps(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's env checker nags about popgym's infos
        env = make_env(env_id)
        space = env.observation_space["vector"]
        obs, _ = env.reset(seed=0)
        env.action_space.seed(0)
        action = env.action_space.sample()
        nxt, reward, term, trunc, _ = env.step(action)
    raw_obs = env.unwrapped.observation_space
    assert list(env.observation_space) == ["vector"]
    for o in (obs, nxt):
        v = o["vector"]
        assert v.dtype == np.float32 and v.shape == space.shape
        assert space.shape == (spaces.flatdim(raw_obs),)
        blocks = _discrete_components(raw_obs)
        if blocks is not None:  # one-hot: 0/1 entries, exactly one 1 per component
            assert set(np.unique(v)) <= {0.0, 1.0} and v.sum() == blocks
    assert np.isfinite(reward) and isinstance(term, bool) and isinstance(trunc, bool)
    act = env.action_space
    if isinstance(act, spaces.MultiDiscrete):
        assert np.asarray(action).dtype == np.int64 and np.asarray(action).shape == act.shape
    if isinstance(act, spaces.Box):
        assert np.all(act.low == -1.0) and np.all(act.high == 1.0)


def test_flattening_is_one_hot_and_concatenated():
    class Fixed(gym.Env):
        def __init__(self, space, value):
            self.observation_space, self.value = space, value
            self.action_space = spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            return self.value, {}

    cases = [
        (spaces.Tuple((spaces.Discrete(2), spaces.Discrete(4))), (1, 3),
         [0, 1, 0, 0, 0, 1]),
        (spaces.MultiDiscrete([3, 2]), np.array([2, 1]), [0, 0, 1, 0, 1]),
        (spaces.Discrete(3, start=1), 2, [0, 1, 0]),
        (spaces.Tuple((spaces.Box(-1, 1, (2,)), spaces.Discrete(2))),
         (np.array([0.5, -0.25], np.float32), 0), [0.5, -0.25, 1, 0]),
    ]
    for space, value, expected in cases:
        obs, _ = DictObservation(Fixed(space, value)).reset()
        assert obs["vector"].dtype == np.float32
        assert obs["vector"].tolist() == expected


@pytest.mark.parametrize("env_id", ["popgym-RepeatPreviousEasy-v0", "popgym-BattleshipEasy-v0",
                                    "popgym-MineSweeperEasy-v0",
                                    "popgym-PositionOnlyPendulumEasy-v0",
                                    "popgym-MultiarmedBanditEasy-v0"])
def test_random_episode_returns_stay_in_unit_interval(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = make_env(env_id)
        env.action_space.seed(1)
        env.reset(seed=1)
        ret, episodes = 0.0, 0
        for _ in range(300):
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            ret += r
            if term or trunc:
                assert -1.0 - 1e-6 <= ret <= 1.0 + 1e-6
                ret, episodes = 0.0, episodes + 1
                env.reset()
    assert -1.0 - 1e-6 <= ret <= 1.0 + 1e-6
    assert episodes >= 1


def test_bad_popgym_names_suggest_the_fix(monkeypatch):
    with pytest.raises(UserError, match="did you mean 'popgym-RepeatPreviousEasy-v0'"):
        make_env("popgym-RepeatPreviusEasy-v0")
    with pytest.raises(UserError, match="did you mean 'popgym-CountRecallHard-v0'.*Name one of"):
        make_env("popgym-CountRecallHrd-v0")
    if "popgym-LabyrinthEscapeEasy-v0" not in popgym_ids():  # mazelib missing
        with pytest.raises(UserError, match="pip install mazelib"):
            make_env("popgym-LabyrinthEscapeEasy-v0")
    monkeypatch.setitem(sys.modules, "popgym", None)  # as if popgym were not installed
    with pytest.raises(UserError, match=r"reverie\[popgym\]"):
        make_env("popgym-RepeatPreviousEasy-v0")


def test_unsupported_action_spaces_are_named():
    class Acting(gym.Env):
        observation_space = spaces.Box(-1, 1, (2,))

        def __init__(self, action_space):
            self.action_space = action_space

    from reverie.envs import make as make_module

    for space, words in [(spaces.MultiBinary(3), "MultiBinary action space"),
                         (spaces.MultiDiscrete([[2, 2], [3, 3]]), "2-D MultiDiscrete"),
                         (spaces.Tuple((spaces.Discrete(2),)), "Tuple action space")]:
        gym.register("reverie-test-Acting-v0", entry_point=lambda s=space: Acting(s))
        try:
            with pytest.raises(UserError, match=words):
                make_module.make_env("reverie-test-Acting-v0")
        finally:
            del gym.registry["reverie-test-Acting-v0"]


def test_variable_size_observations_are_refused():
    class Seq(gym.Env):
        observation_space = spaces.Sequence(spaces.Discrete(2))
        action_space = spaces.Discrete(2)

    with pytest.raises(UserError, match="Sequence.*not supported"):
        DictObservation(Seq())


def test_prev_reward_is_observed_from_the_step_before():
    from reverie.envs import make_env

    env = make_env("CartPole-v1", prev_reward=True)
    assert env.observation_space["prev_reward"].shape == (1,)
    obs, _ = env.reset(seed=0)
    assert obs["prev_reward"].tolist() == [0.0] and obs["vector"].shape == (4,)
    obs, reward, *_ = env.step(0)
    assert obs["prev_reward"].tolist() == [reward] == [1.0]
    assert env.reset(seed=1)[0]["prev_reward"].tolist() == [0.0]  # zero at an episode start


def test_rppo_with_prev_reward_trains_and_its_policy_sees_it(tmp_path):
    """env.prev_reward reaches the memory as an observation key, in training and in a loaded
    policy alike."""
    import reverie
    from reverie.config import build_config
    from reverie.run.driver import Trainer

    cfg = build_config("popgym-ppo", [
        "env.id=popgym-RepeatPreviousEasy-v0", "env.prev_reward=true", "run.num_envs=2",
        "rppo.rollout_length=16", "rppo.seq_len=8", "rppo.num_minibatches=2", "rppo.epochs=1",
        "rppo.backbone=gru", "rppo.d_model=16", "run.eval_episodes=1", "run.eval_every=64",
        "run.progress=false", "run.threads=1"], {"steps": 64})
    out = tmp_path / "run"
    Trainer(cfg, out).train()
    policy = reverie.load(out)
    assert "prev_reward" in policy.obs_spec
    env = policy.make_env()
    obs, _ = env.reset(seed=0)
    action, state = policy.act(obs)
    obs, *_ = env.step(action)
    policy.act(obs, state)
