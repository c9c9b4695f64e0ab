"""MBPO + COPlanner agent: schedule, batch mixing, retention, cadence, UP-MPC wiring, resume."""

from __future__ import annotations

import copy
import io
import json
import math
import re

import numpy as np
import pytest
import torch
from gymnasium import spaces
from omegaconf import OmegaConf

import reverie
from reverie.agents.mbpo import (
    MODES,
    EnsembleConfig,
    MBPOAgent,
    MBPOConfig,
    batch_split,
    rollout_length,
    validate_config,
)
from reverie.behavior.sac import SACConfig
from reverie.cli import main
from reverie.config import build_config
from reverie.envs import make_env, make_obs_spec
from reverie.errors import UserError
from reverie.planning.upmpc import UPMPCConfig
from reverie.run.checkpoint import CheckpointStore, load_file
from reverie.run.collector import Transition as Step
from reverie.world.termination import rule_of_env
from test_reliability import kill_when
from test_reliability import reverie as reverie_cli


def tiny(mode: str = "mbpo", **kw) -> MBPOConfig:
    args = dict(
        mode=mode,
        model=EnsembleConfig(members=3, elites=2, hidden=16, layers=2, batch_size=32,
                             max_epochs=3),
        sac=SACConfig(hidden=16, batch_size=16),
        upmpc=UPMPCConfig(candidates=3, horizon=2),
        warmup=20, updates_per_step=2, model_train_every=10, rollout_batch=8,
        rollout_chunk=5, schedule=[0, 2, 1, 3], epoch_length=10, capacity=1000,
    )
    args.update(kw)
    return MBPOConfig(**args)


SPEC = {"vector": ((3,), "float32")}
BOX = spaces.Box(-1.0, 1.0, (1,), np.float32)


def agent_for(cfg: MBPOConfig, seed: int = 0) -> MBPOAgent:
    return MBPOAgent(SPEC, BOX, cfg, torch.device("cpu"), seed)


def batched(obs: dict) -> dict:
    return {k: np.asarray(v)[None] for k, v in obs.items()}


def drive(agent: MBPOAgent, env, steps: int, state: dict | None = None, log=None) -> list:
    """A minimal single-env driver: act, observe, then the updates that are due."""
    state = state if state is not None else {"step": 0, "episode": 0, "obs": None}
    metrics = []
    if state["obs"] is None:
        state["obs"], _ = env.reset(seed=state["episode"])
        state["first"] = True
    for _ in range(steps):
        obs = batched(state["obs"])
        action, _ = agent.act(obs, np.array([state["first"]]), None, True)
        if log is not None:
            log.append(action.copy())
        nxt, r, term, trunc, _ = env.step(action[0])
        agent.observe(Step(obs, action, np.array([r], np.float32), np.array([term]),
                           np.array([trunc]), batched(nxt), np.array([state["first"]])))
        state["step"] += 1
        for _ in range(agent.updates_due(state["step"])):
            metrics.append(agent.update(None))
        state["obs"], state["first"] = nxt, False
        if term or trunc:
            state["episode"] += 1
            state["obs"], _ = env.reset(seed=state["episode"])
            state["first"] = True
    return metrics


def fill_real(agent: MBPOAgent, n: int, reward: float = 1.0, seed: int = 0) -> None:
    g = np.random.default_rng(seed)
    obs = {"vector": g.normal(size=(n, 3)).astype(np.float32)}
    nxt = {"vector": g.normal(size=(n, 3)).astype(np.float32)}
    agent.observe(Step(obs, g.uniform(-1, 1, (n, 1)).astype(np.float32),
                       np.full(n, reward, np.float32), np.zeros(n, bool), np.zeros(n, bool),
                       nxt, np.zeros(n, bool)))


# -- MBPO's formulas -------------------------------------------------------------------------
def test_rollout_length_schedule_hand_computed():
    hopper = [20, 150, 1, 15]
    # flat at min_len up to min_epoch; 1 + 14 (e − 20) / 130 rounded down; flat at max_len
    expected = {0: 1, 20: 1, 21: 1, 30: 2, 85: 8, 149: 14, 150: 15, 1000: 15}
    assert {e: rollout_length(hopper, e) for e in expected} == expected
    assert [rollout_length([1, 15, 1, 1], e) for e in (0, 5, 50)] == [1, 1, 1]
    assert [rollout_length([3, 3, 2, 5], e) for e in (3, 4)] == [2, 5]  # a step schedule


def test_batch_split():
    assert batch_split(256, 0.05) == (12, 244)  # MBPO: int(0.05 · 256) real rows
    assert batch_split(10, 0.0) == (0, 10) and batch_split(10, 1.0) == (10, 0)


def test_sac_batch_mixes_real_and_model_rows_in_ratio():
    agent = agent_for(tiny(real_ratio=0.25, sac=SACConfig(hidden=16, batch_size=40)))
    fill_real(agent, 50, reward=1.0)
    batch = agent.sample_batch()
    assert (batch["reward"] == 1.0).sum() == 40  # no rollouts yet: all real
    agent.rollouts.add({"obs": torch.zeros(30, 3), "action": torch.zeros(30, 1),
                        "reward": torch.full((30,), -1.0), "next_obs": torch.zeros(30, 3),
                        "terminal": torch.zeros(30)})
    batch = agent.sample_batch()
    assert (batch["reward"] == 1.0).sum() == 10 and (batch["reward"] == -1.0).sum() == 30
    assert set(batch) == {"obs", "action", "reward", "next_obs", "done"}


def test_model_buffer_drops_rollouts_older_than_retain_epochs():
    # window = 1 epoch of 10 env steps; a generation every 5 steps
    agent = agent_for(tiny(model_train_every=5, epoch_length=10, retain_epochs=1))
    for made_at, n in ((5, 4), (10, 3), (15, 2)):
        agent.env_steps = made_at
        agent.rollouts.add({"obs": torch.zeros(n, 3), "action": torch.zeros(n, 1),
                            "reward": torch.full((n,), float(made_at)),
                            "next_obs": torch.zeros(n, 3), "terminal": torch.zeros(n)})
        agent._retain(n)
    assert agent.generations == [[10, 3], [15, 2]]  # made at 5 is 10 steps old: dropped
    assert len(agent.rollouts) == 5
    seen = agent.rollouts.sample(500, agent.generator)["reward"]
    assert set(seen.tolist()) == {10.0, 15.0}


def test_updates_due_pays_g_per_env_step_after_warmup():
    agent = agent_for(tiny(warmup=20, updates_per_step=3))
    fill_real(agent, 25)
    assert agent.updates_due(10) == 0 and agent.updates_due(19) == 0
    assert agent.updates_due(20) == 3  # the warmup-th step is the first paid
    assert agent.updates_due(21) == 3
    assert agent.updates_due(25) == 12
    assert agent.updates_due(25) == 0


# -- the loop ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_short_pendulum_run_gives_finite_metrics(mode):
    env = make_env("Pendulum-v1")
    agent = MBPOAgent(make_obs_spec(env.observation_space), env.action_space, tiny(mode),
                      torch.device("cpu"), 0)
    metrics = drive(agent, env, 35)
    assert len(metrics) == 2 * 16  # G = 2 for steps 20..35
    for row in metrics:
        assert all(math.isfinite(v) for v in row.values()), row
    last = metrics[-1]
    for key in ("sac/critic_loss", "model/holdout_mse", "model/rollout_length",
                "mbpo/model_buffer"):
        assert key in last
    # fitted at step 30: epoch (30 − warmup 20) // 10 = 1 of [0, 2, 1, 3] -> 1 + ½·2 = 2
    assert last["model/rollout_length"] == 2.0
    assert ("upmpc/rollout_score" in last) == (mode in ("conservative", "coplanner"))
    acted = any("upmpc/act_score" in row for row in metrics)
    assert acted == (mode in ("optimistic", "coplanner"))
    assert agent.model_trained_at == 30  # fitted at the first update (20) and 10 steps later


# -- UP-MPC wiring -----------------------------------------------------------------------------
class UncertainAboutBigActions:
    """A stub model: state stays, reward 0, disagreement |a|, never terminal; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def rollout_step(self, obs, action, generator):
        self.calls += 1
        n = obs.shape[0]
        return obs, torch.zeros(n), action.abs().sum(-1), torch.zeros(n, dtype=torch.bool)

    def sample_next(self, obs, action, generator, mode="ts1"):  # mode mbpo's TS1 step
        next_obs, reward, _, term = self.rollout_step(obs, action, generator)
        return next_obs, reward, term

    def disagreement(self, obs, action, generator):  # mode mbpo's logged u
        return action.abs().sum(-1)


def stubbed(mode: str, **kw) -> tuple[MBPOAgent, UncertainAboutBigActions, list]:
    agent = agent_for(tiny(mode, **kw))
    fill_real(agent, 30)
    stub = UncertainAboutBigActions()
    agent.model = stub
    samples: list[torch.Tensor] = []
    sample = agent._policy_sample

    def logged(state):
        a = sample(state)
        samples.append(a)
        return a

    agent._policy_sample = logged
    return agent, stub, samples


def discounted_abs(samples: list, n: int, k: int, gamma: float = 0.97) -> torch.Tensor:
    """Σ_h γ^h |a_h| of each candidate: the stub's discounted disagreement, [n, k]."""
    return sum(gamma**h * a.abs().sum(-1).reshape(n, k) for h, a in enumerate(samples))


@pytest.mark.parametrize("mode", ["mbpo", "conservative"])
def test_rollout_actions_come_from_conservative_upmpc(mode):
    agent, stub, samples = stubbed(mode, rollout_batch=4, rollout_chunk=4, schedule=[0, 0, 1, 1])
    agent.generate_rollouts()
    stored = agent.rollouts.rows()["action"]  # [4, 1]: one step of 4 rollouts
    k, h = agent.cfg.upmpc.candidates, agent.cfg.upmpc.horizon
    if mode == "mbpo":
        assert stub.calls == 1 and len(samples) == 1
        torch.testing.assert_close(stored, samples[0], rtol=0, atol=0)
    else:  # K candidates, H model steps each, then the executed step
        assert stub.calls == h + 1 and len(samples) == h
        candidates = samples[0].reshape(4, k, 1)
        safest = candidates[torch.arange(4), discounted_abs(samples, 4, k).argmin(1)]
        torch.testing.assert_close(stored, safest, rtol=0, atol=0)
        assert not torch.equal(stored, candidates[:, 0])  # it did choose, not take the first


class EndsWherePositive(UncertainAboutBigActions):
    """The stub again, but rows whose first state entry is positive terminate."""

    def rollout_step(self, obs, action, generator):
        next_obs, reward, u, _ = super().rollout_step(obs, action, generator)
        return next_obs, reward, u, obs[:, 0] > 0


def test_mbpo_mode_steps_by_ts1_and_logs_u_on_the_first_rollouts_only(monkeypatch):
    monkeypatch.setattr(reverie.agents.mbpo, "U_METRIC_ROWS", 6)
    agent, stub, samples = stubbed("mbpo", rollout_batch=8, rollout_chunk=4,
                                   schedule=[0, 0, 2, 2])
    seen = []

    def disagreement(obs, action, generator):
        seen.append(obs.shape[0])
        return action.abs().sum(-1)

    stub.disagreement = disagreement
    metrics = agent.generate_rollouts()
    assert stub.calls == 4 and seen == [4, 4, 2, 2]  # rollouts 0-5 of 8, both steps
    tracked = [samples[0], samples[1], samples[2][:2], samples[3][:2]]
    u = sum(float(a.abs().sum()) for a in tracked) / 12
    assert metrics["model/rollout_uncertainty"] == pytest.approx(u)
    assert metrics["model/rollout_rows"] == 16.0

    real = agent_for(tiny("mbpo", rollout_batch=64, rollout_chunk=32))
    fill_real(real, 30)
    real.train_model()

    def every_elite(*args):
        raise AssertionError("mode mbpo ran every elite on every rollout row")

    real.model.rollout_step = every_elite
    metrics = real.generate_rollouts()
    assert metrics["model/rollout_rows"] >= 64 and metrics["model/rollout_uncertainty"] > 0


@pytest.mark.parametrize("mode", MODES)
def test_a_capped_model_fit_is_said_once_in_the_words_of_the_mode(mode):
    """A fit cut by max_epochs said its spread was "the uncertainty UP-MPC weighs" in plain
    MBPO too, which runs no UP-MPC."""
    agent = agent_for(tiny(mode, model=EnsembleConfig(members=3, elites=2, hidden=16,
                                                      layers=2, batch_size=32, max_epochs=1,
                                                      patience=5)))
    said: list[str] = []
    agent.note = said.append
    fill_real(agent, 64)
    agent.train_model()
    agent.train_model()
    capped = [s for s in said if "stopped at mbpo.model.max_epochs=1" in s]
    assert len(capped) == 1
    assert ("UP-MPC" in capped[0]) == (mode != "mbpo")


def test_rollouts_stop_where_the_model_predicts_termination():
    agent = agent_for(tiny(rollout_batch=64, rollout_chunk=64, schedule=[0, 0, 3, 3]))
    fill_real(agent, 30)
    agent.model = EndsWherePositive()
    metrics = agent.generate_rollouts()
    rows = agent.rollouts.rows()
    alive = int((rows["obs"][:64, 0] <= 0).sum())  # first step: every rollout
    assert len(agent.rollouts) == 64 + 2 * alive == metrics["model/rollout_rows"]
    assert torch.equal(rows["terminal"][:64], (rows["obs"][:64, 0] > 0).float())
    assert (rows["obs"][64:, 0] <= 0).all() and agent.model.calls == 3


@pytest.mark.parametrize("mode", ["mbpo", "coplanner"])
def test_a_termination_rule_ends_rollouts_on_the_predicted_next_state(mode):
    """MBPO ends Hopper's model rollouts with Hopper's rule on the sampled next state, not a
    head that predicts termination from (s, a): with `mbpo.termination` the learned head is
    ignored (here it says "never") and the rule decides, in the rollouts and in UP-MPC."""
    agent = agent_for(tiny(mode, termination="inverted_pendulum", rollout_batch=64,
                           rollout_chunk=64, schedule=[0, 0, 3, 3]))
    fill_real(agent, 30)
    agent.model = UncertainAboutBigActions()  # its head never predicts termination
    agent.generate_rollouts()
    rows = agent.rollouts.rows()
    ended = rows["next_obs"][:, 1].abs() > 0.2
    assert torch.equal(rows["terminal"], ended.float()) and ended.any() and not ended.all()
    first = rows["next_obs"][:64]  # the second step starts from the first one's survivors
    torch.testing.assert_close(rows["obs"][64:64 + int((first[:, 1].abs() <= 0.2).sum())],
                               first[first[:, 1].abs() <= 0.2], rtol=0, atol=0)
    _, _, _, term = agent._model_step(rows["obs"][:8], rows["action"][:8])  # UP-MPC's step
    assert term.dtype == torch.bool


def test_a_termination_rule_for_another_env_is_refused():
    section = OmegaConf.merge(OmegaConf.structured(MBPOConfig), {"termination": "hopper"})
    validate_config(section, run_cfg(env={"id": "Hopper-v5"}))
    with pytest.raises(ValueError, match=re.escape(
            "mbpo.termination=hopper is Hopper's rule, but the env is Walker2d-v5; set "
            "mbpo.termination=walker2d (or learned)")):
        validate_config(section, run_cfg(env={"id": "Walker2d-v5"}))
    with pytest.raises(ValueError, match=re.escape("the env is Pendulum-v1; set "
                                                   "mbpo.termination=learned")):
        validate_config(section, run_cfg(env={"id": "Pendulum-v1"}))
    with pytest.raises(ValueError, match="did you mean 'hopper'"):
        validate_config(OmegaConf.merge(section, {"termination": "hoper"}), run_cfg())
    # with the previous reward beside it, observation 0 is that reward, not the height: a
    # healthy hopper read as fallen, every rollout one step long
    with pytest.raises(ValueError, match="set env.prev_reward=false or mbpo.termination=learned"):
        validate_config(section, run_cfg(env={"id": "Hopper-v5", "prev_reward": True}))
    two = {"prev_reward": ((1,), "float32"), "vector": ((11,), "float32")}
    with pytest.raises(ValueError, match="set env.prev_reward=false or mbpo.termination=learned"):
        MBPOAgent(two, BOX, tiny(termination="hopper"), torch.device("cpu"), 0)


@pytest.mark.parametrize("mode", ["coplanner", "conservative"])
def test_acting_is_optimistic_upmpc_once_the_model_is_trained(mode):
    agent, stub, samples = stubbed(mode)
    obs = {"vector": np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)}
    first = np.zeros(6, bool)
    agent.act(obs, first, None, True)
    assert stub.calls == 0  # before the first fit: the plain policy
    agent.model_trained_at = 0
    samples.clear()
    action, _ = agent.act(obs, first, None, True)
    if mode == "conservative":
        assert stub.calls == 0
    else:
        k = agent.cfg.upmpc.candidates
        assert stub.calls == agent.cfg.upmpc.horizon
        candidates = samples[0].reshape(6, k, 1)
        boldest = candidates[torch.arange(6), discounted_abs(samples, 6, k).argmax(1)]
        np.testing.assert_array_equal(action, boldest.numpy())
    calls = stub.calls
    greedy, _ = agent.act(obs, first, None, False)  # evaluation: tanh(μ), no planning
    assert stub.calls == calls and greedy.dtype == np.float32 and greedy.shape == (6, 1)


# -- checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["mbpo", "coplanner"])
def test_state_dict_round_trip_mid_training_is_bit_exact(mode):
    env = make_env("Pendulum-v1")
    spec = make_obs_spec(env.observation_space)
    cfg = tiny(mode)
    a = MBPOAgent(spec, env.action_space, cfg, torch.device("cpu"), 0)
    state = {"step": 0, "episode": 0, "obs": None}
    drive(a, env, 25, state)  # mid-training: model fitted, rollouts in the buffer
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = MBPOAgent(spec, env.action_space, cfg, torch.device("cpu"), 123)  # other weights
    b.load_state_dict(torch.load(buf, weights_only=True))
    env_b, state_b = copy.deepcopy(env), copy.deepcopy(state)

    log_a: list = []
    log_b: list = []
    metrics_a = drive(a, env, 12, state, log_a)  # crosses a model refit at step 30
    metrics_b = drive(b, env_b, 12, state_b, log_b)
    assert any("upmpc/rollout_score" in m for m in metrics_a) == (mode == "coplanner")
    assert len(metrics_a) == 24 and metrics_a == metrics_b
    for x, y in zip(log_a, log_b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_and_round_trips_on_cuda():
    env = make_env("Pendulum-v1")
    spec = make_obs_spec(env.observation_space)
    a = MBPOAgent(spec, env.action_space, tiny("coplanner"), torch.device("cuda"), 0)
    metrics = drive(a, env, 30)
    assert metrics and all(math.isfinite(v) for row in metrics for v in row.values())
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = MBPOAgent(spec, env.action_space, tiny("coplanner"), torch.device("cuda"), 1)
    b.load_state_dict(torch.load(buf, weights_only=True))
    obs = {"vector": np.zeros((2, 3), np.float32)}
    assert np.array_equal(a.act(obs, np.zeros(2, bool), None, True)[0],
                          b.act(obs, np.zeros(2, bool), None, True)[0])


# -- config checks -----------------------------------------------------------------------------
def run_cfg(**sections):
    cfg = OmegaConf.create({"run": {"num_envs": 1}, "env": {"obs": "vector"}})
    return OmegaConf.merge(cfg, sections)


@pytest.mark.parametrize("change, fix", [
    ({"mode": "coplaner"}, "did you mean 'coplanner'"),
    ({"real_ratio": 1.5}, "mbpo.real_ratio must be in [0, 1]"),
    ({"schedule": [20, 150, 1]}, "4 integers"),
    ({"schedule": [150, 20, 1, 15]}, "min_epoch <= max_epoch"),
    ({"schedule": [20, 150, 0, 15]}, "1 <= min_len"),
    ({"upmpc": {"candidates": 0}}, "mbpo.upmpc.candidates must be >= 1"),
    ({"upmpc": {"horizon": 0}}, "mbpo.upmpc.horizon must be >= 1"),
    ({"upmpc": {"lambda_optimistic": -1.0}}, "got -1.0; COPlanner's MBPO setting is 1.0"),
    ({"updates_per_step": 0}, "mbpo.updates_per_step must be >= 1"),
    ({"warmup": 1}, "mbpo.warmup must be >= 2"),
    ({"model": {"elites": 9}}, "cannot exceed mbpo.model.members"),
])
def test_bad_config_names_the_fix(change, fix):
    section = OmegaConf.merge(OmegaConf.structured(MBPOConfig), change)
    with pytest.raises(ValueError, match=re.escape(fix)):
        validate_config(section, run_cfg())
    with pytest.raises(ValueError, match=re.escape(fix)):
        validate_config(section)  # the one-argument form of older config code


def test_run_settings_mbpo_cannot_use():
    section = OmegaConf.structured(MBPOConfig)
    validate_config(section, run_cfg())
    with pytest.raises(ValueError, match=re.escape("set run.num_envs=1")):
        validate_config(section, run_cfg(run={"num_envs": 4}))
    with pytest.raises(ValueError, match="env.obs=vector"):
        validate_config(section, run_cfg(env={"obs": "image"}))
    image = {"image": ((64, 64, 3), "uint8")}
    with pytest.raises(ValueError, match="state-based env"):
        MBPOAgent(image, BOX, tiny(), torch.device("cpu"), 0)
    with pytest.raises(ValueError, match="use the imagine agent"):
        MBPOAgent(SPEC, spaces.Discrete(3), tiny(), torch.device("cpu"), 0)
    with pytest.raises(ValueError, match="actions in \\[-1, 1\\]"):
        MBPOAgent(SPEC, spaces.Box(-2.0, 2.0, (1,), np.float32), tiny(), torch.device("cpu"), 0)


# -- through the driver ------------------------------------------------------------------------
TINY_RUN = [
    "run.prefill=40", "mbpo.warmup=40", "mbpo.updates_per_step=2", "mbpo.model_train_every=20",
    "mbpo.epoch_length=20", "mbpo.rollout_batch=32", "mbpo.model.members=3",
    "mbpo.model.elites=2", "mbpo.model.hidden=16", "mbpo.model.layers=2",
    "mbpo.model.max_epochs=3", "mbpo.sac.hidden=16", "mbpo.sac.batch_size=16",
    "run.eval_every=60", "run.eval_episodes=1", "run.log_every=20",
    "run.checkpoint_every=50", "run.threads=1",
]
TINY_ARGS = ["--preset", "mbpo-pendulum", "--no-progress",
             *(x for o in TINY_RUN for x in ("--set", o))]


@pytest.mark.parametrize("preset", ["mbpo-pendulum", "mbpo-inverted-pendulum", "mbpo-hopper",
                                    "mbpo-dmc"])
def test_presets_load_and_validate(preset):
    cfg = build_config(preset)
    assert cfg.agent == "mbpo" and cfg.run.num_envs == 1 and cfg.env.obs == "vector"
    assert cfg.mbpo.mode in MODES and cfg.mbpo.warmup == cfg.run.prefill
    # the MuJoCo tasks that end episodes end model rollouts by their own rule, as MBPO
    assert cfg.mbpo.termination == (rule_of_env(cfg.env.id) or "learned")


def test_runs_that_would_update_nothing_are_told_why():
    """Both holds on the first update are named: the prefill and mbpo's own warm-up (lowering
    the prefill alone, as the first note says, still trained nothing, silently)."""
    from reverie.config import training_notes

    notes = training_notes(build_config("mbpo-pendulum", [], {"steps": 300}))
    assert [n.split(":")[0] for n in notes] == ["run.steps=300 <= run.prefill=500",
                                                "run.steps=300 < mbpo.warmup=500"]
    (note,) = training_notes(build_config("mbpo-pendulum", ["run.prefill=100"], {"steps": 300}))
    assert note.endswith("raise --steps or lower mbpo.warmup (>= 2)")
    assert training_notes(build_config("mbpo-pendulum", [], {"steps": 600})) == []
    # the prefill lowered alone: training still starts at the warm-up, which is said
    (note,) = training_notes(build_config("mbpo-pendulum", ["run.prefill=200"], {"steps": 600}))
    assert note.startswith("mbpo.warmup=500 > run.prefill=200: the untrained policy acts from "
                           "env step 200") and note.endswith("set mbpo.warmup=200 to train "
                                                             "right after the prefill")
    # a warm-up already at its lowest (2) is not told to become what it is
    assert training_notes(build_config("mbpo-pendulum", ["run.prefill=1", "mbpo.warmup=2"],
                                       {"steps": 600})) == []
    # one UP-MPC candidate plans nothing, at the planner's cost (it was accepted in silence)
    (note,) = training_notes(build_config("mbpo-pendulum", ["mbpo.upmpc.candidates=1"],
                                          {"steps": 600}))
    assert note.startswith("mbpo.upmpc.candidates=1 with mbpo.mode=coplanner: UP-MPC's one "
                           "candidate is the policy's own action")
    assert training_notes(build_config("mbpo-pendulum", ["mbpo.upmpc.candidates=1",
                                                         "mbpo.mode=mbpo"], {"steps": 600})) == []


def test_keys_mbpo_never_reads_are_refused_on_resume_too():
    from reverie.config import apply_resume_overrides

    cfg = build_config("mbpo-pendulum")
    with pytest.raises(UserError, match="replay.capacity has no effect on agent mbpo"):
        apply_resume_overrides(cfg, ["replay.capacity=200000"])
    with pytest.raises(UserError, match="mbpo.updates_per_step SAC updates per env step"):
        build_config("mbpo-pendulum", ["run.train_ratio=8"])
    assert apply_resume_overrides(cfg, ["run.steps=9000"]).run.steps == 9000
    # the keys a resume may change, as listed to an mbpo run: not the replay it does not have
    with pytest.raises(UserError, match="keys that can: run.steps") as e:
        apply_resume_overrides(cfg, ["mbpo.warmup=5"])
    assert "replay.capacity" not in str(e.value) and str(e.value).count("run.") > 10


def test_bad_mode_on_the_command_line_is_a_one_line_user_error():
    with pytest.raises(UserError, match="did you mean 'coplanner'"):
        build_config("mbpo-pendulum", ["mbpo.mode=coplaner"])
    with pytest.raises(UserError, match="run.num_envs=1"):
        build_config("mbpo-pendulum", ["run.num_envs=2"])
    # null leaked OmegaConf's "Incompatible value 'None' for field of type 'str'"
    with pytest.raises(UserError, match=re.escape("bad value for 'mbpo.mode': null is not a "
                                                  "string; write e.g. mbpo.mode=")):
        build_config("mbpo-pendulum", ["mbpo.mode=null"])
    with pytest.raises(UserError, match=re.escape("'run.steps': null is not a whole number")):
        build_config("mbpo-pendulum", ["run.steps=~"])


def test_cli_train_end_to_end_then_load_and_act(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY_ARGS, "--steps", "80", "--set", "run.checkpoint_every=20",
                 "--out", str(run)]) == 0  # a checkpoint at each evaluation (60, 80)
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["grad_steps"] == (80 - 40 + 1) * 2  # G per env step from the warmup-th
    # the silent first fit is announced, and a fit cut by max_epochs (3 here) said once
    assert captured.err.count("reverie: mbpo: fitting the model on 40 real transitions") == 1
    assert captured.err.count("stopped at mbpo.model.max_epochs=3 before its holdout") == 1
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "sac/critic_loss" in r]
    assert trained and all(math.isfinite(v) for r in trained for v in r.values()
                           if isinstance(v, float))
    assert "upmpc/rollout_score" in trained[-1] and "upmpc/act_score" in trained[-1]
    # states are logged as they are at the row's step, not averaged over its window (a row
    # read 375.5 real transitions after 500 steps, and a blend of two fits' row counts)
    for r in trained:
        assert r["mbpo/real_buffer"] == r["step"]
        assert r["model/fit_rows"] == float(int(r["model/fit_rows"])) <= r["step"]
    policy = reverie.load(run)
    action, _ = policy.act({"vector": np.zeros(3, np.float32)})
    assert np.all(np.abs(action) <= 1.0)
    # best.pt holds what acting needs, not the two buffers; it acts as its agent did
    best = load_file(run / "checkpoints" / "best.pt")
    assert "real" not in best["agent"] and "rollouts" not in best["agent"]
    assert [r["step"] for r in rows if "eval/return" in r] == [60, 80]  # 80: the run's end
    entry = next(e for e in CheckpointStore(run / "checkpoints").entries()
                 if e.step == best["best"]["step"])
    of_step = reverie.load(run / "checkpoints" / entry.file)  # the same agent, in full
    for x in (np.ones(3, np.float32), np.linspace(-1, 1, 3, dtype=np.float32)):
        greedy, _ = reverie.load(run, best=True).act({"vector": x})
        np.testing.assert_array_equal(greedy, of_step.act({"vector": x})[0])
    assert main(["eval", str(run), "--best", "--episodes", "1"]) == 0
    capsys.readouterr()
    assert main(["watch", str(run), "--steps", "5"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["plot"] == []
    assert "agent mbpo has no latent world model: no real-vs-imagined view" in captured.err


def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    r = reverie_cli("train", *TINY_ARGS, "--steps", "120", "--out", str(ref))
    assert r.returncode == 0, r.stderr
    proc = reverie_cli("train", *TINY_ARGS, "--steps", "120", "--out", str(killed), wait=False)
    kill_when(proc, killed, 80)  # past the checkpoint at 50: model, buffers, SAC all live
    assert 40 < CheckpointStore(killed / "checkpoints").entries()[-1].step < 120
    r = reverie_cli("train", "--resume", str(killed), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (killed / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


def test_nan_rollback_keeps_real_data_and_the_update_schedule(tmp_path, monkeypatch):
    """A non-finite loss rolls mbpo back to its checkpoint at step 50; the env goes on, so the
    real transitions since stay and each later env step still earns G = 2 updates (a rolled
    back schedule paid the 30 steps since the checkpoint at once, and the real buffer lost
    them)."""
    from reverie.agents.mbpo import MBPOAgent
    from reverie.run.driver import Trainer

    real_update, steps = MBPOAgent.update, []

    def flaky(self, replay=None):
        steps.append(trainer.count.env_steps)
        metrics = real_update(self, replay)
        if trainer.count.env_steps == 80 and not trainer.count.nan_rollbacks:
            metrics["sac/critic_loss"] = float("nan")
        return metrics

    monkeypatch.setattr(MBPOAgent, "update", flaky)
    cfg = build_config("mbpo-pendulum", [*TINY_RUN, "run.eval_episodes=0"], {"steps": 100})
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.train()
    assert trainer.count.nan_rollbacks == 1
    per_step = {s: steps.count(s) for s in set(steps)}
    assert set(per_step) == set(range(40, 101)) and set(per_step.values()) == {2}
    assert len(trainer.agent.real) == 100 and trainer.agent.env_steps == 100


def test_default_run_folders_name_the_mbpo_mode_other_than_mbpo():
    """Two modes of one preset, env and seed are two runs: without --out the second went to
    the first's folder and was refused there."""
    from reverie.cli import _default_out

    def folder(preset: str, *sets: str) -> str:
        return str(_default_out(build_config(preset, list(sets), {})))

    assert folder("mbpo-pendulum") == "runs/Pendulum-v1-mbpo-coplanner-s0"
    assert folder("mbpo-pendulum", "mbpo.mode=mbpo") == "runs/Pendulum-v1-mbpo-s0"
    assert folder("mbpo-pendulum", "mbpo.mode=optimistic", "seed=3") == \
        "runs/Pendulum-v1-mbpo-optimistic-s3"
    assert folder("cartpole") == "runs/CartPole-v1-mamba2-s0"  # the other agents: as they were
    assert folder("popgym-ppo") == "runs/popgym-RepeatPreviousEasy-v0-rppo-ffm-s0"
