"""COPlanner in the imagination agent: disagreement heads, conservative imagination,
optimistic acting, config checks, checkpoints, every backbone."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import Tensor

from reverie.agents.coplanner import CoplannerConfig
from reverie.agents.imagine import ImagineAgent, ImagineConfig, validate_config
from reverie.behavior.actor_critic import ActorCriticConfig
from reverie.config import build_config, to_object
from reverie.errors import UserError
from reverie.sequence import BACKBONES
from reverie.world.disagreement import DisagreementHeads, transition_pairs
from reverie.world.latent import WorldModelConfig
from test_imagine_agent import OBS_SPEC, SPACES, FakeReplay, random_obs, tiny_config

CPU = torch.device("cpu")


def make_agent(kind: str, seed: int = 0, mode: str = "coplanner", **cop) -> ImagineAgent:
    kw = dict(mode=mode, heads=4, head_hidden=16, head_layers=1, candidates=2, horizon=2)
    kw.update(cop)
    cfg = tiny_config(coplanner=CoplannerConfig(**kw))
    return ImagineAgent(OBS_SPEC, SPACES[kind], cfg, CPU, seed)


# -- the disagreement heads ---------------------------------------------------------------
def per_head_reference(heads: DisagreementHeads, x: Tensor, e: int) -> Tensor:
    """Head e alone, layer by layer with F.linear / F.layer_norm: [N, in] -> [N, S, C]."""
    y = x
    for i, w in enumerate(heads.weights):
        y = F.linear(y, w[e].T)
        if i < heads.n_hidden:
            y = F.layer_norm(y, y.shape[-1:], heads.norm_weights[i][e, 0],
                             heads.norm_biases[i][e, 0])
            y = F.silu(y)
    y = y + heads.out_bias[e, 0]
    return y.reshape(*x.shape[:-1], heads.stoch, heads.classes)


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_batched_heads_equal_per_head_loop(layers):
    torch.manual_seed(0)
    heads = DisagreementHeads(7, 3, 4, heads=5, hidden=6, layers=layers)
    with torch.no_grad():  # non-trivial norm parameters, so their indexing is checked too
        for p in list(heads.norm_weights) + list(heads.norm_biases):
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 3, 7)
    out = heads(x)
    assert out.shape == (5, 2, 3, 3, 4)
    for e in range(5):
        ref = per_head_reference(heads, x.reshape(-1, 7), e).reshape(2, 3, 3, 4)
        torch.testing.assert_close(out[e], ref, atol=1e-5, rtol=1e-5)


def test_identical_heads_have_zero_disagreement():
    torch.manual_seed(0)
    heads = DisagreementHeads(6, 2, 3, heads=4, hidden=8, layers=2)
    x = torch.randn(10, 6)
    assert heads.disagreement(x).min() > 1e-4  # independently initialised: they disagree
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(p[:1].expand_as(p))
    u = heads.disagreement(x)
    assert u.shape == (10,)
    assert u.abs().max() < 1e-7


def test_disagreement_hand_computed():
    """Two heads, zero weights: each predicts softmax(out_bias) whatever the input.
    Variable 0: head 0 says (1/2, 1/2), head 1 (3/4, 1/4) -> population std 1/8 per class;
    variable 1: both say (1/2, 1/2) -> 0. u = (1/8 + 1/8 + 0 + 0) / 4 = 1/16."""
    heads = DisagreementHeads(3, 2, 2, heads=2, hidden=4, layers=1)
    with torch.no_grad():
        for p in heads.parameters():
            p.zero_()
        heads.out_bias[1, 0, 0] = math.log(3.0)
    u = heads.disagreement(torch.randn(5, 3))
    torch.testing.assert_close(u, torch.full((5,), 1 / 16), atol=1e-7, rtol=0)


def test_transition_pairs_index_and_mask():
    """B=1, T=4 with an episode start at t=2: pairs (t -> t+1) for t = 0, 1, 2."""
    T = 4
    z = torch.arange(T, dtype=torch.float32).reshape(1, T, 1)
    h = 10 + torch.arange(T, dtype=torch.float32).reshape(1, T, 1)
    post = torch.zeros(1, T, 1, 2)
    post[0, :, 0, 0] = torch.arange(T, dtype=torch.float32)
    action = 100 + torch.arange(T, dtype=torch.float32).reshape(1, T, 1)
    reset = torch.tensor([[False, False, True, False]])
    z_t, h_prev, a_t, target, mask = transition_pairs(z, h, post, action, reset)
    assert z_t.flatten().tolist() == [0, 1, 2]
    assert a_t.flatten().tolist() == [100, 101, 102]
    # h_{-1} = 0; h_0 before step 1; step 2 opens an episode, so no history reaches it
    assert h_prev.flatten().tolist() == [0, 10, 0]
    torch.testing.assert_close(target, torch.softmax(post[0, 1:], -1))
    assert mask.tolist() == [1.0, 0.0, 1.0]  # pair 1 -> 2 crosses the episode start


def test_heads_loss_decreases_and_seen_inputs_agree_more():
    """Fixed synthetic transitions whose next latent depends on the action; 150 Adam steps."""
    g = torch.Generator().manual_seed(0)
    N, S, C, D = 64, 2, 3, 8
    x = torch.randn(N, D, generator=g)
    target = torch.softmax(3 * torch.randn(N, S, C, generator=g), -1)
    mask = torch.ones(N)
    torch.manual_seed(0)
    heads = DisagreementHeads(D, S, C, heads=4, hidden=32, layers=1)
    opt = torch.optim.Adam(heads.parameters(), lr=1e-2)
    first = heads.loss(x, target, mask).detach()
    for _ in range(150):
        loss = heads.loss(x, target, mask)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    last = heads.loss(x, target, mask).detach()
    assert torch.all(last < 0.8 * first), (first, last)
    # the irreducible part is the targets' entropy; every head got within 0.05 nat of it
    entropy = -(target * target.log()).sum(-1).mean()
    assert torch.all(last - entropy < 0.05), (last, entropy)
    # Plan2Explore's premise: heads agree where they were trained, not far from it
    far = 4 * torch.randn(N, D, generator=g)
    assert heads.disagreement(x).mean() < 0.5 * heads.disagreement(far).mean()
    masked = heads.loss(x, target, torch.zeros(N))  # no valid pair: zero, not NaN
    assert torch.all(masked == 0)


# -- the agent ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["discrete", "continuous"])
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_one_candidate_conservative_imagination_is_the_plain_actor(kind, lam):
    """K = 1: the planner's pick is the actor's sample and its lookahead draws come from a
    forked stream, so the trajectory equals the plain actor's draw for draw."""
    plain = make_agent(kind, mode="off")
    planned = make_agent(kind, mode="conservative", candidates=1, horizon=2,
                         lambda_conservative=lam)
    for p, q in zip(plain.behavior.parameters(), planned.behavior.parameters()):
        assert torch.equal(p, q)  # the heads are built after the rest: same init
    ctx = FakeReplay(SPACES[kind], seed=3).sample(8, 4)
    torch.manual_seed(1)
    a = plain.imagine(ctx)
    after_plain = torch.rand(3)
    torch.manual_seed(1)
    b = planned.imagine(ctx)
    assert torch.equal(torch.rand(3), after_plain)  # the main stream advanced alike
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # control: with K = 4 the planner does change the trajectory
    planned.coplanner.upmpc.candidates = 4
    torch.manual_seed(1)
    c = planned.imagine(ctx)
    assert not torch.equal(a["action"], c["action"])


def test_conservative_and_optimistic_pick_opposite_candidates():
    """Hand-set model: reward 0 everywhere, u = the discrete action's index. Conservative
    must take each row's smallest candidate, optimistic its largest."""
    agent = make_agent("discrete", candidates=8, horizon=1)
    agent.world.reward = lambda h: torch.zeros(h.shape[:-1])
    agent.coplanner.uncertainty = lambda z, h_prev, action: action.float()
    n = 16
    z = agent.world.sample(agent.world.encode({"vector": torch.randn(n, 5)}))
    h_prev = torch.randn(n, agent.world.deter_dim)
    state = agent.world.initial_state(n)
    torch.manual_seed(0)
    cons = agent.coplanner.plan(z, h_prev, state, "conservative")
    torch.manual_seed(0)
    opt = agent.coplanner.plan(z, h_prev, state, "optimistic")
    assert torch.equal(cons.candidates, opt.candidates)  # same draws, only the sign differs
    assert torch.equal(cons.action, cons.candidates.min(1).values)
    assert torch.equal(opt.action, opt.candidates.max(1).values)
    assert (cons.action != opt.action).sum() >= n // 2
    assert cons.model_steps == n * 8 * 1


def test_metrics_count_model_steps_and_are_finite():
    agent = make_agent("continuous", candidates=3, horizon=2)
    replay = FakeReplay(SPACES["continuous"])
    state = agent.initial_state(5)
    for _ in range(2):
        _, state = agent.act(random_obs(5, 0), np.ones(5, bool), state, True)
    _, state = agent.act(random_obs(5, 0), np.zeros(5, bool), state, False)  # greedy: no plan
    metrics = agent.update(replay)
    assert all(math.isfinite(v) for v in metrics.values())
    imag_batch, horizon = 8, 4
    assert metrics["coplanner/model_steps"] == imag_batch * horizon * 3 * 2
    assert metrics["coplanner/act_model_steps"] == 2 * 5 * 3 * 2
    assert metrics["coplanner/u_mean"] > 0
    metrics = agent.update(replay)  # the counters restart after each update
    assert metrics["coplanner/act_model_steps"] == 0


def test_greedy_acting_is_unchanged_and_exploring_plans():
    plain = make_agent("discrete", mode="off")
    opti = make_agent("discrete", mode="optimistic", candidates=4, horizon=2)
    obs, first = random_obs(6, 2), np.ones(6, bool)
    a1, s1 = plain.act(obs, first, plain.initial_state(6), False)
    a2, s2 = opti.act(obs, first, opti.initial_state(6), False)
    assert np.array_equal(a1, a2) and torch.equal(s1[1], s2[1])
    assert opti.coplanner.act_model_steps == 0
    torch.manual_seed(0)
    action, _ = opti.act(obs, first, opti.initial_state(6), True)
    assert opti.coplanner.act_model_steps == 6 * 4 * 2
    assert action.shape == (6,) and all(SPACES["discrete"].contains(a) for a in action)


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_state_dict_round_trip_resumes_bit_exact(kind):
    torch.manual_seed(0)
    agent = make_agent(kind)
    agent.update(FakeReplay(SPACES[kind], seed=1))
    agent.act(random_obs(3, 0), np.ones(3, bool), agent.initial_state(3), True)
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    buf.seek(0)
    loaded = make_agent(kind, seed=123)
    loaded.load_state_dict(torch.load(buf, weights_only=True))
    for p, q in zip(agent.coplanner.heads.parameters(), loaded.coplanner.heads.parameters()):
        assert torch.equal(p, q)
    obs, first = random_obs(4, 7), np.ones(4, bool)
    torch.manual_seed(3)
    a1, _ = agent.act(obs, first, agent.initial_state(4), True)
    torch.manual_seed(3)
    a2, _ = loaded.act(obs, first, loaded.initial_state(4), True)
    assert np.array_equal(a1, a2)
    torch.manual_seed(5)
    m1 = agent.update(FakeReplay(SPACES[kind], seed=2))
    torch.manual_seed(5)
    m2 = loaded.update(FakeReplay(SPACES[kind], seed=2))
    assert m1 == m2  # includes the heads' loss (their Adam moments came along)
    for p, q in zip(agent.coplanner.heads.parameters(), loaded.coplanner.heads.parameters()):
        assert torch.equal(p, q)
    off = make_agent(kind, mode="off")
    with pytest.raises(ValueError, match="coplanner.mode"):
        off.load_state_dict(agent.state_dict())


# -- every backbone -----------------------------------------------------------------------
TINY_BACKBONE = {
    "gru": {},
    "transformer": {"n_heads": 2, "context": 8},
    "mamba1": {"d_state": 4},
    "mamba2": {"d_state": 4, "head_dim": 8, "chunk_size": 4},
    "ffm": {"memory_size": 4, "context_size": 2, "chunk_size": 4},
}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_updates_and_acts_in_every_mode(backbone):
    world = WorldModelConfig(backbone=backbone, d_model=16, n_layers=1, stoch=4, classes=4,
                             hidden=16, mlp_layers=1, reward_bins=11,
                             backbone_kwargs=TINY_BACKBONE[backbone])
    behavior = ActorCriticConfig(actor_hidden=16, actor_layers=1, critic_hidden=16,
                                 critic_layers=1, value_bins=11)
    for mode in ("conservative", "optimistic", "coplanner"):
        cop = CoplannerConfig(mode=mode, heads=3, head_hidden=8, head_layers=1, candidates=2,
                              horizon=2)
        cfg = ImagineConfig(world=world, behavior=behavior, batch_size=2, seq_len=6,
                            imag_batch=4, context=3, horizon=3, coplanner=cop)
        torch.manual_seed(0)
        agent = ImagineAgent(OBS_SPEC, SPACES["discrete"], cfg, CPU, 0)
        metrics = agent.update(FakeReplay(SPACES["discrete"]))
        assert all(math.isfinite(v) for v in metrics.values()), (mode, metrics)
        assert metrics["coplanner/model_steps"] == (4 * 3 * 2 * 2
                                                    if mode != "optimistic" else 0)
        state = agent.initial_state(3)
        for explore in (True, False):
            action, state = agent.act(random_obs(3, 1), np.ones(3, bool), state, explore)
            assert action.shape == (3,)
        assert agent.coplanner.act_model_steps == (3 * 2 * 2 if mode != "conservative" else 0)


# -- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("override,needle", [
    ("imagine.coplanner.mode=conservatve", "did you mean 'conservative'"),
    ("imagine.coplanner.heads=1", "imagine.coplanner.heads must be >= 2"),
    ("imagine.coplanner.candidates=0",
     "imagine.coplanner.candidates must be >= 1, got 0; the default is 4"),
    ("imagine.coplanner.lambda_optimistic=-1", "imagine.coplanner.lambda_optimistic"),
    ("imagine.coplanner.gamma_reward=1.5", "imagine.coplanner.gamma_reward must be in (0, 1]"),
    ("imagine.coplanner.lr=0", "imagine.coplanner.lr must be positive"),
])
def test_bad_config_is_a_one_line_user_error(override, needle):
    with pytest.raises(UserError) as e:
        build_config("cartpole", [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_config_defaults_and_direct_construction():
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(ImagineConfig)
    cop = cfg.coplanner
    assert (cop.mode, cop.heads, cop.candidates, cop.horizon) == ("off", 8, 4, 4)
    assert cop.lambda_conservative == cop.lambda_optimistic == 0.5
    assert cop.gamma_reward is None  # the behaviour's gamma
    validate_config(cfg)
    built = build_config("cartpole", ["imagine.coplanner.mode=coplanner"])
    assert built.imagine.coplanner.mode == "coplanner"
    # YAML 1.1 reads a bare `off` as false; it must still mean off
    off = to_object(build_config("cartpole", ["imagine.coplanner.mode=off"]), "imagine")
    off.world, off.behavior = tiny_config().world, tiny_config().behavior
    assert ImagineAgent(OBS_SPEC, SPACES["discrete"], off, CPU, 0).coplanner is None
    agent = make_agent("discrete", gamma_uncertainty=0.9)
    assert agent.coplanner.upmpc.gamma_reward == agent.cfg.behavior.gamma
    assert agent.coplanner.upmpc.gamma_uncertainty == 0.9
    with pytest.raises(ValueError, match="did you mean 'optimistic'"):
        make_agent("discrete", mode="optimstic")
    assert make_agent("discrete", mode="off").coplanner is None


def test_continuous_planner_clips_actions_for_the_model():
    agent = make_agent("continuous")
    raw = torch.tensor([[-3.0, 0.5], [2.0, -0.25]])
    assert torch.equal(agent.coplanner.env_action(raw),
                       torch.tensor([[-1.0, 0.5], [1.0, -0.25]]))
    assert isinstance(SPACES["continuous"], spaces.Box)


def test_mode_off_is_one_spelling_in_new_and_saved_configs():
    """A bare `off` is YAML's false (stored as 'False'); configs say 'off' either way, so a
    report groups runs set with `mode=off` and with the default together."""
    from reverie.config import build_config, config_yaml, parse_run_config

    cfg = build_config("cartpole", ["imagine.coplanner.mode=off"])
    assert cfg.imagine.coplanner.mode == "off"
    text = config_yaml(cfg).replace("mode: 'off'", "mode: 'False'").replace("mode: off",
                                                                             "mode: 'False'")
    assert "mode: 'False'" in text  # as runs saved before the spelling was made canonical
    assert parse_run_config(text, "run").imagine.coplanner.mode == "off"
    assert build_config("cartpole", ["imagine.coplanner.mode=optimistic"]) \
        .imagine.coplanner.mode == "optimistic"
