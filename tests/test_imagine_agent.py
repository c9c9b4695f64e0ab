"""The world-model agent: update, act, resets, checkpoints (tiny GRU world model)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from reverie.agents.imagine import ImagineAgent, ImagineConfig
from reverie.behavior.actor_critic import ActorCriticConfig
from reverie.world.latent import WorldModelConfig

OBS_SPEC = {"vector": ((5,), "float32")}
SPACES = {"discrete": spaces.Discrete(3), "continuous": spaces.Box(-1.0, 1.0, (2,), np.float32)}




class FakeReplay:
    """Random [B, T] sequences in the replay's batch format, with some episode starts."""

    def __init__(self, space: spaces.Space, seed: int = 0) -> None:
        self.space = space
        self.g = torch.Generator().manual_seed(seed)
        self.calls: list[tuple[int, int, str]] = []

    def sample(self, batch_size: int, seq_len: int, purpose: str = "train") -> dict:
        self.calls.append((batch_size, seq_len, purpose))
        B, T, g = batch_size, seq_len, self.g
        if isinstance(self.space, spaces.Discrete):
            action = torch.randint(0, int(self.space.n), (B, T), generator=g)
        else:
            action = torch.rand(B, T, self.space.shape[0], generator=g) * 2 - 1
        return {
            "vector": torch.randn(B, T, 5, generator=g),
            "action": action,
            "reward": torch.randn(B, T, generator=g),
            "terminal": torch.rand(B, T, generator=g) < 0.1,
            "reset": torch.rand(B, T, generator=g) < 0.1,
        }


def tiny_config(**over) -> ImagineConfig:
    world = WorldModelConfig(backbone="gru", d_model=32, n_layers=1, stoch=4, classes=4,
                             hidden=32, mlp_layers=1, reward_bins=21)
    behavior = ActorCriticConfig(actor_hidden=32, actor_layers=2, critic_hidden=32,
                                 critic_layers=2, value_bins=21)
    kw = dict(world=world, behavior=behavior, batch_size=4, seq_len=8, imag_batch=8,
              context=4, horizon=4)
    kw.update(over)
    return ImagineConfig(**kw)


def make_agent(kind: str, seed: int = 0, **over) -> ImagineAgent:
    return ImagineAgent(OBS_SPEC, SPACES[kind], tiny_config(**over), torch.device("cpu"), seed)


def random_obs(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"vector": np.random.default_rng(seed).normal(size=(n, 5)).astype(np.float32)}


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_update_runs_and_returns_finite_metrics(kind):
    torch.manual_seed(0)
    agent = make_agent(kind)
    replay = FakeReplay(SPACES[kind])
    before = [p.clone() for p in agent.behavior.actor.parameters()]
    for _ in range(2):
        metrics = agent.update(replay)
    assert replay.calls == [(4, 8, "train"), (8, 4, "imagine")] * 2
    for key in ("wm/loss", "wm/recon", "wm/kl_dyn", "ac/actor_loss", "ac/critic_loss",
                "ac/entropy", "imag/return", "ac/return_scale"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["ac/return_scale"] >= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.behavior.actor.parameters()))


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_act_returns_valid_actions(kind):
    torch.manual_seed(0)
    agent = make_agent(kind)
    space = SPACES[kind]
    state = agent.initial_state(6)
    first = np.ones(6, dtype=bool)
    for explore in (True, False):
        for _ in range(3):
            action, state = agent.act(random_obs(6, 1), first, state, explore)
            first = np.zeros(6, dtype=bool)
            if kind == "discrete":
                assert action.shape == (6,) and action.dtype == np.int64
            else:
                assert action.shape == (6, 2) and action.dtype == np.float32
            assert all(space.contains(a) for a in action)


def _latents_by_mode(world) -> None:
    """The world model's samples (and their one-hot columns) become the mode."""
    from reverie.nets.onehot import onehot_rows

    def mode(logits):
        idx = logits.argmax(-1)
        return (torch.nn.functional.one_hot(idx, world.classes).flatten(-2).float(),
                onehot_rows(idx, world.classes))

    world.sample_index = mode


def test_imagine_shapes_and_reset_at_last_context_step():
    """A context whose last step starts an episode imagines exactly as a 1-step context."""
    torch.manual_seed(0)
    agent = make_agent("discrete")
    # Latents by their mode, so both runs draw the same random numbers (only the actor's).
    _latents_by_mode(agent.world)
    ctx = FakeReplay(SPACES["discrete"], seed=3).sample(8, 4)
    ctx["reset"][:, -1] = True
    torch.manual_seed(1)
    traj = agent.imagine(ctx)
    H, B, F = 4, 8, agent.world.feat_dim
    assert traj["feat"].shape == (H + 1, B, F)
    assert traj["action"].shape == (H, B)
    assert traj["reward"].shape == (H, B) and traj["cont"].shape == (H, B)
    assert torch.all(traj["feat"][0, :, agent.world.stoch_dim:] == 0)  # h_{-1} was reset
    torch.manual_seed(1)
    short = agent.imagine({k: v[:, -1:] for k, v in ctx.items()})
    for k in traj:
        assert torch.allclose(traj[k], short[k], atol=1e-6), k
    # without the reset the context reaches the first imagined state
    ctx["reset"][:, -1] = False
    torch.manual_seed(1)
    assert not torch.allclose(agent.imagine(ctx)["feat"][0], traj["feat"][0])


def test_first_resets_the_acting_state():
    torch.manual_seed(0)
    agent = make_agent("continuous")
    state = agent.initial_state(2)
    first = np.array([True, True])
    for t in range(4):  # build up a non-trivial state
        _, state = agent.act(random_obs(2, t), first, state, True)
        first = np.array([False, False])
    obs = random_obs(2, 99)
    a_hist, s_hist = agent.act(obs, np.array([True, False]), state, False)
    a_new, s_new = agent.act(obs, np.array([True, True]), agent.initial_state(2), False)
    assert np.allclose(a_hist[0], a_new[0], atol=1e-6)
    assert torch.allclose(s_hist[1][0], s_new[1][0], atol=1e-6)
    # row 1 kept its history, so it must differ (otherwise this test could not fail)
    assert not torch.allclose(s_hist[1][1], s_new[1][1], atol=1e-4)


@pytest.mark.parametrize("kind,optimizer", [("discrete", "adam"), ("continuous", "adam"),
                                            ("discrete", "laprop")])
def test_state_dict_round_trip(kind, optimizer):
    def build(seed: int) -> ImagineAgent:
        cfg = tiny_config(world_optimizer=optimizer)
        cfg.behavior.optimizer = optimizer
        return ImagineAgent(OBS_SPEC, SPACES[kind], cfg, torch.device("cpu"), seed)

    torch.manual_seed(0)
    agent = build(0)
    assert type(agent.world_opt).__name__.lower() == optimizer
    assert type(agent.behavior.actor_opt).__name__.lower() == optimizer
    agent.update(FakeReplay(SPACES[kind], seed=1))
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    buf.seek(0)
    loaded = build(123)
    loaded.load_state_dict(torch.load(buf, weights_only=True))
    assert loaded.updates == 1
    assert torch.equal(loaded.behavior.return_norm.ema, agent.behavior.return_norm.ema)

    obs, first = random_obs(5, 7), np.ones(5, dtype=bool)
    a1, _ = agent.act(obs, first, agent.initial_state(5), False)
    a2, _ = loaded.act(obs, first, loaded.initial_state(5), False)
    assert np.array_equal(a1, a2)
    # optimiser moments, slow critic and normaliser came along: the next update matches too
    torch.manual_seed(5)
    m1 = agent.update(FakeReplay(SPACES[kind], seed=2))
    torch.manual_seed(5)
    m2 = loaded.update(FakeReplay(SPACES[kind], seed=2))
    assert m1 == m2
    for p, q in zip(agent.behavior.parameters(), loaded.behavior.parameters()):
        assert torch.equal(p, q)


def test_bad_action_space_and_config_raise():
    with pytest.raises(ValueError, match="RescaleAction"):
        ImagineAgent(OBS_SPEC, spaces.Box(-2.0, 2.0, (2,)), tiny_config(),
                     torch.device("cpu"), 0)
    with pytest.raises(ValueError, match="horizon"):
        make_agent("discrete", horizon=0)


def test_config_is_an_omegaconf_schema_and_validates():
    from omegaconf import OmegaConf

    from reverie.agents.imagine import validate_config
    from reverie.errors import UserError

    cfg = OmegaConf.structured(ImagineConfig)
    assert cfg.behavior.gamma == 0.985 and cfg.horizon == 16 and cfg.context == 8
    validate_config(cfg)
    cfg.seq_len = 1
    with pytest.raises(UserError, match="seq_len"):
        validate_config(cfg)


@pytest.mark.parametrize("backbone", ["gru", "mamba2", "ffm"])
def test_acting_window_equals_rerunning_the_window_from_zero(backbone):
    """act_context=window: h_{t-1} for step t is the backbone's output after re-running the
    last W-1 steps' inputs from a zero state (through `forward`), nothing older."""
    world = WorldModelConfig(backbone=backbone, d_model=32, n_layers=1, stoch=4, classes=4,
                             hidden=32, mlp_layers=1, reward_bins=21)
    agent = make_agent("discrete", world=world, act_context="window", act_window=4)
    episode = make_agent("discrete", world=world)  # same seed: same weights
    torch.manual_seed(0)
    state, inputs, first = agent.initial_state(2), [], np.array([True, True])
    for t in range(7):
        obs = random_obs(2, t)
        if t == 5:
            first = np.array([False, True])  # row 1 starts a new episode at step 5
        window, count = state
        backbone_state, h_prev = agent._window_context(window, count.masked_fill(
            torch.as_tensor(first), 0))
        # reference: forward over the last (up to 3) inputs of the row's current episode
        for row in range(2):
            since = 5 if (row == 1 and t >= 5) else 0  # the row's episode start
            past = [x[row] for x in inputs[since:]][-3:]
            if not past:
                assert torch.all(h_prev[row] == 0)
                continue
            seq = torch.stack(past)[None]
            ref, _ = agent.world.backbone(seq, agent.world.initial_state(1), None)
            torch.testing.assert_close(h_prev[row], ref[0, -1], atol=1e-5, rtol=1e-5)
        action, state = agent.act(obs, first, state, explore=False)
        z = torch.nn.functional.one_hot(agent.world.encode(agent._obs(obs)).argmax(-1),
                                        agent.world.classes).flatten(-2).float()
        inputs.append(agent.world.backbone_input(z, torch.as_tensor(action)))
        first = np.array([False, False])
    assert episode.cfg.act_context == "episode"


def test_long_acting_window_matches_carrying_the_episode():
    """A window longer than the episode sees all of it: the same greedy actions as carrying
    the backbone state step by step (forward == step parity)."""
    carried = make_agent("discrete")
    windowed = make_agent("discrete", act_context="window", act_window=8)
    s1, s2 = carried.initial_state(3), windowed.initial_state(3)
    for t in range(7):
        obs, first = random_obs(3, 100 + t), np.array([t == 0] * 3)
        a1, s1 = carried.act(obs, first, s1, explore=False)
        a2, s2 = windowed.act(obs, first, s2, explore=False)
        assert np.array_equal(a1, a2)


def test_acting_window_longer_than_the_training_sequence_is_refused():
    from reverie.agents.imagine import validate_config

    with pytest.raises(Exception, match="act_window"):
        validate_config(tiny_config(act_context="window", act_window=9))  # seq_len 8
    with pytest.raises(Exception, match="did you mean 'window'"):
        validate_config(tiny_config(act_context="windw"))


def _actor_inputs(agent: ImagineAgent) -> list[torch.Tensor]:
    """Record every feat the actor acts on."""
    seen, sample = [], agent.behavior.actor.sample

    def spy(feat, explore=True):
        seen.append(feat.clone())
        return sample(feat, explore)

    agent.behavior.actor.sample = spy
    return seen


@pytest.mark.parametrize("context", ["episode", "window"])
def test_acting_on_the_prior_ignores_the_current_observation(context):
    """act_latent=prior (Drama): after the first step the actor sees the prior predicted from
    the history, so swapping the current observation changes nothing it acts on; the first
    step of an episode (no history) acts on the posterior. The history itself is built from
    posteriors, exactly as with act_latent=posterior."""
    over = {"act_context": context, "act_window": 4}
    prior, post = make_agent("discrete", act_latent="prior", **over), make_agent("discrete", **over)
    seen_prior, seen_post = _actor_inputs(prior), _actor_inputs(post)
    s_prior, s_post = prior.initial_state(2), post.initial_state(2)
    for t in range(3):
        first = np.array([t == 0, t == 0])
        _, nxt = prior.act(random_obs(2, t), first, s_prior, explore=False)
        prior.act(random_obs(2, 50 + t), first, s_prior, explore=False)  # other obs, same state
        s_prior = nxt
        post.act(random_obs(2, t), first, s_post, explore=False)
        _, s_post = post.act(random_obs(2, t), first, s_post, explore=False)
    # step 0: posterior for both modes, so another observation gives another input
    assert torch.equal(seen_prior[0], seen_post[0])
    assert not torch.equal(seen_prior[0], seen_prior[1])
    for t in (1, 2):
        assert torch.equal(seen_prior[2 * t], seen_prior[2 * t + 1])  # obs swapped: same input
        h = slice(prior.world.stoch_dim, None)  # the history is the posterior one
        torch.testing.assert_close(seen_prior[2 * t][:, h], seen_post[2 * t][:, h])
        z_prior = torch.nn.functional.one_hot(
            prior.world.prior(seen_post[2 * t][:, h]).argmax(-1), prior.world.classes
        ).flatten(-2).float()
        assert torch.equal(seen_prior[2 * t][:, : prior.world.stoch_dim], z_prior)


def test_imagination_from_the_prior_starts_after_the_whole_context():
    """imag_start=prior (Drama): all C context steps are observed and the first imagined
    state is (z ~ prior(h_C), h_C); with posterior it is (posterior z of step C, h_{C-1})."""
    ctx = FakeReplay(SPACES["discrete"], seed=5).sample(8, 4)
    ctx["reset"][:] = False
    for start, steps in (("prior", 4), ("posterior", 3)):
        agent = make_agent("discrete", imag_start=start)
        world = agent.world  # latents by their mode: observe() then draws nothing
        _latents_by_mode(world)
        feat0 = agent.imagine(ctx)["feat"][0]
        obs = {"vector": ctx["vector"][:, :steps]}
        _, h, _ = agent.world.observe(obs, ctx["action"][:, :steps], ctx["reset"][:, :steps])
        torch.testing.assert_close(feat0[:, agent.world.stoch_dim:], h[:, -1])
        z0 = feat0[:, : agent.world.stoch_dim]
        expected = world.sample(world.prior(h[:, -1]) if start == "prior" else world.encode(
            {"vector": ctx["vector"][:, -1]}))
        torch.testing.assert_close(z0, expected)
    from reverie.agents.imagine import validate_config

    with pytest.raises(Exception, match="imag_start must be one of posterior, prior"):
        validate_config(tiny_config(imag_start="priors"))
    with pytest.raises(Exception, match="act_latent"):
        validate_config(tiny_config(act_latent="mode"))


def test_atari100k_preset_switches_on_every_drama_setting():
    """The README's Atari table says "same" for these: the preset must keep them."""
    from reverie.config import build_config

    c = build_config("atari100k")
    i, w, b = c.imagine, c.imagine.world, c.imagine.behavior
    assert (i.batch_size, i.seq_len, c.run.train_ratio) == (16, 128, 2048)
    assert (i.act_context, i.act_window, i.act_latent, i.imag_start) == (
        "window", 16, "prior", "prior")
    assert (w.backbone, w.free_bits_mode, w.prior_layers) == ("mamba2", "batch", 0)
    assert (b.targets, b.actor_input_norm, b.optimizer, i.world_optimizer) == (
        "drama", True, "laprop", "laprop")
    assert c.env.life_loss_terminal and c.replay.sampler == "dfs"


def test_all_drama_switches_together_update_and_act():
    b = ActorCriticConfig(actor_hidden=32, actor_layers=2, critic_hidden=32, critic_layers=2,
                          value_bins=21, targets="drama", actor_input_norm=True)
    agent = make_agent("discrete", behavior=b, act_context="window", act_window=4,
                       act_latent="prior", imag_start="prior")
    metrics = agent.update(FakeReplay(SPACES["discrete"]))
    assert all(math.isfinite(v) for v in metrics.values())
    assert agent.behavior.actor.input_norm.count.item() == 4 * 8  # horizon x imag_batch
    state = agent.initial_state(2)
    for t in range(3):
        action, state = agent.act(random_obs(2, t), np.array([t == 0] * 2), state, True)
        assert action.shape == (2,)
