"""COPlanner (Wang et al., ICLR 2024) inside the imagination agent (its DreamerV3 variant).

    conservative (modes conservative | coplanner): every imagined step of the actor-critic's
        rollouts takes the best of K actor candidates under UP-MPC with −λ_c·u, so the
        rollouts the policy learns from steer away from transitions the model is unsure of;
    optimistic (modes optimistic | coplanner): `act(..., explore=True)` takes the best of K
        candidates with +λ_o·u, so the real env is explored where the model is unsure;
        greedy acting (`explore=False`) is unchanged.

The lookahead from (z_t, h_{t−1}, backbone state) rolls the world model H steps:
a ~ π(feat(z, h_{t−1})), u = disagreement heads on (feat, a), h_t = imagine_step(z, a),
r̂ = reward(h_t), terminal = 1 − cont(h_t), z ~ prior(h_t); `planning.upmpc.plan` repeats
the state K times (rows x candidates as one batch, any backbone's state) and scores it.

Policy gradient on planned rollouts: the actor-critic is trained on the chosen trajectory
as on a plain one, with log π(a_chosen | s). The chosen action is drawn from the planner's
best-of-K distribution μ, not from π, and no importance weight π/μ is applied (μ has no
closed form). So the actor's REINFORCE term E_μ[∇log π · A] is not π's own policy gradient:
it moves π toward the actions the planner prefers that also have positive advantage, much
like advantage-weighted imitation of the planner, and the critic learns the value of the
planner's behaviour. This is what COPlanner does (the planner generates the model rollouts
the policy learns from); with K = 1 it is exactly the plain on-policy update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reverie.config import off_spelling
from reverie.errors import suggest
from reverie.nets.optim import adam
from reverie.planning.upmpc import PlanResult, UPMPCConfig, plan
from reverie.sequence import State
from reverie.world.disagreement import DisagreementHeads, transition_pairs
from reverie.world.latent import WorldModel

MODES = ("off", "conservative", "optimistic", "coplanner")


@dataclass
class CoplannerConfig:
    """COPlanner's defaults with DreamerV3 (K=4, H=4, λ_c=λ_o=0.5, 8 heads)."""

    mode: str = "off"  # off | conservative | optimistic | coplanner (both)
    heads: int = 8
    head_hidden: int = 256
    head_layers: int = 2
    candidates: int = 4  # K
    horizon: int = 4  # H
    lambda_conservative: float = 0.5  # λ_c, penalty in imagination
    lambda_optimistic: float = 0.5  # λ_o, bonus when acting
    gamma_reward: float | None = None  # γ_r; None: the behaviour's γ
    gamma_uncertainty: float | None = None  # γ_u; None: the behaviour's γ
    lr: float = 3e-4  # the heads' Adam
    grad_clip: float = 100.0


def mode_of(cfg: Any) -> str:
    """The mode of a config that may not have passed through `build_config` (a bare `off`
    read by YAML as false)."""
    return off_spelling(cfg.mode)


def check_config(cfg: Any) -> None:
    """Raise ValueError naming the fix (keys as `imagine.coplanner.*`)."""
    mode = mode_of(cfg)
    if mode not in MODES:
        raise ValueError(f"imagine.coplanner.mode must be one of {', '.join(MODES)}, got "
                         f"{mode!r}" + suggest(mode, MODES))
    if int(cfg.heads) < 2:
        raise ValueError(f"imagine.coplanner.heads must be >= 2 (u is their spread), got "
                         f"{cfg.heads}; use 8")
    for name, low in (("head_hidden", 1), ("head_layers", 0), ("candidates", 1),
                      ("horizon", 1)):
        if int(getattr(cfg, name)) < low:
            raise ValueError(f"imagine.coplanner.{name} must be >= {low}, got "
                             f"{getattr(cfg, name)}; the default is "
                             f"{getattr(CoplannerConfig, name)}")
    for name in ("lambda_conservative", "lambda_optimistic"):
        value = float(getattr(cfg, name))
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"imagine.coplanner.{name} must be >= 0 (the mode sets the sign), "
                             f"got {value}; use 0.5")
    for name in ("gamma_reward", "gamma_uncertainty"):
        value = getattr(cfg, name)
        if value is not None and not 0.0 < float(value) <= 1.0:
            raise ValueError(f"imagine.coplanner.{name} must be in (0, 1] or null (the "
                             f"behaviour's gamma), got {value}")
    for name in ("lr", "grad_clip"):
        value = float(getattr(cfg, name))
        if not (math.isfinite(value) and value > 0.0):
            raise ValueError(f"imagine.coplanner.{name} must be positive, got {value}")


class LatentCoplanner:
    """Disagreement heads (and their optimiser) plus UP-MPC on the latent world model."""

    def __init__(
        self, world: WorldModel, actor: nn.Module, cfg: CoplannerConfig, gamma: float,
        device: torch.device,
    ) -> None:
        check_config(cfg)
        self.world, self.actor = world, actor
        self.conservative = mode_of(cfg) in ("conservative", "coplanner")
        self.optimistic = mode_of(cfg) in ("optimistic", "coplanner")
        self.heads = DisagreementHeads(
            world.feat_dim + world.action_dim, world.stoch, world.classes,
            int(cfg.heads), int(cfg.head_hidden), int(cfg.head_layers),
        ).to(device)
        self.lr, self.grad_clip = float(cfg.lr), float(cfg.grad_clip)
        self.opt = adam(self.heads.parameters(), self.lr)
        self.upmpc = UPMPCConfig(
            candidates=int(cfg.candidates),
            horizon=int(cfg.horizon),
            gamma_reward=float(gamma if cfg.gamma_reward is None else cfg.gamma_reward),
            gamma_uncertainty=float(
                gamma if cfg.gamma_uncertainty is None else cfg.gamma_uncertainty),
            lambda_conservative=float(cfg.lambda_conservative),
            lambda_optimistic=float(cfg.lambda_optimistic),
        )
        # planner model steps since the last update's metrics (imagination, acting)
        self.imagine_model_steps = self.act_model_steps = 0

    # -- the model as UP-MPC sees it ----------------------------------------------------
    def env_action(self, raw: Tensor) -> Tensor:
        """The actor's raw sample -> the action the model and env take ([−1, 1] clip)."""
        return raw if self.world.discrete else raw.clamp(-1.0, 1.0)

    def uncertainty(self, z: Tensor, h_prev: Tensor, action: Tensor) -> Tensor:
        """u of the transition (z_t, h_{t−1}, a_t): [..., ·] -> [...]."""
        x = torch.cat([self.world.feat(z, h_prev), self.world.action_input(action)], -1)
        return self.heads.disagreement(x)

    def _policy(self, s: dict[str, Any]) -> Tensor:
        return self.actor.sample(self.world.feat(s["z"], s["h"]), index=s.get("index"))[1]

    def _step(self, s: dict[str, Any], raw: Tensor, with_u: bool) -> tuple[Any, ...]:
        world, action = self.world, self.env_action(raw)
        if with_u:
            u = self.uncertainty(s["z"], s["h"], action)
        else:  # λ = 0: the heads' output would be multiplied by 0
            u = torch.zeros(raw.shape[0], device=raw.device)
        h, state = world.imagine_step(s["z"], action, s["state"], s.get("index"))
        z, index = world.prior_sample(h)
        nxt = {"z": z, "h": h, "state": state}
        if "index" in s:
            nxt["index"] = index
        return nxt, world.reward(h), u, 1.0 - world.cont(h)

    @torch.no_grad()
    def plan(
        self, z: Tensor, h_prev: Tensor, state: State, mode: str, index: Tensor | None = None
    ) -> PlanResult:
        """Best of K candidates at N states (`mode` conservative | optimistic); its
        `action` is the actor's raw sample (apply `env_action` before stepping). `index`:
        the columns of z's ones (`WorldModel.sample_index`), for the one-hot layers."""
        lam = (self.upmpc.lambda_conservative if mode == "conservative"
               else self.upmpc.lambda_optimistic)
        start = {"z": z, "h": h_prev, "state": state}
        if index is not None:
            start["index"] = index
        return plan(
            start,
            lambda s, a: self._step(s, a, lam != 0.0),
            self._policy, self.upmpc, mode,
        )

    # -- learning -----------------------------------------------------------------------
    def train(self, aux: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, float]:
        """One step of the heads on the world-model batch (`aux` of `WorldModel.loss`)."""
        z, h_prev, action, target, mask = transition_pairs(
            aux["z"], aux["h"], aux["post"], self.world.action_input(batch["action"]),
            batch["reset"].bool(),
        )
        x = torch.cat([self.world.feat(z, h_prev), action], -1)
        losses = self.heads.loss(x, target, mask)
        self.opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # heads are independent: each gets its own loss's gradient
        grad_norm = nn.utils.clip_grad_norm_(self.heads.parameters(), self.grad_clip)
        self.opt.step()
        return {"coplanner/head_loss": losses.mean().item(),
                "coplanner/head_grad_norm": grad_norm.item()}

    def set_lr_fraction(self, frac: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.lr * frac

    def state_dict(self) -> dict[str, Any]:
        return {
            "heads": self.heads.state_dict(),
            "opt": self.opt.state_dict(),
            "act_model_steps": torch.tensor(self.act_model_steps, dtype=torch.long),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.heads.load_state_dict(d["heads"])
        self.opt.load_state_dict(d["opt"])
        self.act_model_steps = int(d["act_model_steps"])
