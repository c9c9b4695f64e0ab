"""Discrete SAC: the exact soft value, the TD target, temperature direction, a 3-armed
bandit it must solve, and a weights-only checkpoint round trip."""

from __future__ import annotations

import io
import math

import pytest
import torch

from reverie.behavior.sac import SACConfig
from reverie.behavior.sac_discrete import DiscreteSAC, discrete_soft_value


def _small(**kw) -> DiscreteSAC:
    return DiscreteSAC(2, 3, SACConfig(hidden=16, **kw), seed=0)


def _batch(n=32, seed=0, done=0.0):
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(n, 2, generator=g),
        "action": torch.randint(3, (n,), generator=g),
        "reward": torch.randn(n, generator=g),
        "next_obs": torch.randn(n, 2, generator=g),
        "done": torch.full((n,), done),
    }


def test_discrete_soft_value_hand_computed():
    logits = torch.log(torch.tensor([[0.25, 0.75]]))
    q1, q2 = torch.tensor([[1.0, 4.0]]), torch.tensor([[2.0, 3.0]])
    expect = 0.25 * (1 - 0.5 * math.log(0.25)) + 0.75 * (3 - 0.5 * math.log(0.75))
    assert discrete_soft_value(q1, q2, logits, 0.5).item() == pytest.approx(expect, rel=1e-6)


def test_td_target_uses_the_exact_expectation_and_done_cuts_it():
    sac = _small(gamma=0.9)
    batch = _batch()
    alpha = torch.tensor(0.2)
    with torch.no_grad():
        q1, q2 = sac.critic_target(batch["next_obs"])
        logp = torch.log_softmax(sac.actor(batch["next_obs"]), -1)
        v = (logp.exp() * (torch.minimum(q1, q2) - 0.2 * logp)).sum(-1)
    assert torch.allclose(sac.critic_target_value(batch, alpha), batch["reward"] + 0.9 * v)
    batch["done"].fill_(1.0)
    assert torch.equal(sac.critic_target_value(batch, alpha), batch["reward"])


@pytest.mark.parametrize("target_entropy, direction", [(5.0, +1), (None, -1)])
def test_temperature_moves_toward_target_entropy(target_entropy, direction):
    # a fresh policy is nearly uniform: entropy ≈ log 3, above 0.98 log 3 and below 5
    sac = _small(target_entropy=target_entropy, lr_alpha=1e-2)
    info = sac.update(_batch())
    assert math.log(sac.alpha) == pytest.approx(direction * 1e-2, abs=1e-5)
    assert info["entropy"] <= math.log(3) + 1e-6


def test_solves_a_three_armed_bandit():
    sac = DiscreteSAC(1, 3, SACConfig(hidden=32, lr_actor=3e-3, lr_critic=3e-3), seed=0)
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([0.0, 1.0, 0.5])
    obs = torch.zeros(64, 1)
    for _ in range(200):
        action = torch.randint(3, (64,), generator=g)
        sac.update({"obs": obs, "action": action, "reward": means[action],
                    "next_obs": obs, "done": torch.ones(64)})
    q1, _ = sac.critic(torch.zeros(1, 1))
    assert torch.allclose(q1[0], means, atol=0.05)
    assert sac.act(torch.zeros(1, 1), explore=False).item() == 1


def test_state_dict_round_trip_with_weights_only():
    sac = _small()
    sac.update(_batch())
    buf = io.BytesIO()
    torch.save(sac.state_dict(), buf)
    buf.seek(0)
    other = DiscreteSAC(2, 3, SACConfig(hidden=16), seed=5)
    other.load_state_dict(torch.load(buf, weights_only=True))
    obs = torch.randn(16, 2)
    assert torch.equal(sac.act(obs), other.act(obs))
    assert sac.update(_batch(seed=1)) == other.update(_batch(seed=1))
