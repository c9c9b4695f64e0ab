"""`run.precision`: fp32 (the default) or bf16 mixed precision for any agent.

bf16 runs the agent's tensor work under `torch.autocast(device, torch.bfloat16)`: matmuls and
convolutions (every Linear, conv, attention and scan product) take bfloat16 inputs, while
parameters, gradients, optimiser state and everything reverie computes a distribution or a
loss from stay float32: heads hand float32 logits to the distribution math
(`reverie.nets.math`, `reverie.behavior.distributions`), and torch keeps its losses in
float32 under autocast. Without a GradScaler: bfloat16 has float32's exponent range.

On a CPU with AMX or AVX512-BF16 (Xeon Sapphire Rapids and later; `lscpu | grep bf16`) a
bfloat16 matmul runs several times faster than a float32 one; on CPUs without them it is
emulated and slower. On CUDA it is the usual mixed precision of Ampere and later GPUs.
bench/precision.py measures the update on this machine; README, "Mixed precision".

It wraps the agent's `act`, `observe` and `update` (the methods the driver and
`reverie.load(...).act` call with tensor work), so agents need no code for it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from reverie.config import PRECISIONS

# the agent methods that run tensor work when the driver or a loaded policy calls them
AGENT_METHODS = ("act", "observe", "update")


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The context of `precision` on `device`: bf16 -> torch.autocast, fp32 -> nothing."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")


def use_precision(agent: Any, device: torch.device, precision: str) -> Any:
    """Run the agent's `AGENT_METHODS` under `autocast(device, precision)`; fp32 leaves the
    agent as it is. Returns the agent."""
    autocast(device, precision)  # an unknown precision fails here, before any wrapping
    if precision == "fp32":
        return agent
    for name in AGENT_METHODS:
        method = getattr(agent, name, None)
        if method is not None:
            setattr(agent, name, _under(method, device, precision))
    return agent


def _under(method: Callable, device: torch.device, precision: str) -> Callable:
    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with autocast(device, precision):
            return method(*args, **kwargs)

    return run
