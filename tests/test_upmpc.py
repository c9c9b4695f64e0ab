"""UP-MPC on hand-built models whose candidate scores are known, parity of the batched
planner with a per-row Python loop, termination, and the K = 1 limit."""

from __future__ import annotations

import pytest
import torch

from reverie.behavior.sac import SAC, SACConfig
from reverie.planning.upmpc import UPMPCConfig, plan, repeat_rows, upmpc_scores
from reverie.world.ensemble import EnsembleDynamics


def _first_call_policy(candidates: list[float], later: float = 0.0):
    """Candidate k's first action is candidates[k] (rows n·K + k); later actions `later`."""
    calls = []

    def policy(state: torch.Tensor) -> torch.Tensor:
        calls.append(state)
        if len(calls) == 1:
            k = len(candidates)
            return torch.tensor(candidates).repeat(state.shape[0] // k)[:, None]
        return torch.full((state.shape[0], 1), later)

    return policy


def _zeros_like_rows(s: torch.Tensor) -> torch.Tensor:
    return torch.zeros(s.shape[0])


def test_picks_the_known_best_candidate_on_a_deterministic_model():
    # s' = s + a, r = −(s' − 2)², no uncertainty, never terminal; later actions 0
    def step(s, a):
        nxt = s + a
        return nxt, -((nxt[:, 0] - 2.0) ** 2), _zeros_like_rows(s), _zeros_like_rows(s)

    cfg = UPMPCConfig(candidates=4, horizon=2)
    out = plan(torch.zeros(3, 1), step, _first_call_policy([0.0, 1.0, 2.0, 3.0]), cfg,
               "conservative")
    # candidate a stays at s = a: score = −(a − 2)² (1 + 0.97)
    expect = -torch.tensor([4.0, 1.0, 0.0, 1.0]) * 1.97
    assert torch.allclose(out.scores, expect.expand(3, 4))
    assert out.best.tolist() == [2, 2, 2] and out.action[:, 0].tolist() == [2.0, 2.0, 2.0]
    assert out.candidates.shape == (3, 4, 1) and out.model_steps == 3 * 4 * 2


def test_conservative_and_optimistic_choose_differently():
    # candidate 0: reward 1 with uncertainty 1 per step; candidate 1: reward 0.5, certain.
    # The state starts as NaN and remembers the first action (the candidate's id).
    def step(s, a):
        s = torch.where(torch.isnan(s), a, s)
        risky = s[:, 0] == 0.0
        return s, torch.where(risky, 1.0, 0.5), risky.float(), torch.zeros(s.shape[0])

    cfg = UPMPCConfig(candidates=2, horizon=3)
    start = torch.full((1, 1), float("nan"))
    g = (1 + 0.97 + 0.97**2)
    cons = plan(start, step, _first_call_policy([0.0, 1.0], later=7.0), cfg,
                "conservative")
    assert torch.allclose(cons.scores, torch.tensor([[(1 - 2) * g, 0.5 * g]]))
    assert cons.best.item() == 1
    opt = plan(start, step, _first_call_policy([0.0, 1.0], later=7.0), cfg,
               "optimistic")
    assert torch.allclose(opt.scores, torch.tensor([[(1 + 1) * g, 0.5 * g]]))
    assert opt.best.item() == 0


def test_nothing_counts_after_a_predicted_termination():
    # candidate 0 ends the episode at once with reward 1, then its model dreams of reward 100;
    # candidate 1 gets reward 2 once, then 0
    def step(s, a):
        s = torch.where(torch.isnan(s), a, s)
        first = torch.isclose(s[:, 1], torch.tensor(0.0))
        dies = s[:, 0] == 0.0
        reward = torch.where(dies, torch.where(first, 1.0, 100.0), torch.where(first, 2.0, 0.0))
        nxt = torch.stack([s[:, 0], s[:, 1] + 1], dim=1)
        return nxt, reward, torch.zeros(s.shape[0]), (dies & first)

    start = torch.tensor([[float("nan"), 0.0]])

    def policy_first(state):
        return torch.tensor([[0.0, 0.0], [1.0, 0.0]]) if torch.isnan(state[0, 0]) else state

    out = plan(start, step, policy_first, UPMPCConfig(candidates=2, horizon=4), "optimistic")
    assert torch.allclose(out.scores, torch.tensor([[1.0, 2.0]]))
    assert out.best.item() == 1


def _reference_scores(state, step_fn, actions, cfg, coef):
    """Per-row loop with Python floats: actions[h] are the planner's [N·K, A] actions."""
    n, k = state.shape[0], cfg.candidates
    scores = torch.zeros(n, k)
    for i in range(n):
        for j in range(k):
            s, alive, total = state[i : i + 1], 1.0, 0.0
            for h in range(cfg.horizon):
                a = actions[h][i * k + j : i * k + j + 1]
                s, r, u, t = step_fn(s, a)
                total += alive * (cfg.gamma_reward**h * r.item()
                                  + coef * cfg.gamma_uncertainty**h * u.item())
                alive *= 1.0 - float(t.item())
            scores[i, j] = total
    return scores


@pytest.mark.parametrize("mode", ["conservative", "optimistic"])
def test_batched_scores_equal_a_python_loop(mode):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 3, generator=g)
    B = torch.randn(2, 3, generator=g)
    w = torch.randn(3, generator=g)

    def step(s, a):
        nxt = torch.tanh(s @ A + a @ B)
        terminal = torch.sigmoid(4 * nxt[:, 0])  # a probability, not a bool
        return nxt, nxt @ w + a[:, 0], nxt.abs().mean(-1), terminal

    actions = []

    def policy(s):
        a = torch.tanh(s[:, :2]) + 0.3 * torch.randn(s.shape[0], 2, generator=g)
        actions.append(a)
        return a

    cfg = UPMPCConfig(candidates=4, horizon=5, gamma_reward=0.9, gamma_uncertainty=0.8,
                      lambda_conservative=1.5, lambda_optimistic=0.7)
    state = torch.randn(3, 3, generator=g)
    out = plan(state, step, policy, cfg, mode)
    coef = -1.5 if mode == "conservative" else 0.7
    ref = _reference_scores(state, step, actions, cfg, coef)
    assert torch.allclose(out.scores, ref, atol=1e-5)
    assert torch.equal(out.best, ref.argmax(1))
    assert torch.equal(out.action, out.candidates[torch.arange(3), ref.argmax(1)])


def test_upmpc_scores_hand_computed():
    r = torch.tensor([1.0, 2.0, 4.0])
    u = torch.tensor([1.0, 1.0, 1.0])
    t = torch.tensor([0.0, 0.5, 0.0])
    # 1·(1 − 2·1) + 1·(0.5·2 − 2·0.25) + 0.5·(0.25·4 − 2·0.0625)
    expect = -1.0 + 0.5 + 0.5 * (1.0 - 0.125)
    assert upmpc_scores(r, u, t, 0.5, 0.25, -2.0).item() == pytest.approx(expect)


def test_k1_returns_the_policys_action():
    def step(s, a):
        return s + a, a[:, 0], a.abs()[:, 0], torch.zeros(s.shape[0], dtype=torch.bool)

    def policy_with(g):
        return lambda s: torch.randn(s.shape[0], 1, generator=g)

    state = torch.randn(6, 1)
    out = plan(state, step, policy_with(torch.Generator().manual_seed(3)),
               UPMPCConfig(candidates=1), "optimistic")
    expect = policy_with(torch.Generator().manual_seed(3))(state)
    assert torch.equal(out.action, expect) and out.best.tolist() == [0] * 6


def test_nested_state_and_config_validation():
    nested = {"h": torch.arange(2.0)[:, None], "z": (torch.tensor([5, 6]),)}
    rep = repeat_rows(nested, 3)
    assert rep["h"][:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    assert rep["z"][0].tolist() == [5, 5, 5, 6, 6, 6]
    with pytest.raises(ValueError, match="candidates"):
        UPMPCConfig(candidates=0)
    with pytest.raises(ValueError, match="horizon"):
        UPMPCConfig(horizon=0)
    with pytest.raises(ValueError, match="gamma_reward"):
        UPMPCConfig(gamma_reward=1.5)
    with pytest.raises(ValueError, match="mode"):
        plan(torch.zeros(1, 1), None, None, UPMPCConfig(), "greedy")


def test_plans_with_the_ensemble_and_a_sac_policy():
    torch.manual_seed(0)
    model = EnsembleDynamics(3, 2, members=3, elites=2, hidden=16, layers=2)
    with torch.no_grad():  # identical members with ~0 variance: a deterministic model, u = 0
        for p in list(model.weights) + list(model.biases):
            p.copy_(p[:1].expand_as(p))
        model.min_logvar.fill_(-40.0)
        model.max_logvar.fill_(-30.0)
    g = torch.Generator().manual_seed(0)
    sac = SAC(3, 2, SACConfig(hidden=16), seed=0)
    actions = []

    def policy(s):
        actions.append(sac.act(s))
        return actions[-1]

    def step(s, a):
        return model.rollout_step(s, a, g)

    cfg = UPMPCConfig()
    state = torch.randn(4, 3, generator=g)
    out = plan(state, step, policy, cfg, "conservative")
    ref = _reference_scores(state, step, actions, cfg, -cfg.lambda_conservative)
    assert torch.allclose(out.scores, ref, atol=1e-4)
    assert out.action.shape == (4, 2) and out.model_steps == 4 * 5 * 5
    assert (out.action.abs() <= 1).all() and len(set(out.scores.flatten().tolist())) > 1
