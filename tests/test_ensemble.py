"""The probabilistic ensemble: batched forward, NLL recovering known noise, bootstrap,
early stopping, elites, trajectory sampling and COPlanner's disagreement."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from reverie.world.ensemble import (
    EnsembleDynamics,
    bootstrap_indices,
    ensemble_disagreement,
    improved_members,
    soft_bound_logvar,
)


def _tiny(members=4, elites=2, obs_dim=2, action_dim=1, hidden=16, layers=2, **kw):
    torch.manual_seed(0)
    return EnsembleDynamics(
        obs_dim, action_dim, members=members, elites=elites, hidden=hidden, layers=layers, **kw
    )


def _constant_members(model: EnsembleDynamics, offsets: list[float], logvar: float = -30.0):
    """Member m predicts Δobs = offsets[m] (every dim), reward = offsets[m], var ≈ e^logvar."""
    with torch.no_grad():
        model.weights[-1].zero_()
        d = model.obs_dim + 1
        for m, off in enumerate(offsets):
            model.biases[-1][m, 0, :d] = off
        model.biases[-1][:, 0, d : 2 * d] = logvar
        model.biases[-1][:, 0, 2 * d] = -20.0  # never terminal
        model.min_logvar.fill_(logvar - 10.0)
        model.max_logvar.fill_(logvar)


def test_batched_forward_equals_per_member_linear_loop():
    model = _tiny(members=3, layers=3)
    x = torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(1))
    mean, logvar, logit = model(x)
    for m in range(3):
        h = x[m]
        for i, (w, b) in enumerate(zip(model.weights, model.biases)):
            h = F.linear(h, w[m].T, b[m, 0])
            if i < len(model.weights) - 1:
                h = F.silu(h)
        mu, lv, lg = h[:, :3], h[:, 3:6], h[:, 6]
        lv = model.max_logvar - F.softplus(model.max_logvar - lv)
        lv = model.min_logvar + F.softplus(lv - model.min_logvar)
        assert torch.allclose(mean[m], mu, atol=1e-5)
        assert torch.allclose(logvar[m], lv, atol=1e-5)
        assert torch.allclose(logit[m], lg, atol=1e-5)
    # a subset of members gives those members' rows
    sub = torch.tensor([2, 0])
    mean_sub, _, _ = model(x[sub], sub)
    assert torch.allclose(mean_sub, mean[sub], atol=1e-6)


def test_soft_bound_stays_inside_and_is_identity_in_the_middle():
    lo, hi = torch.tensor(-10.0), torch.tensor(0.5)
    lv = torch.tensor([-1e3, -10.0, -4.0, 0.5, 1e3])
    out = soft_bound_logvar(lv, lo, hi)
    # the lower softplus, applied last, may overshoot max by softplus(min - max) ≈ 3e-5
    assert (out >= lo).all() and (out <= hi + 1e-4).all()
    assert lo < out[1] < out[2] < out[3] < hi
    assert abs(out[2].item() + 4.0) < 0.02  # far from both bounds: nearly unchanged
    assert out[0].item() == pytest.approx(-10.0, abs=1e-3)


def test_nll_recovers_heteroscedastic_noise():
    g = torch.Generator().manual_seed(0)
    n = 2000
    x = torch.rand(n, 1, generator=g) * 4 - 2
    sigma = 0.05 + 0.1 * (x + 2)  # 0.05 at x=-2 to 0.45 at x=2
    dx = torch.sin(x) + sigma * torch.randn(n, 1, generator=g)
    reward = 0.2 * torch.randn(n, generator=g)
    model = _tiny(members=2, elites=1, obs_dim=1, hidden=32, weight_decay=0.0, lr=3e-3)
    model.fit(x, torch.zeros(n, 1), x + dx, reward, torch.zeros(n), g,
              batch_size=128, max_epochs=60, patience=60)
    q = torch.tensor([[-1.5], [0.0], [1.5]])
    with torch.no_grad():
        p = model.predict(q, torch.zeros(3, 1))
    true_std = 0.05 + 0.1 * (q[:, 0] + 2)
    assert torch.allclose(p.next_obs_var.sqrt()[..., 0], true_std.expand(2, 3), rtol=0.2)
    assert torch.allclose(p.reward_var.sqrt(), torch.full((2, 3), 0.2), rtol=0.15)
    assert torch.allclose(p.next_obs_mean[..., 0] - q[:, 0], torch.sin(q[:, 0]), atol=0.1)


def test_bootstrap_resamples_per_member_and_members_end_up_different():
    idx = bootstrap_indices(5000, 3, torch.Generator().manual_seed(0))
    for row in idx:
        # a bootstrap resample holds ~1 - 1/e of the distinct rows
        assert len(torch.unique(row)) / 5000 == pytest.approx(1 - math.exp(-1), abs=0.02)
    assert not torch.equal(idx[0], idx[1])
    model = _tiny(members=3)
    with torch.no_grad():  # identical initial weights: only the data can separate them
        for p in list(model.weights) + list(model.biases):
            p.copy_(p[:1].expand_as(p))
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(200, 2, generator=g), torch.randn(200, 1, generator=g)
    model.fit(obs, act, obs + act, obs[:, 0], torch.zeros(200), g, max_epochs=2)
    w = model.weights[0]
    assert (w[0] - w[1]).abs().max() > 1e-4 and (w[1] - w[2]).abs().max() > 1e-4


def test_early_stopping_stops_once_more_than_patience_epochs_did_not_improve():
    """MBPO stops when its epochs since the last improvement exceed max_epochs_since_update
    (5): after 6 epochs without one. reverie stopped after 5, one epoch early."""
    model = _tiny(lr=1e-12)  # learns nothing: only epoch 1 "improves" (from no best at all)
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(100, 2, generator=g), torch.randn(100, 1, generator=g)
    out = model.fit(obs, act, obs, obs[:, 0], torch.zeros(100), g, patience=3, max_epochs=50)
    assert out["epochs"] == 1.0 + 4.0  # the improving epoch, then 4 (> 3) without
    out = model.fit(obs, act, obs, obs[:, 0], torch.zeros(100), g, patience=5, max_epochs=2)
    assert out["epochs"] == 2.0
    best = torch.tensor([1.0, 1.0, math.inf])
    cur = torch.tensor([0.98, 0.995, 5.0])
    assert improved_members(best, cur, 0.01).tolist() == [True, False, True]


def test_fit_learns_a_linear_map_and_termination():
    model = _tiny(lr=3e-3)
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(300, 2, generator=g), torch.randn(300, 1, generator=g)
    # balanced classes: with terminal = x0 > 1 (16% positives) the head was still near 0.5 at
    # x0 = 3 when early stopping (on the state error) ended the fit: above on some CPUs, below
    # on others
    terminal = (obs[:, 0] > 0.0).float()
    out = model.fit(obs, act, obs + act, obs[:, 1], terminal, g, batch_size=32, max_epochs=100)
    assert out["holdout_mse"] < 0.05 and math.isfinite(out["train_loss"])
    with torch.no_grad():
        p = model.predict(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.zeros(2, 1))
    elite = p.terminal_prob[model.elites]
    assert (elite[:, 0] < 0.2).all() and (elite[:, 1] > 0.8).all()


def test_inputs_are_standardised_by_the_training_rows_statistics():
    """fit sets input_mean/std from the training split (not the holdout) and a constant input
    dim gets std 1; every prediction goes through them (shift the data and the stats: same
    normalised inputs)."""
    model = _tiny()
    g = torch.Generator().manual_seed(3)
    n = 50
    obs = torch.stack([100 + 40 * torch.randn(n, generator=g), torch.full((n,), 7.0)], 1)
    act = torch.randn(n, 1, generator=g) * 0.1
    split = torch.Generator().manual_seed(11)
    model.fit(obs, act, obs, torch.zeros(n), torch.zeros(n), torch.Generator().manual_seed(11),
              max_epochs=1)
    perm = torch.randperm(n, generator=split)  # fit's first draw: the holdout split
    train = perm[max(1, int(n * 0.2)):]
    x = torch.cat([obs, act], 1)[train]
    mean, std = x.mean(0), x.std(0, correction=0)
    assert torch.allclose(model.input_mean, mean) and model.input_std[1] == 1.0
    assert torch.allclose(model.input_std[[0, 2]], std[[0, 2]])
    probe_obs, probe_act = torch.tensor([[140.0, 7.0]]), torch.tensor([[0.2]])
    expected = (torch.tensor([[140.0, 7.0, 0.2]]) - mean) / torch.where(std < 1e-6, 1.0, std)
    assert torch.allclose(model.normalise(probe_obs, probe_act), expected)
    with torch.no_grad():  # the forward pass reads the stats: other stats, other predictions
        before = model.predict(probe_obs, probe_act).next_obs_mean.clone()
        model.input_mean[0] += 40.0
        assert not torch.allclose(model.predict(probe_obs, probe_act).next_obs_mean, before)


def test_elites_are_the_lowest_holdout_members():
    model = _tiny(members=5, elites=2)
    _constant_members(model, [0.0, 3.0, 1.0, -0.5, 2.0], logvar=-5.0)
    x = torch.randn(50, 3)
    target = torch.full((50, 3), 0.9)  # member m's squared error is (offset - 0.9)²
    mse = model.select_elites(x, target)
    assert torch.allclose(mse, (torch.tensor([0.0, 3.0, 1.0, -0.5, 2.0]) - 0.9) ** 2)
    assert model.elites.tolist() == [2, 0]


def test_trajectory_sampling_ts1_and_tsinf():
    model = _tiny(members=4, elites=3)
    _constant_members(model, [0.0, 10.0, 20.0, 30.0])
    model.elites.copy_(torch.tensor([1, 2, 3]))
    g = torch.Generator().manual_seed(0)
    obs, act = torch.zeros(64, 2), torch.zeros(64, 1)
    members = model.draw_members(64, g)
    seen_ts1 = set()
    for _ in range(4):
        nxt, rew, term = model.sample_next(obs, act, g, mode="tsinf", member_idx=members)
        assert torch.allclose(nxt - obs, 10.0 * members[:, None].float().expand(-1, 2), atol=1e-4)
        assert torch.allclose(rew, 10.0 * members.float(), atol=1e-4)
        assert not term.any()
        obs = nxt
        nxt1, _, _ = model.sample_next(torch.zeros(64, 2), act, g, mode="ts1")
        seen_ts1 |= set((nxt1[:, 0] / 10).round().long().tolist())
    assert seen_ts1 == {1, 2, 3}  # TS1 varies over rows/steps but only among the elites
    pinned = torch.tensor([3, 0, 2, 0])  # TS∞ may pin any member, elite or not
    nxt, _, _ = model.sample_next(torch.zeros(4, 2), act[:4], g, "tsinf", pinned)
    assert torch.allclose(nxt[:, 1], torch.tensor([30.0, 0.0, 20.0, 0.0]), atol=1e-4)
    with pytest.raises(ValueError, match="member_idx"):
        model.sample_next(obs, act, g, mode="tsinf")


def test_disagreement_zero_for_identical_members_and_hand_computed():
    samples = torch.tensor([[[1.0, 2.0]], [[3.0, 2.0]], [[5.0, 2.0]]])  # [M=3, N=1, D=2]
    # std of (1, 3, 5) = sqrt(8/3); the second dim agrees -> mean over dims halves it
    assert ensemble_disagreement(samples).item() == pytest.approx(math.sqrt(8 / 3) / 2)
    model = _tiny(members=3, elites=2)
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(64, 2, generator=g), torch.randn(64, 1, generator=g)
    with torch.no_grad():
        for p in list(model.weights) + list(model.biases):
            p.copy_(p[:1].expand_as(p))
        model.min_logvar.fill_(-40.0)
        model.max_logvar.fill_(-30.0)
    assert model.disagreement(obs, act, g, torch.arange(3)).abs().max() < 1e-5
    _constant_members(model, [1.0, 3.0, 5.0])  # every output dim (2 obs + reward) differs
    u = model.disagreement(obs, act, g, torch.arange(3))
    assert torch.allclose(u, torch.full((64,), math.sqrt(8 / 3)), atol=1e-4)
    model.elites.copy_(torch.tensor([2, 0]))  # elites in holdout order, not sorted
    nxt, rew, u2, term = model.rollout_step(obs, act, g)
    assert torch.allclose(u2, torch.full((64,), 2.0), atol=1e-4) and not term.any()
    assert set(rew.round().long().tolist()) == {1, 5}
    assert torch.allclose(nxt - obs, rew[:, None].expand(-1, 2), atol=1e-4)


def test_state_dict_loads_with_weights_only():
    model = _tiny()
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(100, 2, generator=g), torch.randn(100, 1, generator=g)
    model.fit(obs.numpy(), act.numpy(), (obs + act).numpy(), obs[:, 0].numpy(),
              torch.zeros(100).numpy(), g, max_epochs=3)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = _tiny()
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(other.elites, model.elites)
    a = model.predict(obs, act)
    b = other.predict(obs, act)
    assert torch.equal(a.next_obs_mean, b.next_obs_mean)


def test_sample_next_evaluates_each_row_by_its_member_only_with_the_same_numbers():
    """sample_next runs each row through its own member only; the result (and the generator
    afterwards) is what evaluating every used member on every row and picking gives."""
    model = _tiny(members=5, elites=3, obs_dim=3, action_dim=2, hidden=32)
    model.elites.copy_(torch.tensor([4, 1, 2]))
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(300, 3, generator=g), torch.randn(300, 2, generator=g)
    pinned = torch.tensor([4, 0, 0, 3] * 75)  # TS∞ with a member (2) no row uses
    for mode, idx in (("ts1", None), ("tsinf", pinned)):
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        nxt, rew, term = model.sample_next(obs, act, g1, mode, idx)
        # the reference: every used member on every row, then each row's member picked
        idx = model.draw_members(300, g2) if idx is None else idx
        used, pos = torch.unique(idx, return_inverse=True)
        with torch.no_grad():
            all_nxt, all_rew, all_term = model.sample_members(obs, act, g2, used)
        rows = torch.arange(300)
        assert torch.allclose(nxt, all_nxt[pos, rows], atol=1e-5)
        assert torch.allclose(rew, all_rew[pos, rows], atol=1e-5)
        assert torch.equal(term, all_term[pos, rows] > 0.5)
        assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))


def test_inference_blocks_and_few_row_predictions_give_the_training_path_numbers(monkeypatch):
    """Without autograd the rows run in blocks (bias and SiLU in place), and a few rows for
    a subset of members run every member then pick: both give the autograd path's numbers."""
    from reverie.world import ensemble

    model = _tiny(members=4, elites=2, obs_dim=3, hidden=16)
    model.elites.copy_(torch.tensor([3, 1]))
    monkeypatch.setattr(ensemble, "INFERENCE_ROWS", 7)
    x = torch.randn(4, 30, 4)
    reference = model(x)  # autograd: one baddbmm per layer over all rows
    with torch.no_grad():
        blocked = model(x)  # blocks of 7, 7, 7, 7, 2 rows
    for a, b in zip(reference, blocked):
        torch.testing.assert_close(b, a.detach(), rtol=1e-6, atol=1e-6)
    obs, act = torch.randn(5, 3), torch.randn(5, 1)
    with torch.no_grad():
        few = model.predict(obs, act, model.elites)  # every member's rows, then the elites'
        monkeypatch.setattr(ensemble, "INFERENCE_ROWS_ALL_MEMBERS", 0)
        gathered = model.predict(obs, act, model.elites)  # the elites' weights gathered
    for a, b in zip(few, gathered):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
