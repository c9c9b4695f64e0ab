"""SAC: squashed-Gaussian log-density, soft TD target, Polyak step, temperature direction,
a one-step bandit it must solve, and a weights-only checkpoint round trip."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from reverie.behavior.sac import (
    SAC,
    SACConfig,
    polyak_update,
    soft_q_target,
    squashed_gaussian_log_prob,
    tanh_log_det_jacobian,
)


def _small(obs_dim=3, action_dim=2, **kw) -> SAC:
    return SAC(obs_dim, action_dim, SACConfig(hidden=16, batch_size=32, **kw), seed=0)


def _batch(obs_dim=3, action_dim=2, n=32, seed=0, done=0.0):
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(n, obs_dim, generator=g),
        "action": torch.rand(n, action_dim, generator=g) * 2 - 1,
        "reward": torch.randn(n, generator=g),
        "next_obs": torch.randn(n, obs_dim, generator=g),
        "done": torch.full((n,), done),
    }


def test_squashed_log_prob_matches_torch_transformed_distribution():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(64, 3, generator=g, dtype=torch.float64)
    log_std = torch.rand(64, 3, generator=g, dtype=torch.float64) - 1.0
    u = mean + log_std.exp() * torch.randn(64, 3, generator=g, dtype=torch.float64)
    ref = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    expect = ref.log_prob(torch.tanh(u)).sum(-1)
    assert torch.allclose(squashed_gaussian_log_prob(u, mean, log_std), expect, atol=1e-8)


def test_squashed_density_integrates_to_one_over_the_action_interval():
    mean, log_std = torch.tensor([0.4], dtype=torch.float64), torch.tensor([-0.7]).double()
    a = torch.linspace(-1 + 1e-9, 1 - 1e-9, 400_001, dtype=torch.float64)
    logp = squashed_gaussian_log_prob(torch.atanh(a)[:, None], mean, log_std)
    assert torch.trapezoid(logp.exp(), a).item() == pytest.approx(1.0, abs=1e-6)


def test_tanh_jacobian_is_stable_where_tanh_saturates():
    u = torch.tensor([-30.0, -2.0, 0.0, 0.5, 30.0])
    exact = 2 * (math.log(2) - u.abs() - torch.log1p(torch.exp(-2 * u.abs())))
    out = tanh_log_det_jacobian(u)
    assert torch.isfinite(out).all() and torch.allclose(out, exact, atol=1e-5)
    assert out[2].item() == pytest.approx(0.0, abs=1e-7)  # tanh'(0) = 1


def test_soft_q_target_hand_computed_and_done_cuts_bootstrap():
    y = soft_q_target(
        reward=torch.tensor([1.0, 1.0]), done=torch.tensor([0.0, 1.0]),
        next_q1=torch.tensor([2.0, 2.0]), next_q2=torch.tensor([3.0, 3.0]),
        next_log_prob=torch.tensor([-0.5, -0.5]), alpha=0.2, gamma=0.9,
    )
    # 1 + 0.9 · (min(2, 3) − 0.2 · (−0.5)) = 1 + 0.9 · 2.1
    assert torch.allclose(y, torch.tensor([2.89, 1.0]))
    sac = _small()
    batch = _batch(done=1.0)
    target = sac.critic_target_value(batch, torch.tensor(0.3))
    assert torch.equal(target, batch["reward"])  # no bootstrap past a termination
    batch["done"].zero_()
    assert not torch.allclose(sac.critic_target_value(batch, torch.tensor(0.3)), batch["reward"])


def test_target_networks_move_by_exactly_tau():
    sac = _small(tau=0.1)
    with torch.no_grad():  # targets differ from the critic before the update
        for p in sac.critic_target.parameters():
            p.add_(1.0)
    old_target = [p.clone() for p in sac.critic_target.parameters()]
    sac.update(_batch())
    for old, new, q in zip(old_target, sac.critic_target.parameters(), sac.critic.parameters()):
        assert torch.allclose(new, old + 0.1 * (q - old), atol=1e-6)
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    polyak_update(a, b, 0.25)
    assert torch.allclose(a.weight, 0.75 * before + 0.25 * b.weight)


@pytest.mark.parametrize("target_entropy, direction", [(5.0, +1), (-50.0, -1)])
def test_temperature_moves_toward_target_entropy(target_entropy, direction):
    sac = _small(target_entropy=target_entropy, lr_alpha=1e-2)
    # α-loss gradient is −(log π + H̄) = H(π) − H̄ on average: Adam's first step is lr·sign
    info = sac.update(_batch())
    assert math.log(sac.alpha) == pytest.approx(direction * 1e-2, abs=1e-5)
    assert (info["entropy"] < target_entropy) == (direction > 0)


def test_solves_a_one_step_bandit():
    # r = −(a − 0.5)², every episode ends after one step: the greedy action must reach 0.5
    sac = SAC(1, 1, SACConfig(hidden=32, lr_actor=3e-3, lr_critic=3e-3, lr_alpha=3e-3), seed=0)
    g = torch.Generator().manual_seed(0)
    obs = torch.zeros(64, 1)
    for _ in range(300):
        action = torch.rand(64, 1, generator=g) * 2 - 1
        reward = -(action[:, 0] - 0.5) ** 2
        sac.update({"obs": obs, "action": action, "reward": reward,
                    "next_obs": obs, "done": torch.ones(64)})
    assert sac.act(torch.zeros(1, 1), explore=False).item() == pytest.approx(0.5, abs=0.1)


def test_state_dict_round_trip_with_weights_only():
    sac = _small()
    sac.update(_batch())
    buf = io.BytesIO()
    torch.save(sac.state_dict(), buf)
    buf.seek(0)
    other = SAC(3, 2, SACConfig(hidden=16, batch_size=32), seed=1)
    other.load_state_dict(torch.load(buf, weights_only=True))
    obs = torch.randn(4, 3)
    assert torch.equal(sac.act(obs), other.act(obs))  # same weights, same generator state
    a, b = sac.update(_batch(seed=1)), other.update(_batch(seed=1))
    assert a == b  # optimiser moments and α restored too
