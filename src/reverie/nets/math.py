"""Numerics shared by world models and critics (DreamerV3 §"Robust predictions").

* `symlog` / `symexp` compress large magnitudes so one network predicts rewards and
  values of any scale;
* `two_hot` / `two_hot_mean` turn a scalar regression into classification over fixed
  bins that are uniform in symlog space (`symlog_bins`, limit ±20 as in DreamerV3/STORM);
* `categorical_kl`, `unimix` operate on factored categorical latents
  `logits: [..., stoch, classes]`.

All functions are pure and differentiable where it makes sense; shapes in docstrings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reverie.sequence.base import full  # noqa: F401  (re-exported: heads and losses use it)


def symlog(x: Tensor) -> Tensor:
    """sign(x) · log(1 + |x|), elementwise."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """sign(x) · (exp(|x|) − 1), the inverse of `symlog`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def symlog_bins(n: int, limit: float = 20.0, device: torch.device | None = None) -> Tensor:
    """`n` bin centres uniform on [−limit, limit] (symlog space): [n].

    For odd `n` the bins are built as an exact mirror image around an exact 0, so that a
    uniform distribution decodes to exactly 0 (zero-initialised reward/value heads then
    predict exactly 0, see `two_hot_mean`).
    """
    if n < 2:
        raise ValueError(f"two-hot needs at least 2 bins, got {n}; use e.g. 255")
    if n % 2 == 1:
        half = torch.linspace(0.0, limit, (n + 1) // 2, device=device)
        return torch.cat([-half[1:].flip(0), half])
    return torch.linspace(-limit, limit, n, device=device)


def two_hot(x: Tensor, bins: Tensor) -> Tensor:
    """Two-hot encoding of `x: [...]` over sorted `bins: [n]` -> weights `[..., n]`.

    The mass is split between the two neighbouring bins in proportion to closeness, so
    `(two_hot(x) * bins).sum(-1) == x` for x inside the bin range; values outside are
    clipped to the end bins. `x` must already be in the bins' space (symlog for rewards).
    """
    n = bins.shape[0]
    x = x.clamp(bins[0], bins[-1])
    # index k of the lower neighbour, so that bins[k] <= x < bins[k+1] (k <= n-2)
    k = (torch.searchsorted(bins, x.detach().contiguous(), right=True) - 1).clamp(0, n - 2)
    lo, hi = bins[k], bins[k + 1]
    w_hi = (x - lo) / (hi - lo)
    w_lo = 1.0 - w_hi
    out = torch.zeros(*x.shape, n, dtype=x.dtype, device=x.device)
    out.scatter_(-1, k.unsqueeze(-1), w_lo.unsqueeze(-1))
    # scatter_add: when w_hi == 0 and k+1 is a real bin the lower weight stays intact
    out.scatter_add_(-1, (k + 1).unsqueeze(-1), w_hi.unsqueeze(-1))
    return out


def two_hot_mean(logits: Tensor, bins: Tensor) -> Tensor:
    """Expected bin value under softmax(logits): `logits: [..., n]` -> `[...]`.

    For odd `n` the two halves are summed mirror-pairwise (DreamerV3 does the same) so
    that equal probabilities over symmetric bins give exactly 0, not a rounding residue.
    """
    probs = torch.softmax(full(logits), dim=-1)
    n = bins.shape[0]
    if n % 2 == 0:
        return (probs * bins).sum(-1)
    m = n // 2
    weighted = probs * bins
    left, centre, right = weighted[..., :m], weighted[..., m], weighted[..., m + 1 :]
    return centre + (left.flip(-1) + right).sum(-1)


def two_hot_loss(logits: Tensor, target: Tensor, bins: Tensor) -> Tensor:
    """Cross-entropy of `logits: [..., n]` against `two_hot(target: [...])` -> `[...]`."""
    return -(two_hot(target, bins) * F.log_softmax(full(logits), dim=-1)).sum(-1)


def two_hot_value(logits: Tensor, bins: Tensor) -> Tensor:
    """The predicted value in original units: symexp of the two-hot mean in symlog space."""
    return symexp(two_hot_mean(logits, bins))


def unimix(logits: Tensor, mix: float) -> Tensor:
    """Mix `mix` of the uniform distribution into softmax(logits) over the last axis.

    Returns log-probabilities (valid logits). Keeps every class probability >= mix/K so
    KL terms and log-likelihoods stay bounded (DreamerV3: 1%).
    """
    if not 0.0 <= mix < 1.0:
        raise ValueError(f"unimix must be in [0, 1), got {mix}; use 0.01")
    logits = full(logits)
    if mix == 0.0:
        return F.log_softmax(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    probs = (1.0 - mix) * probs + mix / logits.shape[-1]
    return torch.log(probs)


def categorical_kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p || q) of factored categoricals `[..., stoch, classes]`, summed over stoch: `[...]`."""
    log_p = F.log_softmax(full(p_logits), dim=-1)
    log_q = F.log_softmax(full(q_logits), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=(-2, -1))


def categorical_entropy(logits: Tensor) -> Tensor:
    """Entropy of factored categoricals `[..., stoch, classes]`, summed over stoch: `[...]`."""
    log_p = F.log_softmax(full(logits), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=(-2, -1))
