"""Recurrent-PPO math: GAE against a per-episode reference, the clipped losses on hand-computed
numbers, sequence minibatches, advantage normalisation, action distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from reverie.behavior.distributions import (
    ActionHead,
    Categorical,
    DiagGaussian,
    MultiCategorical,
    action_features,
)
from reverie.behavior.ppo import (
    PPOConfig,
    gae,
    gather_sequences,
    normalize_advantages,
    ppo_losses,
    sequence_minibatches,
    validate_ppo,
)


def reference_gae(reward, value, bootstrap, term, trunc, final_value, gamma, lam):
    """Per env, per episode: A_t = Σ_k (γλ)^k δ_{t+k} summed explicitly to the episode's
    last step inside the rollout (no recursion), in float64 Python."""
    T, N = len(reward), len(reward[0])
    adv = [[0.0] * N for _ in range(T)]
    for n in range(N):
        for t in range(T):
            total, k = 0.0, 0
            while True:
                s = t + k
                if term[s][n]:
                    v_next = 0.0
                elif trunc[s][n]:
                    v_next = final_value[s][n]
                elif s + 1 < T:
                    v_next = value[s + 1][n]
                else:
                    v_next = bootstrap[n]
                delta = reward[s][n] + gamma * v_next - value[s][n]
                total += (gamma * lam) ** k * delta
                if term[s][n] or trunc[s][n] or s + 1 == T:
                    break
                k += 1
            adv[t][n] = total
    return adv


def rollout(seed, T=12, N=3):
    g = torch.Generator().manual_seed(seed)
    reward = torch.randn(T, N, generator=g, dtype=torch.float64)
    value = torch.randn(T, N, generator=g, dtype=torch.float64)
    bootstrap = torch.randn(N, generator=g, dtype=torch.float64)
    final_value = torch.randn(T, N, generator=g, dtype=torch.float64)
    term = torch.zeros(T, N, dtype=torch.bool)
    trunc = torch.zeros(T, N, dtype=torch.bool)
    term[3, 0] = True  # an episode that ended in the MDP, inside the rollout
    trunc[7, 0] = True  # then one cut by a time limit
    trunc[5, 1] = True
    term[5, 1] = True  # both flags: terminal wins, no bootstrap
    trunc[T - 1, 2] = True  # truncated on the rollout's last step: final_value, not bootstrap
    term[0, 2] = True  # a one-step episode at the start
    return reward, value, bootstrap, term, trunc, final_value


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_gae_matches_per_episode_reference(lam):
    gamma = 0.9
    reward, value, bootstrap, term, trunc, final_value = rollout(seed=int(lam * 100))
    adv, ret = gae(reward, value, bootstrap, term, trunc, gamma, lam, final_value)
    ref = torch.tensor(reference_gae(reward.tolist(), value.tolist(), bootstrap.tolist(),
                                     term.tolist(), trunc.tolist(), final_value.tolist(),
                                     gamma, lam), dtype=torch.float64)
    torch.testing.assert_close(adv, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, ref + value, rtol=0, atol=1e-12)


def test_gae_lambda_zero_is_one_step_td():
    gamma = 0.97
    reward, value, bootstrap, term, trunc, final_value = rollout(seed=1)
    _, ret = gae(reward, value, bootstrap, term, trunc, gamma, 0.0, final_value)
    # by hand for env 0: step 2 bootstraps from V_3; step 3 is terminal; step 7 truncated
    assert ret[2, 0].item() == pytest.approx(reward[2, 0].item() + gamma * value[3, 0].item())
    assert ret[3, 0].item() == pytest.approx(reward[3, 0].item())
    assert ret[7, 0].item() == pytest.approx(reward[7, 0].item()
                                             + gamma * final_value[7, 0].item())
    assert ret[-1, 0].item() == pytest.approx(reward[-1, 0].item() + gamma * bootstrap[0].item())
    assert ret[-1, 2].item() == pytest.approx(reward[-1, 2].item()
                                              + gamma * final_value[-1, 2].item())
    assert ret[5, 1].item() == pytest.approx(reward[5, 1].item())  # terminal beats truncated


def test_gae_lambda_one_is_monte_carlo():
    gamma = 0.9
    reward, value, bootstrap, term, trunc, final_value = rollout(seed=2)
    _, ret = gae(reward, value, bootstrap, term, trunc, gamma, 1.0, final_value)
    r = reward[:, 0].tolist()
    # env 0: episode [0..3] terminal, [4..7] truncated, [8..11] runs into the bootstrap
    mc0 = sum(gamma**k * r[k] for k in range(4))
    mc4 = sum(gamma ** (k - 4) * r[k] for k in range(4, 8)) + gamma**4 * final_value[7, 0].item()
    mc8 = sum(gamma ** (k - 8) * r[k] for k in range(8, 12)) + gamma**4 * bootstrap[0].item()
    assert ret[0, 0].item() == pytest.approx(mc0, abs=1e-12)
    assert ret[4, 0].item() == pytest.approx(mc4, abs=1e-12)
    assert ret[8, 0].item() == pytest.approx(mc8, abs=1e-12)


def test_gae_needs_final_value_for_truncated_steps():
    reward, value, bootstrap, term, trunc, _ = rollout(seed=3)
    with pytest.raises(ValueError, match="final_value"):
        gae(reward, value, bootstrap, term, trunc, 0.99, 0.95)


def test_ppo_losses_hand_computed():
    # ratios e^{0.5}=1.6487 (A>0: clipped at 1.2), e^{-0.5}=0.6065 (A>0: unclipped),
    # e^{0.1}=1.1052 (A<0: unclipped), e^{-0.5} with A<0: clipped at 0.8 (the min picks it)
    new_logp = torch.tensor([0.0, -1.0, 0.1, -0.5])
    old_logp = torch.tensor([-0.5, -0.5, 0.0, 0.0])
    adv = torch.tensor([2.0, 1.0, -1.0, -3.0])
    r = [math.exp(0.5), math.exp(-0.5), math.exp(0.1), math.exp(-0.5)]
    surrogate = [1.2 * 2.0, r[1] * 1.0, r[2] * -1.0, 0.8 * -3.0]
    # value: V − R = 1.0 unclipped; old 0, vclip 0.5 -> clipped V 0.5, (0.5 − R)²
    new_value = torch.tensor([1.0, 0.0, 2.0, -1.0])
    old_value = torch.tensor([0.0, 0.1, 1.0, -1.0])
    returns = torch.tensor([0.0, 0.0, 0.0, 1.0])
    # entry 0: max(1, 0.25) = 1; 1: V moved 0.1 -> within clip: 0; 2: clipped V=1.5,
    # max(4, 2.25) = 4; 3: (−2)² = 4 both
    value_err = [1.0, 0.0, 4.0, 4.0]
    entropy = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = ppo_losses(new_logp, old_logp, adv, new_value, old_value, returns, entropy,
                     clip=0.2, vclip=0.5)
    assert out.policy.item() == pytest.approx(-sum(surrogate) / 4, rel=1e-6)
    assert out.value.item() == pytest.approx(0.5 * sum(value_err) / 4, rel=1e-6)
    assert out.entropy.item() == pytest.approx(2.5)
    kl = sum((x - 1) - math.log(x) for x in r) / 4
    assert out.approx_kl.item() == pytest.approx(kl, rel=1e-5)
    assert out.clip_fraction.item() == pytest.approx(3 / 4)  # 1.105 is inside [0.8, 1.2]
    assert out.total(0.5, 0.01).item() == pytest.approx(
        out.policy.item() + 0.5 * out.value.item() - 0.01 * 2.5, rel=1e-6)


def test_ppo_value_clipping_takes_the_pessimistic_error():
    # V moved from 0 to 3 toward R = 4: clipped prediction 0.5 has the larger error (12.25)
    args = dict(new_logp=torch.zeros(1), old_logp=torch.zeros(1), adv=torch.ones(1),
                new_value=torch.tensor([3.0]), old_value=torch.zeros(1),
                returns=torch.tensor([4.0]), entropy=torch.zeros(1), clip=0.2)
    assert ppo_losses(**args, vclip=0.5).value.item() == pytest.approx(0.5 * 3.5**2)
    assert ppo_losses(**args, vclip=None).value.item() == pytest.approx(0.5 * 1.0)
    # ratio 1: the surrogate is just A, nothing clipped
    out = ppo_losses(**args, vclip=None)
    assert out.policy.item() == pytest.approx(-1.0)
    assert out.clip_fraction.item() == 0.0 and out.approx_kl.item() == 0.0


def test_ppo_losses_mask_ignores_padding():
    x = torch.tensor([[0.3, -0.2, 9.0]])
    mask = torch.tensor([[True, True, False]])
    big = torch.tensor([[1.0, 2.0, 1e6]])
    full = ppo_losses(x, torch.zeros_like(x), big, big, big, big * 0, big, 0.2, 0.2, mask)
    part = ppo_losses(x[:, :2], torch.zeros(1, 2), big[:, :2], big[:, :2], big[:, :2],
                      big[:, :2] * 0, big[:, :2], 0.2, 0.2)
    for a, b in zip(full, part):
        assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_policy_gradient_is_zero_where_clipped():
    new_logp = torch.tensor([0.5, 0.0], requires_grad=True)
    out = ppo_losses(new_logp, torch.zeros(2), torch.tensor([1.0, 1.0]), torch.zeros(2),
                     torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.2, None)
    out.policy.backward()
    # entry 0 is clipped (ratio 1.65 > 1.2 with A > 0): no gradient; entry 1: −r A / 2
    assert new_logp.grad.tolist() == pytest.approx([0.0, -0.5])


def test_normalize_advantages():
    adv = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([True, True, True, False])
    out = normalize_advantages(adv, mask)
    # mean 2, unbiased std 1
    assert out.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    unmasked = normalize_advantages(adv[:3])
    torch.testing.assert_close(unmasked, out[:3])
    one = normalize_advantages(torch.tensor([5.0, 7.0]), torch.tensor([True, False]))
    assert one.tolist() == [0.0, 0.0]


def test_sequence_minibatches_cover_every_sequence_once():
    T, N, L = 24, 5, 6
    batches = sequence_minibatches(T, N, L, 3, np.random.default_rng(0))
    seen = sorted((int(e), int(s)) for b in batches for e, s in zip(b.env, b.start))
    assert seen == sorted((n, s) for n in range(N) for s in range(0, T, L))
    assert [len(b.env) for b in batches] == [7, 7, 6]
    # another seed deals them differently
    other = sequence_minibatches(T, N, L, 3, np.random.default_rng(1))
    assert not np.array_equal(other[0].env * T + other[0].start,
                              batches[0].env * T + batches[0].start)
    # gathered sequences are whole: one env each, consecutive steps from a multiple of L
    x = torch.arange(T)[:, None] * 100 + torch.arange(N)[None, :]  # value = 100 t + env
    for b in batches:
        seq = gather_sequences(x, b, L)  # [B, L]
        assert seq.shape == (len(b.env), L)
        env, t = seq % 100, seq // 100
        assert (env == torch.as_tensor(b.env)[:, None]).all()
        assert (t == torch.as_tensor(b.start)[:, None] + torch.arange(L)).all()
        assert (torch.as_tensor(b.start) % L == 0).all()
    with pytest.raises(ValueError, match="multiple of seq_len"):
        sequence_minibatches(25, N, L, 3, np.random.default_rng(0))


def test_config_validation_names_the_fix():
    validate_ppo(PPOConfig())
    with pytest.raises(ValueError, match="multiple of rppo.seq_len.*rollout_length to 64"):
        validate_ppo(PPOConfig(rollout_length=100, seq_len=64))
    # seq_len set alone: the divisor of the rollout nearest it (not a new rollout length)
    with pytest.raises(ValueError, match=r"set seq_len to 128, or rollout_length to 100"):
        validate_ppo(PPOConfig(rollout_length=128, seq_len=100))
    with pytest.raises(ValueError, match=r"rppo.lr must be positive, got -1.0; the popgym-ppo "
                                         r"preset uses 5e-4"):
        validate_ppo(PPOConfig(lr=-1.0))
    with pytest.raises(ValueError, match=r"rppo.lam must be in \[0, 1\], got 2.0; the default "
                                         r"is 0.95"):
        validate_ppo(PPOConfig(lam=2.0))
    validate_ppo(PPOConfig(), num_envs=1)  # 1·128/64 = 2 sequences, 2 minibatches
    with pytest.raises(ValueError, match="num_envs.* must be >= 1"):
        validate_ppo(PPOConfig(), num_envs=0)
    with pytest.raises(ValueError, match="divisor of 6"):
        validate_ppo(PPOConfig(rollout_length=128, seq_len=64, num_minibatches=4), num_envs=3)
    with pytest.raises(ValueError, match="did you mean 'ffm'"):
        validate_ppo(PPOConfig(backbone="fmm"))


def test_categorical_matches_torch():
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    a = torch.tensor([0, 4, 2, 2])
    ref = torch.distributions.Categorical(logits=logits)
    d = Categorical(logits)
    torch.testing.assert_close(d.log_prob(a), ref.log_prob(a))
    torch.testing.assert_close(d.entropy(), ref.entropy())
    assert d.mode().tolist() == logits.argmax(-1).tolist()


def test_multidiscrete_log_prob_is_sum_of_parts():
    nvec = (3, 2, 4)
    logits = torch.randn(6, sum(nvec), generator=torch.Generator().manual_seed(1))
    d = MultiCategorical(logits, nvec)
    a = d.sample(torch.Generator().manual_seed(2))
    assert a.shape == (6, 3) and a.dtype == torch.int64
    parts = [torch.distributions.Categorical(logits=x) for x in logits.split(nvec, -1)]
    ref_lp = sum(p.log_prob(a[:, k]) for k, p in enumerate(parts))
    ref_h = sum(p.entropy() for p in parts)
    torch.testing.assert_close(d.log_prob(a), ref_lp)
    torch.testing.assert_close(d.entropy(), ref_h)
    # exhaustive: the joint probabilities of all 24 actions sum to one
    grid = torch.cartesian_prod(*[torch.arange(n) for n in nvec])  # [24, 3]
    joint = MultiCategorical(logits[:1].expand(24, -1), nvec).log_prob(grid).exp().sum()
    assert joint.item() == pytest.approx(1.0, abs=1e-6)


def test_diag_gaussian_closed_form():
    mean = torch.tensor([[0.5, -1.0]])
    log_std = torch.tensor([0.0, math.log(2.0)])
    d = DiagGaussian(mean, log_std)
    a = torch.tensor([[1.5, 3.0]])  # z = (1, 2)
    lp = (-0.5 * 1 - 0.5 * math.log(2 * math.pi)) + (-0.5 * 4 - math.log(2.0)
                                                      - 0.5 * math.log(2 * math.pi))
    assert d.log_prob(a).item() == pytest.approx(lp, rel=1e-6)
    h = 2 * 0.5 * math.log(2 * math.pi * math.e) + math.log(2.0)
    assert d.entropy().item() == pytest.approx(h, rel=1e-6)
    # samples are not clipped to [-1, 1], and follow N(mean, std²)
    s = DiagGaussian(torch.zeros(20000, 2), log_std).sample(torch.Generator().manual_seed(0))
    assert s.abs().max() > 1.0
    assert s.std(0).tolist() == pytest.approx([1.0, 2.0], rel=0.03)


def test_action_head_and_features_per_space():
    h = torch.randn(7, 8)
    md = spaces.MultiDiscrete([4, 4])
    dist = ActionHead(md, 8)(h)
    assert isinstance(dist, MultiCategorical)
    # near-uniform at init (gain 0.01): entropy ≈ 2 ln 4
    assert dist.entropy().mean().item() == pytest.approx(2 * math.log(4), abs=1e-3)
    box = ActionHead(spaces.Box(-1, 1, (3,)), 8)
    assert isinstance(box(h), DiagGaussian) and box.log_std.shape == (3,)
    f = action_features(torch.tensor([[1, 3]]), md)
    assert f.tolist() == [[0, 1, 0, 0, 0, 0, 0, 1]]
    assert action_features(torch.tensor([2]), spaces.Discrete(3)).tolist() == [[0, 0, 1]]
    assert action_features(torch.tensor([[2.0, -0.5]]), spaces.Box(-1, 1, (2,))).tolist() \
        == [[1.0, -0.5]]
    with pytest.raises(ValueError, match="no action distribution"):
        ActionHead(spaces.Box(-1, 1, (2, 2)), 8)
