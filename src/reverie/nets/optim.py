"""Optimisers of the world-model agents: Adam (STORM) and LaProp (Drama's code).

LaProp (Ziyin et al., 2020) normalises the gradient by its running RMS *before* momentum,
where Adam normalises the momentum afterwards:

    v_t = β2 v_{t-1} + (1 − β2) g_t²
    m_t = β1 m_{t-1} + (1 − β1) g_t / (sqrt(v_t / (1 − β2^t)) + ε)
    θ_t = θ_{t-1} − lr · m_t / (1 − β1^t)

so the first step is θ − lr · g / (|g| + ε) exactly, and ε can be tiny (Drama: 1e-20)
without the update blowing up when the momentum and the RMS disagree.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

OPTIMIZERS = ("adam", "laprop")


class LaProp(torch.optim.Optimizer):
    """LaProp with bias correction of both moments; see the module docstring."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 4e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-20,
    ) -> None:
        if lr <= 0.0:
            raise ValueError(f"LaProp lr must be positive, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"LaProp betas must be in [0, 1), got {betas}")
        if eps < 0.0:
            raise ValueError(f"LaProp eps must be >= 0, got {eps}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's Optimizer signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    # a tensor step keeps the state loadable with weights_only=True
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                g = p.grad
                v, m = state["exp_avg_sq"], state["exp_avg"]
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                denom = (v / (1.0 - beta2**t)).sqrt_().add_(group["eps"])
                m.mul_(beta1).add_(g / denom, alpha=1.0 - beta1)
                p.add_(m, alpha=-group["lr"] / (1.0 - beta1**t))
        return loss


def adam(params: Iterable[Tensor], lr: float, eps: float = 1e-8) -> torch.optim.Adam:
    """Adam, fused (one kernel over all parameters) where every parameter is on CPU or
    CUDA: the same algorithm as torch's per-parameter loop, equal up to float rounding, ~3x
    less optimiser time on this CPU (bench/optimizer.py). The flag is saved with the
    optimiser's state, so a checkpoint from before keeps its per-parameter loop on resume."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=fused or None)


def make_optimizer(
    name: str, params: Iterable[Tensor], lr: float, eps: float
) -> torch.optim.Optimizer:
    """`name` in OPTIMIZERS; betas are (0.9, 0.999) for both."""
    if name == "adam":
        return adam(params, lr, eps)
    if name == "laprop":
        return LaProp(params, lr=lr, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
