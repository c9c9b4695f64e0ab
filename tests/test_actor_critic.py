"""λ-returns, the percentile return normaliser, the slow critic and the actor's gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reverie.behavior.returns import ReturnNormalizer, lambda_returns


# -- λ-returns -----------------------------------------------------------------------------
def test_lambda_returns_hand_computed():
    # H = 3, one row; γ = 0.5, λ = 0.5, continuation 1, 1, 0.5.
    r = torch.tensor([[1.0, 2.0, 3.0]])
    c = torch.tensor([[1.0, 1.0, 0.5]])
    v = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    # R_3 = V_3 = 40
    # R_2 = 3 + 0.25 * (0.5 * 40 + 0.5 * 40) = 13
    # R_1 = 2 + 0.5  * (0.5 * 30 + 0.5 * 13) = 12.75
    # R_0 = 1 + 0.5  * (0.5 * 20 + 0.5 * 12.75) = 9.1875
    out = lambda_returns(r, c, v, gamma=0.5, lam=0.5)
    assert torch.allclose(out, torch.tensor([[9.1875, 12.75, 13.0]]))


def _random_traj(B=5, H=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, H, generator=g)
    c = torch.rand(B, H, generator=g)
    v = torch.randn(B, H + 1, generator=g) * 3
    return r, c, v


def test_lambda_returns_lambda_one_is_discounted_sum_plus_bootstrap():
    r, c, v = _random_traj()
    gamma = 0.9
    B, H = r.shape
    out = lambda_returns(r, c, v, gamma=gamma, lam=1.0)
    expected = torch.zeros(B, H)
    for t in range(H):
        disc, total = torch.ones(B), torch.zeros(B)
        for k in range(t, H):
            total = total + disc * r[:, k]
            disc = disc * gamma * c[:, k]
        expected[:, t] = total + disc * v[:, H]
    assert torch.allclose(out, expected, atol=1e-5)


def test_lambda_returns_lambda_zero_is_one_step_td():
    r, c, v = _random_traj(seed=1)
    out = lambda_returns(r, c, v, gamma=0.97, lam=0.0)
    assert torch.allclose(out, r + 0.97 * c * v[:, 1:], atol=1e-6)


def test_lambda_returns_rejects_bad_value_shape():
    r, c, v = _random_traj()
    with pytest.raises(ValueError, match="H\\+1"):
        lambda_returns(r, c, v[:, :-1], gamma=0.9, lam=0.9)


# -- return normaliser ---------------------------------------------------------------------
def test_return_normalizer_matches_numpy_percentiles_and_ema():
    g = np.random.default_rng(0)
    xs = [g.normal(0, 5, size=(64, 15)).astype(np.float32) for _ in range(3)]
    norm = ReturnNormalizer(decay=0.9, low=0.05, high=0.95)
    assert norm.scale().item() == 1.0  # floor before any data
    ema = np.zeros(2)
    for n, x in enumerate(xs, start=1):
        norm.update(torch.from_numpy(x))
        q = np.percentile(x, [5, 95])
        ema = 0.9 * ema + 0.1 * q
        expected = ema / (1 - 0.9**n)
        assert np.allclose(norm.percentiles().numpy(), expected, atol=1e-4)
        if n == 1:  # bias correction: the first update gives the batch percentiles
            assert np.allclose(norm.percentiles().numpy(), q, atol=1e-4)
    assert norm.scale().item() == pytest.approx(expected[1] - expected[0], rel=1e-5)


def test_return_normalizer_scale_floor_is_one():
    norm = ReturnNormalizer()
    norm.update(torch.linspace(0.0, 0.1, 100))
    assert norm.scale().item() == 1.0


# -- actor-critic --------------------------------------------------------------------------
def _small_cfg(**over):
    from reverie.behavior.actor_critic import ActorCriticConfig

    kw = dict(actor_hidden=32, actor_layers=2, critic_hidden=32, critic_layers=2,
              value_bins=41)
    kw.update(over)
    return ActorCriticConfig(**kw)


def test_slow_critic_ema_arithmetic():
    from reverie.behavior.actor_critic import ActorCritic

    torch.manual_seed(0)
    ac = ActorCritic(6, 3, True, _small_cfg(lr_critic=1e-2))
    # make the slow critic differ from the critic so the EMA is visible on every weight
    with torch.no_grad():
        for p in ac.slow_critic.parameters():
            p.add_(torch.randn_like(p))
    slow_before = [p.clone() for p in ac.slow_critic.parameters()]
    H, B = 4, 8
    feat = torch.randn(H + 1, B, 6)
    ac.update(feat, torch.randint(0, 3, (H, B)), torch.randn(H, B), torch.ones(H, B))
    for s0, s1, c1 in zip(slow_before, ac.slow_critic.parameters(), ac.critic.parameters()):
        assert torch.allclose(s1, 0.98 * s0 + 0.02 * c1, atol=1e-6)
    assert not any(p.requires_grad for p in ac.slow_critic.parameters())


def test_zero_init_critic_predicts_zero():
    from reverie.behavior.actor_critic import ActorCritic

    ac = ActorCritic(6, 3, True, _small_cfg())
    v = ac.critic.value(ac.critic(torch.randn(5, 6)))
    assert torch.equal(v, torch.zeros(5))


def test_discrete_actor_has_unimix_floor():
    from reverie.behavior.actor_critic import Actor

    actor = Actor(4, 3, True, hidden=8, layers=1, unimix=0.01)
    with torch.no_grad():
        actor.net.net[-1].bias.copy_(torch.tensor([100.0, 0.0, 0.0]))
    probs = actor.dist(torch.zeros(2, 4)).probs
    assert torch.allclose(probs[:, 1:], torch.full((2, 2), 0.01 / 3), atol=1e-6)


def _bandit_updates(ac, reward_fn, feat, n=20):
    """H = 1 imagined step, terminating (cont 0), so the λ-return is the reward itself."""
    B = feat.shape[1]
    for _ in range(n):
        with torch.no_grad():
            action, raw = ac.actor.sample(feat[0])
        r = reward_fn(action)
        ac.update(feat, raw.unsqueeze(0), r.unsqueeze(0), torch.zeros(1, B))


def test_actor_moves_toward_better_arm_discrete():
    from reverie.behavior.actor_critic import ActorCritic

    torch.manual_seed(0)
    ac = ActorCritic(4, 2, True, _small_cfg(lr_actor=3e-3, lr_critic=3e-3))
    feat = torch.randn(1, 4).expand(2, 256, 4).contiguous()
    p0 = ac.actor.dist(feat[0, :1]).probs[0, 1].item()
    _bandit_updates(ac, lambda a: a.float(), feat)  # arm 1 pays 1, arm 0 pays 0
    p1 = ac.actor.dist(feat[0, :1]).probs[0, 1].item()
    assert p1 > p0 + 0.2, (p0, p1)


def test_actor_moves_toward_better_action_continuous():
    from reverie.behavior.actor_critic import ActorCritic

    torch.manual_seed(0)
    ac = ActorCritic(4, 1, False, _small_cfg(lr_actor=3e-3, lr_critic=3e-3))
    feat = torch.randn(1, 4).expand(2, 256, 4).contiguous()
    m0 = ac.actor.dist(feat[0, :1]).mean[0, 0].item()
    _bandit_updates(ac, lambda a: -(a[:, 0] - 0.7) ** 2, feat)
    m1 = ac.actor.dist(feat[0, :1]).mean[0, 0].item()
    assert abs(m1 - 0.7) < abs(m0 - 0.7) - 0.2, (m0, m1)
    action, raw = ac.actor.sample(torch.randn(1000, 4))
    assert action.abs().max() <= 1.0 and torch.equal(action, raw.clamp(-1, 1))


@pytest.mark.parametrize("c0", [0.0, 1.0])
def test_steps_after_predicted_termination_do_not_count(c0):
    """cont_0 = 0: nothing about states 1.. may reach the losses (weights Π c and the
    bootstrap γ c_0 V_1 both vanish); cont_0 = 1 is the control where it must."""
    from reverie.behavior.actor_critic import ActorCritic

    H, B = 3, 16
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(H + 1, B, 6, generator=g)
    action = torch.randint(0, 3, (H, B), generator=g)
    reward = torch.rand(H, B, generator=g) * 0.05  # keeps the return scale at its floor 1
    cont = torch.ones(H, B)
    cont[0] = c0
    other_feat, other_action = feat.clone(), action.clone()
    other_feat[1:] = torch.randn(H, B, 6, generator=g)
    other_action[1:] = (action[1:] + 1) % 3
    other_reward = reward.clone()
    other_reward[1:] = torch.rand(H - 1, B, generator=g) * 0.05
    losses = []
    for f, a, r in ((feat, action, reward), (other_feat, other_action, other_reward)):
        torch.manual_seed(0)
        ac = ActorCritic(6, 3, True, _small_cfg())
        with torch.no_grad():  # a non-zero critic, so values at states 1.. matter
            ac.critic.net.net[-1].weight.normal_(0.0, 1e-3)
            ac.slow_critic.load_state_dict(ac.critic.state_dict())
        actor_loss, critic_loss, m = ac.loss(f, a, r, cont)
        assert m["ac/return_scale"] == 1.0
        losses.append(torch.stack([actor_loss, critic_loss]))
    same = torch.allclose(losses[0], losses[1], atol=1e-6)
    assert same == (c0 == 0.0)
    assert losses[0].abs().min() > 1e-4  # state 0 always counts (w_0 = 1)


class _Readout(torch.nn.Module):
    """Logits whose entry 0 is a fixed value per time step (feat[t] is one-hot of t)."""

    def __init__(self, values: list[float], bins: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(len(values), bins, bias=False)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.weight[0] = torch.tensor(values)

    def forward(self, x, index=None):
        return self.lin(x)


@pytest.mark.parametrize("targets", ["reverie", "dreamerv3", "drama"])
def test_actor_critic_targets_on_hand_computed_numbers(targets):
    """H = 2, one trajectory; fast critic V_f = (0.2, 0.4, 0.6), slow V_s = (0.1, 0.3, 0.5).
    R_t = r_t + γ c_t ((1 − λ) V_{t+1} + λ R_{t+1}), R_2 = V_2 (reward after the action)."""
    from reverie.behavior.actor_critic import ActorCritic, ActorCriticConfig

    g, lam = 0.9, 0.5
    cfg = ActorCriticConfig(actor_hidden=8, actor_layers=1, critic_hidden=8, critic_layers=1,
                            value_bins=5, gamma=g, lam=lam, entropy=0.0, targets=targets)
    ac = ActorCritic(3, 2, True, cfg)
    vf, vs = [0.2, 0.4, 0.6], [0.1, 0.3, 0.5]
    ac.critic.net = _Readout(vf, 5)
    ac.slow_critic.net = _Readout(vs, 5)
    ac.critic.value = lambda logits: logits[..., 0]  # the readout itself
    feat = torch.eye(3)[:, None, :]  # [H+1, B=1, F=3]
    reward = torch.tensor([[0.1], [0.2]])
    cont = torch.tensor([[0.8], [0.4]])
    action = torch.zeros(2, 1, dtype=torch.long)
    _, _, m = ac.loss(feat, action, reward, cont)

    def returns(v, c):
        r1 = 0.2 + g * c[1] * v[2]  # (1 − λ) V_2 + λ R_2 = V_2
        r0 = 0.1 + g * c[0] * ((1 - lam) * v[1] + lam * r1)
        return [r0, r1]

    if targets == "drama":
        ret = returns(vf, [1.0, 0.0])  # continuation thresholded at 0.5
        base = vf[:2]
    else:
        ret = returns(vs, [0.8, 0.4])
        base = vs[:2] if targets == "dreamerv3" else vf[:2]
    assert m["ac/return_scale"] == 1.0
    assert m["imag/return"] == pytest.approx(sum(ret) / 2, abs=1e-6)
    assert m["ac/advantage"] == pytest.approx((ret[0] - base[0] + ret[1] - base[1]) / 2,
                                              abs=1e-6)


def test_unknown_targets_name_the_choices():
    from reverie.behavior.actor_critic import ActorCritic, ActorCriticConfig

    with pytest.raises(ValueError, match="dreamerv3, reverie, drama"):
        ActorCritic(3, 2, True, ActorCriticConfig(targets="dramma"))


@pytest.mark.parametrize("kw, match", [
    ({"gamma": 0.0}, r"behavior.gamma must be in \(0, 1\]"),
    ({"lam": 1.5}, r"behavior.lam must be in \[0, 1\]"),
    ({"unimix": 1.0}, r"behavior.unimix must be in \[0, 1\)"),
    ({"optimizer": "adamw"}, "behavior.optimizer must be one of adam, laprop"),
])
def test_the_constructor_refuses_what_cannot_train(kw, match):
    """Library callers get the config checks too (not only the CLI's config build)."""
    from reverie.behavior.actor_critic import ActorCritic, ActorCriticConfig

    with pytest.raises(ValueError, match=match):
        ActorCritic(3, 2, True, ActorCriticConfig(**kw))


def test_running_norm_equals_the_pooled_mean_and_variance():
    """Drama's actor-input normaliser: after any sequence of batches, the statistics are the
    mean and (population) variance of all rows seen; forward does not change them."""
    from reverie.behavior.actor_critic import RunningNorm

    g = np.random.default_rng(0)
    batches = [g.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 50)]
    norm = RunningNorm(4)
    x = torch.tensor(batches[0], dtype=torch.float32)
    assert torch.equal(norm(x), x.clamp(-10, 10))  # identity (clipped) before any update
    for b in batches:
        norm.update(torch.tensor(b, dtype=torch.float32))
    rows = np.concatenate(batches).astype(np.float32).astype(np.float64)
    # each batch's moments are float32, their combination float64
    np.testing.assert_allclose(norm.mean.numpy(), rows.mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm.var.numpy(), rows.var(0), rtol=1e-5)
    assert norm.count.item() == 58
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    probe = torch.tensor([[3.0, 1e9, -1e9, 5.0]])
    out = norm(probe)
    expected = (probe.double() - torch.from_numpy(rows.mean(0))) / torch.from_numpy(
        np.sqrt(rows.var(0) + 1e-8))
    torch.testing.assert_close(out, expected.clamp(-10, 10).float())
    assert all(torch.equal(before[k], v) for k, v in norm.state_dict().items())


def test_actor_input_norm_learns_from_imagined_states_only():
    from reverie.behavior.actor_critic import ActorCritic, ActorCriticConfig

    cfg = ActorCriticConfig(actor_hidden=16, actor_layers=1, critic_hidden=16, critic_layers=1,
                            value_bins=21, actor_input_norm=True)
    ac = ActorCritic(6, 3, True, cfg)
    feat = torch.randn(5, 4, 6) * 3 + 1
    ac.actor.sample(feat[0])  # acting does not touch the statistics
    assert ac.actor.input_norm.count.item() == 0
    ac.update(feat, torch.randint(0, 3, (4, 4)), torch.randn(4, 4), torch.ones(4, 4))
    assert ac.actor.input_norm.count.item() == 16  # the H x B states the actor is trained on
    torch.testing.assert_close(ac.actor.input_norm.mean.float(), feat[:-1].reshape(-1, 6).mean(0))
    assert "actor.input_norm.mean" in ac.state_dict()
    assert ActorCritic(6, 3, True, ActorCriticConfig()).actor.input_norm is None  # default off
