"""COPlanner's uncertainty-aware policy-guided MPC (UP-MPC; Wang et al., ICLR 2024, §4.1).

At each of N states: draw K candidate first actions from the policy, roll every candidate
H steps in the learned model (later actions from the policy too) and score it

    score_k = Σ_{h<H} w_h [γ_r^h r̂_h + sign · λ γ_u^h u_h],   w_h = Π_{j<h} (1 − term_j)

sign = −1, λ = λ_c when generating model rollouts (conservative: avoid model error) and
sign = +1, λ = λ_o when acting in the real env (optimistic: seek what the model does not
know). w_h drops everything after a predicted termination (the step that terminates still
counts). The best candidate's first action is executed.

The planner knows nothing of ensembles or latents: it takes two callables,

    step_fn(state, action) -> (next_state, reward [B], uncertainty [B], terminal [B])
    policy_fn(state) -> action [B, ...]

where `terminal` is bool or a probability in [0, 1] and `state` is a batch-first tensor, or a
tuple/list/dict of them (e.g. a latent world model's recurrent state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

MODES = ("conservative", "optimistic")


@dataclass
class UPMPCConfig:
    """COPlanner's defaults with MBPO (MuJoCo / DMC)."""

    candidates: int = 5  # K
    horizon: int = 5  # H
    gamma_reward: float = 0.97  # γ_r
    gamma_uncertainty: float = 0.97  # γ_u
    lambda_conservative: float = 2.0  # λ_c, penalty in model rollouts
    lambda_optimistic: float = 1.0  # λ_o, bonus in the real env

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError(f"UP-MPC candidates (K) must be >= 1, got {self.candidates}; use 5")
        if self.horizon < 1:
            raise ValueError(f"UP-MPC horizon (H) must be >= 1, got {self.horizon}; use 5")
        for name in ("gamma_reward", "gamma_uncertainty"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"UP-MPC {name} must be in (0, 1], got {getattr(self, name)}; "
                                 "use 0.97")
        for name in ("lambda_conservative", "lambda_optimistic"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"UP-MPC {name} must be >= 0 (the mode sets the sign), got "
                                 f"{getattr(self, name)}")


class StepFn(Protocol):
    def __call__(self, state: Any, action: Tensor) -> tuple[Any, Tensor, Tensor, Tensor]: ...


class PolicyFn(Protocol):
    def __call__(self, state: Any) -> Tensor: ...


class PlanResult(NamedTuple):
    action: Tensor  # [N, ...] the best candidate's first action per state
    best: Tensor  # [N] long, index of that candidate
    scores: Tensor  # [N, K]
    candidates: Tensor  # [N, K, ...] every candidate first action
    model_steps: int  # extra model evaluations spent: N · K · H


def upmpc_scores(
    reward: Tensor,
    uncertainty: Tensor,
    terminal: Tensor,
    gamma_reward: float,
    gamma_uncertainty: float,
    coef: float,
) -> Tensor:
    """Σ_h w_h (γ_r^h r_h + coef γ_u^h u_h): reward, uncertainty, terminal `[H, ...]` -> [...].

    `coef` = −λ_c (conservative) or +λ_o (optimistic); `terminal` is bool or a probability.
    """
    h = reward.shape[0]
    shape = (h,) + (1,) * (reward.dim() - 1)
    steps = torch.arange(h, dtype=reward.dtype, device=reward.device).reshape(shape)
    cont = 1.0 - terminal.to(reward.dtype)
    alive = torch.cumprod(torch.cat([torch.ones_like(cont[:1]), cont[:-1]]), dim=0)
    per_step = gamma_reward**steps * reward + coef * gamma_uncertainty**steps * uncertainty
    return (alive * per_step).sum(0)


def repeat_rows(state: Any, k: int) -> Any:
    """Repeat every batch row k times in place order (row n becomes rows n·k .. n·k + k − 1)
    for a tensor or a tuple/list/dict of them."""
    if isinstance(state, Tensor):
        return state.repeat_interleave(k, dim=0)
    if isinstance(state, dict):
        return {key: repeat_rows(v, k) for key, v in state.items()}
    if isinstance(state, (tuple, list)):
        return type(state)(repeat_rows(v, k) for v in state)
    raise TypeError(f"UP-MPC state must be a tensor or a tuple/list/dict of them, got {state!r}")


def _batch_size(state: Any) -> int:
    if isinstance(state, Tensor):
        return state.shape[0]
    first = next(iter(state.values() if isinstance(state, dict) else state))
    return _batch_size(first)


@torch.no_grad()
def plan(
    state: Any,
    step_fn: StepFn,
    policy_fn: PolicyFn,
    cfg: UPMPCConfig,
    mode: str,
) -> PlanResult:
    """UP-MPC at N states (batch-first `state`): the best of K policy candidates each."""
    if mode not in MODES:
        raise ValueError(f"UP-MPC mode must be one of {MODES}, got {mode!r}")
    coef = -cfg.lambda_conservative if mode == "conservative" else cfg.lambda_optimistic
    n, k = _batch_size(state), cfg.candidates
    state = repeat_rows(state, k)  # [N·K, ...]
    first = policy_fn(state)
    action = first
    rewards, uncertainties, terminals = [], [], []
    for h in range(cfg.horizon):
        if h > 0:
            action = policy_fn(state)
        state, reward, uncertainty, terminal = step_fn(state, action)
        rewards.append(reward.reshape(n, k))
        uncertainties.append(uncertainty.reshape(n, k))
        terminals.append(terminal.reshape(n, k))
    scores = upmpc_scores(
        torch.stack(rewards), torch.stack(uncertainties), torch.stack(terminals),
        cfg.gamma_reward, cfg.gamma_uncertainty, coef,
    )
    best = scores.argmax(dim=1)
    candidates = first.reshape(n, k, *first.shape[1:])
    return PlanResult(
        action=candidates[torch.arange(n, device=best.device), best],
        best=best,
        scores=scores,
        candidates=candidates,
        model_steps=n * k * cfg.horizon,
    )
