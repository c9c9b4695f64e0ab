"""Action distributions of an on-policy agent, one per supported Gymnasium action space.

* `Discrete(n)`          -> `Categorical`: logits [..., n], action int64 [...]
* `MultiDiscrete(nvec)`  -> `MultiCategorical`: independent categoricals, one per
  component; logits [..., Σ nvec], action int64 [..., K]; log-prob and entropy are the
  sums over the components
* `Box(-1, 1, (d,))`     -> `DiagGaussian`: mean [..., d] from the network and a learned,
  state-independent log-std [d] (CleanRL / PPO's continuous-control setting); action
  float [..., d]. `sample` is NOT clipped: the env side clips to [-1, 1] and PPO keeps the
  log-prob of the unclipped sample, so the ratio is taken on the density that was sampled.

`ActionHead` maps features to the distribution of its space; `action_features` encodes
an action as the vector a memory sees as "previous action" (one-hot / raw).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import Tensor, nn

from reverie.nets.math import full


def _sample_index(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row of softmax(logits): logits [..., n] -> int64 [...]."""
    probs = torch.softmax(logits.detach().float(), dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    draw = torch.multinomial(flat, 1, generator=generator)
    return draw.view(probs.shape[:-1])


class Categorical:
    """Softmax distribution over n actions; logits: [..., n]."""

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits - logits.logsumexp(-1, keepdim=True)  # normalised log-probs

    def log_prob(self, action: Tensor) -> Tensor:
        """action: int [...] -> log π(a): [...]."""
        return self.logits.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> Tensor:
        """−Σ p log p: [...]."""
        return -(self.logits.exp() * self.logits).sum(-1)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """int64 [...]."""
        return _sample_index(self.logits, generator)

    def mode(self) -> Tensor:
        """The most likely action, int64 [...]."""
        return self.logits.argmax(-1)


class MultiCategorical:
    """K independent categoricals; logits: [..., Σ nvec], split in the order of nvec."""

    def __init__(self, logits: Tensor, nvec: tuple[int, ...]) -> None:
        if logits.shape[-1] != sum(nvec):
            raise ValueError(f"logits have {logits.shape[-1]} entries, nvec {nvec} needs "
                             f"{sum(nvec)}")
        self.parts = [Categorical(x) for x in logits.split(list(nvec), dim=-1)]

    def log_prob(self, action: Tensor) -> Tensor:
        """action: int [..., K] -> Σ_k log π_k(a_k): [...]."""
        return sum(p.log_prob(action[..., k]) for k, p in enumerate(self.parts))

    def entropy(self) -> Tensor:
        """Σ_k H_k: [...]."""
        return sum(p.entropy() for p in self.parts)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """int64 [..., K]."""
        return torch.stack([p.sample(generator) for p in self.parts], dim=-1)

    def mode(self) -> Tensor:
        """int64 [..., K]."""
        return torch.stack([p.mode() for p in self.parts], dim=-1)


class DiagGaussian:
    """N(mean, diag(exp(log_std))²); mean: [..., d], log_std broadcastable to it."""

    def __init__(self, mean: Tensor, log_std: Tensor) -> None:
        self.mean = mean
        self.log_std = log_std.expand_as(mean)

    def log_prob(self, action: Tensor) -> Tensor:
        """action: [..., d] (the unclipped sample) -> Σ_i log N(a_i; μ_i, σ_i): [...]."""
        z = (action - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z**2 - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> Tensor:
        """Σ_i (½ log(2πe) + log σ_i): [...]."""
        return (0.5 * math.log(2 * math.pi * math.e) + self.log_std).sum(-1)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """mean + σ ε, ε ~ N(0, I): [..., d], not clipped."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device,
                          dtype=self.mean.dtype)
        return (self.mean + self.log_std.exp() * eps).detach()

    def mode(self) -> Tensor:
        """The mean: [..., d]."""
        return self.mean


Distribution = Categorical | MultiCategorical | DiagGaussian


def _check_space(space: spaces.Space) -> None:
    if isinstance(space, spaces.Discrete):
        return
    if isinstance(space, spaces.MultiDiscrete) and len(space.nvec.shape) == 1:
        return
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        return
    raise ValueError(f"no action distribution for {space}; supported: Discrete, 1-D "
                     "MultiDiscrete and 1-D Box")


def action_logits_size(space: spaces.Space) -> int:
    """How many outputs the policy network needs for `space`."""
    _check_space(space)
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(space.nvec.sum())
    return int(space.shape[0])


class ActionHead(nn.Module):
    """Linear map from features [..., F] to the action distribution of `space`.

    Weights are orthogonal with gain 0.01 and biases 0 (CleanRL), so the initial policy
    is near uniform / near zero-mean; a Box space adds the learned log-std [d], init
    `init_log_std`.
    """

    def __init__(self, space: spaces.Space, in_features: int, init_log_std: float = 0.0) -> None:
        super().__init__()
        self.space = space
        self.linear = nn.Linear(in_features, action_logits_size(space))
        nn.init.orthogonal_(self.linear.weight, gain=0.01)
        nn.init.zeros_(self.linear.bias)
        if isinstance(space, spaces.Box):
            self.log_std = nn.Parameter(torch.full((space.shape[0],), float(init_log_std)))
        self.nvec = (tuple(int(n) for n in space.nvec)
                     if isinstance(space, spaces.MultiDiscrete) else None)

    def forward(self, features: Tensor) -> Distribution:
        out = full(self.linear(features))  # float32 logits/means, also under bf16 autocast
        if isinstance(self.space, spaces.Discrete):
            return Categorical(out)
        if self.nvec is not None:
            return MultiCategorical(out, self.nvec)
        return DiagGaussian(out, self.log_std)


def action_features_size(space: spaces.Space) -> int:
    """Width of `action_features(·, space)`."""
    return action_logits_size(space)


def action_features(action: Tensor, space: spaces.Space) -> Tensor:
    """The action as a float vector for a memory input: [...] or [..., K] or [..., d] ->
    [..., A]; one-hot for Discrete, concatenated one-hots for MultiDiscrete (components
    counted from the space's `start`), the clipped value itself for Box."""
    _check_space(space)
    if isinstance(space, spaces.Discrete):
        return F.one_hot(action.long() - int(space.start), int(space.n)).float()
    if isinstance(space, spaces.MultiDiscrete):
        a = action.long() - torch.as_tensor(space.start, device=action.device).long()
        parts = [F.one_hot(a[..., k], int(n)) for k, n in enumerate(space.nvec)]
        return torch.cat(parts, dim=-1).float()
    return action.float().clamp(-1.0, 1.0)
