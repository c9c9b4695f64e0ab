"""Recurrent PPO agent: stored start states and sequences match what the policy saw, resume is
bit-identical mid-rollout, evaluation leaves the rollout alone, every action-space kind acts
and trains, config errors name the fix, and FFM memory learns a cue-recall task."""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from omegaconf import OmegaConf

from reverie.agents.rppo import RPPOAgent, RPPOConfig, validate_config
from reverie.behavior.ppo import gather_sequences, sequence_minibatches
from reverie.behavior.rollout import Rollout
from reverie.sequence import BACKBONES


class CueEnv(gym.Env):
    """A cue (one of `cues`) is shown at the first step, then blank observations, then a
    query flag after `delay` steps (delay drawn from [min_delay, max_delay] per episode).
    Only the action at the query is scored: +1 for naming the cue (Discrete; MultiDiscrete:
    its first component; Box: 1 − |a_0 − c| with c the cue mapped into [−1, 1]). The query
    step ends the episode: terminated, or truncated when `truncate` (a time limit)."""

    def __init__(self, cues=3, min_delay=2, max_delay=4, action="discrete", truncate=False):
        self.cues, self.min_delay, self.max_delay = cues, min_delay, max_delay
        self.truncate = truncate
        self.observation_space = spaces.Dict(
            {"vector": spaces.Box(-1.0, 1.0, (cues + 1,), np.float32)})
        self.action_space = {
            "discrete": spaces.Discrete(cues),
            "multidiscrete": spaces.MultiDiscrete([cues, 2]),
            "box": spaces.Box(-1.0, 1.0, (2,), np.float32),
        }[action]

    def _obs(self, cue: int | None, query: bool) -> dict[str, np.ndarray]:
        v = np.zeros(self.cues + 1, np.float32)
        if cue is not None:
            v[cue] = 1.0
        v[-1] = float(query)
        return {"vector": v}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cue = int(self.np_random.integers(self.cues))
        self.delay = int(self.np_random.integers(self.min_delay, self.max_delay + 1))
        self.t = 0
        return self._obs(self.cue, False), {}

    def step(self, action):
        if self.t < self.delay:
            self.t += 1
            return self._obs(None, self.t == self.delay), 0.0, False, False, {}
        a = np.asarray(action)
        if isinstance(self.action_space, spaces.Box):
            reward = 1.0 - abs(float(a[0]) - (2.0 * self.cue / (self.cues - 1) - 1.0))
        else:
            reward = float(int(a.reshape(-1)[0]) == self.cue)
        return self._obs(None, False), reward, not self.truncate, self.truncate, {}


@dataclass
class Transition:
    obs: dict
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    next_obs: dict
    first: np.ndarray


def stack(obs_list):
    return {k: np.stack([o[k] for o in obs_list]) for k in obs_list[0]}


class Collector:
    """A stand-in for the driver's vector-env collector: SAME_STEP autoreset, the final
    observation in next_obs where an episode ended."""

    def __init__(self, envs, agent, seed=0, amnesia=False):
        self.envs, self.amnesia = envs, amnesia  # amnesia: every step "starts an episode"
        self.obs = stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
        self.first = np.ones(len(envs), dtype=bool)
        self.state = agent.initial_state(len(envs))
        self.returns, self.running = [], np.zeros(len(envs))

    def act(self, agent):
        self.state_before, self.first_before = self.state, self.first
        self.action, self.next_state = agent.act(self.obs, self.first, self.state, True)
        return self.action

    def finish(self, agent):
        finals, resets, rew, term, trunc = [], [], [], [], []
        for i, env in enumerate(self.envs):
            o, r, te, tr, _ = env.step(self.action[i])
            finals.append(o)
            rew.append(r), term.append(te), trunc.append(tr)
            self.running[i] += r
            if te or tr:
                self.returns.append(self.running[i])
                self.running[i] = 0.0
                o, _ = env.reset()
            resets.append(o)
        ended = np.array(term) | np.array(trunc)
        agent.observe(Transition(self.obs, self.action, np.array(rew, np.float32),
                                 np.array(term), np.array(trunc), stack(finals), self.first))
        self.obs, self.first, self.state = stack(resets), ended | self.amnesia, self.next_state

    def step(self, agent):
        action = self.act(agent)
        self.finish(agent)
        return action


def small_cfg(**kw):
    base = dict(rollout_length=16, seq_len=8, epochs=2, num_minibatches=2, d_model=16,
                hidden=16, backbone="gru", lr=1e-3)
    base.update(kw)
    return RPPOConfig(**base)


def make_agent(cfg, action="discrete", seed=0, cues=3):
    env = CueEnv(cues=cues, action=action)
    spec = {"vector": ((cues + 1,), "float32")}
    return RPPOAgent(spec, env.action_space, cfg, "cpu", seed)


def make_envs(n, **kw):
    return [CueEnv(**kw) for _ in range(n)]


def run_rollout(agent, collector, steps):
    actions, metrics = [], []
    for _ in range(steps):
        actions.append(collector.step(agent))
        if agent.updates_due(0):
            metrics.append(agent.update(None))
    return actions, metrics


def assert_finite(metrics):
    assert metrics and all(np.isfinite(v) for v in metrics.values()), metrics


def same_state(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_sequences_replay_what_the_policy_saw(backbone):
    """Start states are the acting memory at t ≡ 0 (mod L) after the reset; each training
    sequence, unrolled in parallel from its start state with the first flags as resets,
    gives back the log-probs and values of acting (so no sequence mixes envs, and episode
    starts inside it reset the memory). Control: without the resets it does not."""
    kw = {"ffm": {"chunk_size": 4}, "mamba2": {"chunk_size": 4, "head_dim": 8}}.get(backbone, {})
    cfg = small_cfg(backbone=backbone, backbone_kwargs=kw, rollout_length=16, seq_len=8,
                    num_minibatches=3)
    agent = make_agent(cfg)
    col = Collector(make_envs(3, truncate=True, min_delay=1, max_delay=3), agent)
    firsts, expected_starts = [], {}
    for t in range(16):
        col.act(agent)
        if t % 8 == 0:
            expected_starts[t] = agent.net.backbone.reset_state(
                col.state_before["memory"], torch.as_tensor(col.first_before))
        firsts.append(col.first_before.copy())
        col.finish(agent)
    assert len(agent.rollout.start_memory) == 2
    for k, t in enumerate((0, 8)):
        assert same_state(agent.rollout.start_memory[k], expected_starts[t])
    r = agent.rollout.tensors()
    assert np.array_equal(r["first"].numpy(), np.array(firsts))
    assert r["first"][1:].any() and r["truncated"].any()  # episodes start inside sequences
    batch = sequence_minibatches(16, 3, 8, 1, np.random.default_rng(0))[0]
    starts = agent.rollout.start_states(batch)
    for b in range(len(batch.env)):  # sequence b starts from its env's stored state
        one = agent.rollout.start_memory[batch.start[b] // 8]
        assert same_state(tuple({k: v[b:b + 1] for k, v in layer.items()} for layer in starts),
                          tuple({k: v[batch.env[b]:batch.env[b] + 1] for k, v in layer.items()}
                                for layer in one))
    x, first = gather_sequences(r["x"], batch, 8), gather_sequences(r["first"], batch, 8)
    assert first[:, 1:].any()  # some episode starts inside a training sequence
    with torch.no_grad():
        h = agent.net.unroll(x, starts, first)
        logp = agent.net.policy(h).log_prob(gather_sequences(r["action"], batch, 8))
        value = agent.net.value(h)
        h_bad = agent.net.unroll(x, starts, torch.zeros_like(first))
    torch.testing.assert_close(logp, gather_sequences(r["logp"], batch, 8), atol=1e-4, rtol=0)
    torch.testing.assert_close(value, gather_sequences(r["value"], batch, 8), atol=1e-4, rtol=0)
    assert (agent.net.value(h_bad) - value).abs().max() > 1e-3
    assert agent.updates_due(16) == 1
    assert_finite(agent.update(None))
    assert agent.updates_due(16) == 0 and len(agent.rollout) == 0


def test_resume_mid_rollout_is_bit_identical():
    """Checkpoint between act and observe, 10 steps into the second rollout; the loaded
    agent (built with another seed) acts and trains exactly like the original."""
    cfg = small_cfg(backbone="ffm", backbone_kwargs={"chunk_size": 4})
    a = make_agent(cfg, seed=0)
    col_a = Collector(make_envs(2, truncate=True), a)
    run_rollout(a, col_a, 26)
    col_a.act(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make_agent(cfg, seed=123)
    b.load_state_dict(torch.load(buf, weights_only=True))
    col_b = copy.deepcopy(col_a)
    col_a.finish(a)
    col_b.finish(b)
    acts_a, met_a = run_rollout(a, col_a, 24)
    acts_b, met_b = run_rollout(b, col_b, 24)
    assert all(np.array_equal(x, y) for x, y in zip(acts_a, acts_b))
    assert len(met_a) == len(met_b) == 2 and met_a == met_b


def test_evaluation_between_steps_leaves_the_rollout_alone():
    cfg = small_cfg()
    a, b = make_agent(cfg), make_agent(cfg)
    col_a, col_b = Collector(make_envs(2), a), Collector(make_envs(2), b)
    eval_env = CueEnv()
    eval_obs, _ = eval_env.reset(seed=7)
    eval_state, first = b.initial_state(1), np.array([True])
    acts_a, met_a, acts_b, met_b = [], [], [], []
    for _ in range(40):
        acts_a.append(col_a.step(a))
        col_b.act(b)
        action, eval_state = b.act(stack([eval_obs]), first, eval_state, False)
        eval_obs, _, te, tr, _ = eval_env.step(action[0])
        first = np.array([te or tr])
        if te or tr:
            eval_obs, _ = eval_env.reset()
        col_b.finish(b)
        acts_b.append(col_b.action)
        for agent, met in ((a, met_a), (b, met_b)):
            if agent.updates_due(0):
                met.append(agent.update(None))
    assert all(np.array_equal(x, y) for x, y in zip(acts_a, acts_b))
    assert len(met_a) == 2 and met_a == met_b


@pytest.mark.parametrize("kind", ["discrete", "multidiscrete", "box"])
def test_action_spaces_act_and_update(kind):
    cfg = small_cfg()
    agent = make_agent(cfg, action=kind)
    col = Collector(make_envs(2, action=kind, truncate=kind == "box"), agent)
    actions, metrics = run_rollout(agent, col, 16)
    a = np.stack(actions)
    if kind == "box":
        assert a.dtype == np.float32 and a.shape == (16, 2, 2)
        assert np.abs(a).max() <= 1.0
    else:
        assert a.dtype == np.int64
        assert a.shape == ((16, 2) if kind == "discrete" else (16, 2, 2))
    assert len(metrics) == 1 and len(agent.rollout) == 0  # the update cleared the rollout
    assert_finite(metrics[0])
    for key in ("ppo/policy_loss", "ppo/value_loss", "ppo/entropy", "ppo/approx_kl",
                "ppo/clip_fraction", "ppo/explained_variance"):
        assert key in metrics[0]
    assert metrics[0]["ppo/minibatch_steps"] == cfg.epochs * cfg.num_minibatches == 4


def test_box_log_prob_is_of_the_unclipped_sample():
    agent = make_agent(small_cfg(), action="box")
    with torch.no_grad():
        agent.net.action_head.log_std.fill_(1.0)  # σ = e: most samples leave [-1, 1]
    col = Collector(make_envs(2, action="box"), agent)
    col.act(agent)
    raw = agent._pending["action"]
    assert raw.abs().max() > 1.0
    assert np.array_equal(col.action, raw.clamp(-1, 1).numpy())


def test_rollout_stores_start_states_exactly_at_sequence_starts():
    ro, state = Rollout(4, 2), ({"h": torch.zeros(3, 2)},)
    step = {"reward": torch.zeros(3)}
    with pytest.raises(ValueError, match="t ≡ 0 mod 2"):
        ro.add(step)
    ro.add(step, state)
    with pytest.raises(ValueError, match="and only there"):
        ro.add(step, state)
    ro.add(step)
    ro.add(step, ({"h": torch.ones(3, 2)},))
    ro.add(step)
    assert ro.full and ro.tensors()["reward"].shape == (4, 3)
    with pytest.raises(RuntimeError, match="update first"):
        ro.add(step)
    batch = sequence_minibatches(4, 3, 2, 1, np.random.default_rng(0))[0]
    h = ro.start_states(batch)[0]["h"]
    assert torch.equal(h[:, 0], torch.as_tensor(batch.start // 2, dtype=torch.float32))


def test_config_errors_name_the_fix():
    validate_config(OmegaConf.structured(RPPOConfig()),
                    OmegaConf.create({"run": {"prefill": 0}}))  # defaults, run.num_envs 1
    run = OmegaConf.create({"run": {"num_envs": 3, "prefill": 0}})
    section = OmegaConf.structured(small_cfg(rollout_length=16, seq_len=8, num_minibatches=3))
    validate_config(section, run)  # 3·16/8 = 6 sequences, 3 minibatches
    with pytest.raises(ValueError, match="run.prefill=0"):
        validate_config(section, OmegaConf.create({"run": {"num_envs": 3, "prefill": 500}}))
    with pytest.raises(ValueError, match="divisor of 4"):
        validate_config(section, OmegaConf.create({"run": {"num_envs": 2, "prefill": 0}}))
    with pytest.raises(ValueError, match="divisor of 4"):  # N learnt at the first rollout step
        agent = make_agent(small_cfg(num_minibatches=3))
        Collector(make_envs(2), agent).act(agent)
    with pytest.raises(ValueError, match="use a state-based env, flatten them with a Gym"):
        RPPOAgent({"image": ((64, 64, 3), "uint8")}, spaces.Discrete(2), small_cfg(), "cpu", 0)
    with pytest.raises(ValueError, match="RescaleAction"):
        RPPOAgent({"vector": ((4,), "float32")}, spaces.Box(0.0, 2.0, (2,)), small_cfg(), "cpu", 0)


def cue_recall_score(amnesia: bool) -> float:
    """Greedy mean return on 100 episodes after 10k env steps of rppo + ffm on CueEnv; with
    `amnesia` every step is flagged as an episode start, so the memory is wiped each step."""
    env_kw = dict(cues=3, min_delay=3, max_delay=5)
    # prev_action=False: otherwise a policy could carry the cue in its own action chain
    cfg = small_cfg(backbone="ffm", backbone_kwargs={"chunk_size": 16}, rollout_length=32,
                    seq_len=16, epochs=4, num_minibatches=2, d_model=32, hidden=32, lr=3e-3,
                    gamma=0.9, ent_coef=0.003, prev_action=False)
    agent = make_agent(cfg, cues=3)
    run_rollout(agent, Collector(make_envs(8, **env_kw), agent, amnesia=amnesia), 32 * 40)
    eval_env, returns = CueEnv(**env_kw), []
    for ep in range(100):
        obs, _ = eval_env.reset(seed=20_000 + ep)
        state, first, done, total = agent.initial_state(1), np.array([True]), False, 0.0
        while not done:
            action, state = agent.act(stack([obs]), first, state, False)
            obs, r, te, tr, _ = eval_env.step(action[0])
            total, done, first = total + r, te or tr, np.array([amnesia])
        returns.append(total)
    return float(np.mean(returns))


def test_ffm_memory_learns_cue_recall():
    """The cue is only visible at the first step and must be named 3–5 steps later: the
    greedy policy must score far above the random policy (measured here, ~1/3); the same run
    with the memory wiped every step stays near it (the task needs memory)."""
    rng, env, random_returns = np.random.default_rng(0), CueEnv(cues=3, min_delay=3,
                                                                max_delay=5), []
    for ep in range(300):
        env.reset(seed=10_000 + ep)
        done, total = False, 0.0
        while not done:
            _, r, te, tr, _ = env.step(rng.integers(3))
            total, done = total + r, te or tr
        random_returns.append(total)
    random_level = float(np.mean(random_returns))
    assert abs(random_level - 1 / 3) < 0.07
    score = cue_recall_score(amnesia=False)
    assert score > random_level + 0.4, (score, random_level)
    control = cue_recall_score(amnesia=True)
    assert control < random_level + 0.2, (control, random_level)


@pytest.mark.parametrize("env_id", ["popgym-RepeatFirstEasy-v0", "popgym-BattleshipEasy-v0"])
def test_popgym_rollout_and_update(env_id):
    """Real POPGym envs through make_env (Discrete and MultiDiscrete actions)."""
    pytest.importorskip("popgym", reason="needs the popgym extra (make test installs it)")
    from reverie.envs import make_env
    from reverie.envs.wrappers import make_obs_spec

    envs = [make_env(env_id) for _ in range(2)]
    agent = RPPOAgent(make_obs_spec(envs[0].observation_space), envs[0].action_space,
                      small_cfg(backbone="ffm", backbone_kwargs={"chunk_size": 8}), "cpu", 0)
    actions, metrics = run_rollout(agent, Collector(envs, agent), 16)
    assert all(envs[0].action_space.contains(a[0]) for a in actions)
    assert len(metrics) == 1
    assert_finite(metrics[0])


def test_a_run_shorter_than_one_rollout_is_told_it_updates_nothing():
    from reverie.config import build_config, training_notes

    short = build_config("popgym-ppo", [], {"steps": 304})
    (note,) = training_notes(short)
    assert "shorter than one rollout" in note and "= 2048 env steps" in note
    assert training_notes(build_config("popgym-ppo", [], {"steps": 2048})) == []
    (note,) = training_notes(build_config("popgym-ppo", [], {"steps": 2050}))
    assert note.endswith("(all envs step together): the run ends at 2064 env steps")
    assert training_notes(build_config("popgym-ppo", ["run.num_envs=2"], {"steps": 300})) == []
