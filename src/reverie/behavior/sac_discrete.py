"""Soft actor-critic for discrete actions (Christodoulou, 2019, "Soft actor-critic for
discrete action settings").

With n actions the policy is a categorical π(·|s) and the critics output Q_i(s, ·) for all
actions at once, so the expectations over actions that continuous SAC samples are exact sums:
    V̄(s')   = Σ_a π(a|s') [min_i Q̄_i(s', a) − α log π(a|s')]                   (eq. 10)
    y        = r + γ (1 − d) V̄(s')
    actor    = mean_s Σ_a π(a|s) [α log π(a|s) − min_i Q_i(s, a)]                (eq. 12)
    α-loss   = −mean log α · (Σ_a π log π + H̄),  H̄ = 0.98 log n                 (§4)
Everything else (update order, Polyak targets, checkpoint) is `SAC`'s.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.behavior.sac import SAC, relu_mlp


def discrete_soft_value(q1: Tensor, q2: Tensor, logits: Tensor, alpha: float | Tensor) -> Tensor:
    """Σ_a π(a) [min(Q_1, Q_2)(a) − α log π(a)] for `q1, q2, logits: [B, n]` -> [B]."""
    log_pi = F.log_softmax(logits, dim=-1)
    return (log_pi.exp() * (torch.minimum(q1, q2) - alpha * log_pi)).sum(-1)


class CategoricalActor(nn.Module):
    """π(·|s) = softmax(MLP(s)) over n actions."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.net = relu_mlp(obs_dim, n_actions, hidden, layers)

    def forward(self, obs: Tensor) -> Tensor:
        """obs: [B, O] -> logits [B, n]."""
        return self.net(obs)


class TwinQDiscrete(nn.Module):
    """Q_1, Q_2(s, ·): one output per action."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.q1 = relu_mlp(obs_dim, n_actions, hidden, layers)
        self.q2 = relu_mlp(obs_dim, n_actions, hidden, layers)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs: [B, O] -> (Q_1 [B, n], Q_2 [B, n])."""
        return self.q1(obs), self.q2(obs)


class DiscreteSAC(SAC):
    """SAC over `action_dim` = n discrete actions; batches carry `action: [B]` indices."""

    @staticmethod
    def default_target_entropy(action_dim: int) -> float:
        """H̄ = 0.98 · log n, 98% of the uniform policy's entropy (Christodoulou, §4)."""
        return 0.98 * math.log(action_dim)

    def build_networks(self, obs_dim: int, action_dim: int) -> tuple[nn.Module, nn.Module]:
        if action_dim < 2:
            raise ValueError(f"discrete SAC needs at least 2 actions, got {action_dim}")
        cfg = self.cfg
        return (
            CategoricalActor(obs_dim, action_dim, cfg.hidden, cfg.layers),
            TwinQDiscrete(obs_dim, action_dim, cfg.hidden, cfg.layers),
        )

    @torch.no_grad()
    def act(self, obs: Tensor | np.ndarray, explore: bool = True) -> Tensor:
        """obs: [B, O] -> action [B] long: a sample of π, or its mode when not exploring."""
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        logits = self.actor(obs)
        if not explore:
            return logits.argmax(-1)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]

    def critic_values(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        index = action.long().reshape(-1, 1)
        q1, q2 = self.critic(obs)
        return q1.gather(1, index)[:, 0], q2.gather(1, index)[:, 0]

    def critic_target_value(self, batch: dict[str, Tensor], alpha: Tensor) -> Tensor:
        with torch.no_grad():
            q1, q2 = self.critic_target(batch["next_obs"])
            value = discrete_soft_value(q1, q2, self.actor(batch["next_obs"]), alpha)
            return batch["reward"] + self.cfg.gamma * (1.0 - batch["done"]) * value

    def actor_loss(self, obs: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """(policy loss, Σ_a π log π [B], the exact negative entropy)."""
        log_pi = F.log_softmax(self.actor(obs), dim=-1)
        pi = log_pi.exp()
        with torch.no_grad():
            q1, q2 = self.critic(obs)
        loss = (pi * (alpha * log_pi - torch.minimum(q1, q2))).sum(-1).mean()
        return loss, (pi * log_pi).sum(-1)
