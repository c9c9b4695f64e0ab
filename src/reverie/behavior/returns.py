"""λ-returns and the percentile return normaliser of DreamerV3 / Drama.

Time runs along dim 1 everywhere here (`[B, H]`), matching the imagined trajectory
after it is transposed from the `[H, B]` layout the rollout loop builds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def lambda_returns(
    reward: Tensor, cont: Tensor, value: Tensor, gamma: float, lam: float
) -> Tensor:
    """TD(λ) returns of an imagined trajectory, computed backwards in time.

    R_t = r_t + γ c_t ((1 − λ) V_{t+1} + λ R_{t+1}),   R_H = V_H   (DreamerV3 eq. 7)

    reward: [B, H] reward received after the action at step t; cont: [B, H] predicted
    probability that the episode continues after step t (so γ c_t is the discount);
    value: [B, H+1] bootstrap values of the states 0..H. Returns [B, H].
    λ = 1 gives the discounted reward sum plus the discounted bootstrap V_H; λ = 0 gives
    the one-step TD target r_t + γ c_t V_{t+1}.
    """
    if reward.shape != cont.shape:
        raise ValueError(
            f"reward {tuple(reward.shape)} and cont {tuple(cont.shape)} must both be [B, H]"
        )
    B, H = reward.shape
    if value.shape != (B, H + 1):
        raise ValueError(
            f"value must be [B, H+1] = {(B, H + 1)} (one bootstrap per state, including "
            f"the last), got {tuple(value.shape)}"
        )
    disc = gamma * cont
    # The non-recursive part of every step in one vector op; only the λ-chain stays a loop.
    base = reward + disc * (1.0 - lam) * value[:, 1:]
    ret = value[:, -1]
    out = []
    for t in reversed(range(H)):
        ret = base[:, t] + disc[:, t] * lam * ret
        out.append(ret)
    return torch.stack(out[::-1], dim=1)


class ReturnNormalizer(nn.Module):
    """EMA of the low/high percentiles of the λ-returns; advantages are divided by
    `scale = max(1, high − low)` (DreamerV3 §"Robust predictions"; Drama uses 5–95).

    The EMA is bias-corrected (divided by 1 − decay^n), so the first update gives the
    batch percentiles exactly instead of a value shrunk toward zero; a plain EMA from 0
    would leave the scale at its floor of 1 for the first ~100 updates whatever the
    reward magnitude. All state is in buffers, so it checkpoints as plain tensors.
    """

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"return_norm_decay must be in [0, 1), got {decay}")
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(
                f"return-normaliser percentiles need 0 <= low < high <= 1, got {low}, {high}"
            )
        self.decay = decay
        self.q = (low, high)
        self.register_buffer("ema", torch.zeros(2))  # biased EMA of (low, high)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, returns: Tensor) -> None:
        """Fold the percentiles of `returns` (any shape) into the EMA."""
        x = returns.detach().reshape(-1).float()
        # torch.quantile uses linear interpolation, the same rule as numpy's default.
        q = torch.quantile(x, torch.tensor(self.q, device=x.device))
        self.ema.mul_(self.decay).add_((1.0 - self.decay) * q.to(self.ema))
        self.count.add_(1)

    def percentiles(self) -> Tensor:
        """Bias-corrected (low, high): [2]; zeros before the first update."""
        n = int(self.count)
        if n == 0:
            return torch.zeros_like(self.ema)
        return self.ema / (1.0 - self.decay**n)

    def scale(self) -> Tensor:
        """max(1, high − low): a scalar tensor."""
        low, high = self.percentiles()
        return torch.clamp(high - low, min=1.0)
