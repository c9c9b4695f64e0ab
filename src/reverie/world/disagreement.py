"""Plan2Explore-style disagreement heads: COPlanner's uncertainty on a latent world model.

E small MLPs each predict the next stochastic latent z_{t+1} from the transition's input
(h_{t−1}, z_t, a_t), i.e. from cat([feat(z_t, h_{t−1}), a_t]) — exactly what the world model
sees when it steps ([z_t, a_t] into the backbone whose state ends in h_{t−1}) and then
predicts p(z_{t+1} | h_t). (DreamerV3's indexing calls the same triple (h_t, z_t, a_t).)

Each head outputs logits over the 32x32 (stoch x classes) categorical and is trained by
cross-entropy against sg(q(z_{t+1} | o_{t+1})), the world model's posterior *probabilities*:

    loss_e = mean_{valid pairs} mean_s  − Σ_c q_{s,c} log softmax(head_e)_{s,c}

The soft target has lower variance than a sampled one-hot and its minimiser is the same
(the expected posterior). Pairs across an episode start are masked, and h_{t−1} is zeroed
where t opens an episode, as the agent does when acting.

    u = std_e( softmax(head_e) )  averaged over the stoch·classes outputs

(COPlanner's u, population std via `ensemble_disagreement`). Probabilities rather than
logits: a categorical's logits are defined only up to a constant per variable, so heads
that agree on the distribution could still "disagree" in logit space; probabilities are
bounded in [0, 1], which also keeps λ·u on a fixed scale across tasks.

All heads run in one batched matmul per layer (weights `[E, in, out]`); the first layer,
whose input is shared, is a single [N, in] x [in, E·hidden] GEMM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.nets.math import full
from reverie.world.ensemble import ensemble_disagreement


class DisagreementHeads(nn.Module):
    """E MLPs `x: [..., in_dim] -> logits [E, ..., stoch, classes]`, each
    (Linear -> LayerNorm -> SiLU) x layers, then an output Linear (DreamerV3's MLP)."""

    def __init__(
        self, in_dim: int, stoch: int, classes: int, heads: int = 8, hidden: int = 256,
        layers: int = 2,
    ) -> None:
        super().__init__()
        if min(in_dim, stoch, classes, hidden) <= 0 or heads < 1 or layers < 0:
            raise ValueError(
                f"disagreement heads need positive sizes, heads >= 1 and layers >= 0; got "
                f"in_dim={in_dim}, stoch={stoch}, classes={classes}, heads={heads}, "
                f"hidden={hidden}, layers={layers}"
            )
        self.in_dim, self.heads, self.n_hidden = int(in_dim), int(heads), int(layers)
        self.stoch, self.classes = int(stoch), int(classes)
        sizes = [in_dim] + [hidden] * layers + [stoch * classes]
        self.weights = nn.ParameterList()
        self.norm_weights = nn.ParameterList()
        self.norm_biases = nn.ParameterList()
        for d_in, d_out in zip(sizes[:-1], sizes[1:]):
            # nn.Linear's default init, drawn independently per head: that spread is where
            # the heads' disagreement on unseen inputs comes from
            bound = 1.0 / math.sqrt(d_in)
            self.weights.append(nn.Parameter(torch.empty(heads, d_in, d_out).uniform_(-bound,
                                                                                       bound)))
        for _ in range(layers):
            self.norm_weights.append(nn.Parameter(torch.ones(heads, 1, hidden)))
            self.norm_biases.append(nn.Parameter(torch.zeros(heads, 1, hidden)))
        bound = 1.0 / math.sqrt(sizes[-2])
        self.out_bias = nn.Parameter(torch.empty(heads, 1, sizes[-1]).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in_dim] -> logits [E, ..., stoch, classes]."""
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_dim)
        E, N = self.heads, x.shape[0]
        for i, w in enumerate(self.weights):
            if i == 0:  # shared input: one GEMM for all heads
                y = (x @ w.transpose(0, 1).reshape(self.in_dim, -1)).view(N, E, -1)
                y = y.transpose(0, 1)
            else:
                y = torch.bmm(x, w)
            if i < self.n_hidden:
                y = F.layer_norm(y, y.shape[-1:])
                x = F.silu(torch.addcmul(self.norm_biases[i], y, self.norm_weights[i]))
        y = full(y + self.out_bias)  # float32 logits, also under run.precision=bf16
        return y.reshape(E, *lead, self.stoch, self.classes)

    def probs(self, x: Tensor) -> Tensor:
        """Each head's predicted p(z_{t+1}): [..., in_dim] -> [E, ..., stoch, classes]."""
        return torch.softmax(self(x), -1)

    def disagreement(self, x: Tensor) -> Tensor:
        """COPlanner's u: std across heads of their probabilities, averaged over the
        stoch·classes outputs: [..., in_dim] -> [...]."""
        p = self.probs(x)
        E, lead = p.shape[0], p.shape[1:-2]
        return ensemble_disagreement(p.reshape(E, -1, self.stoch * self.classes)).reshape(lead)

    def loss(self, x: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Per-head cross-entropy against target probabilities: x [N, in_dim],
        target [N, stoch, classes], mask [N] float -> [E] (mean over valid rows)."""
        logp = torch.log_softmax(self(x), -1)  # [E, N, S, C]
        ce = -(target * logp).sum(-1).mean(-1)  # [E, N]
        return (ce * mask).sum(-1) / mask.sum().clamp(min=1.0)


def transition_pairs(
    z: Tensor, h: Tensor, post: Tensor, action: Tensor, reset: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(h_{t−1}, z_t, a_t) -> q(z_{t+1}) pairs of a world-model batch, t = 0 .. T−2.

    z: [B, T, stoch_dim], h: [B, T, deter] (h_t has seen z_t, a_t), post: posterior logits
    [B, T, stoch, classes], action: [B, T, A] float, reset: [B, T] bool. Returns
    z_t [N, stoch_dim], h_{t−1} [N, deter] (zero at t = 0 and where t opens an episode),
    a_t [N, A], target probabilities [N, stoch, classes] and mask [N] float (0 where t+1
    opens an episode), N = B·(T−1); everything detached.
    """
    h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-2]], 1)
    h_prev = h_prev.masked_fill(reset[:, :-1, None], 0.0)
    target = torch.softmax(post[:, 1:], -1)
    mask = (~reset[:, 1:]).float()
    z_t, h_prev, a_t, target, mask = (
        t.detach().flatten(0, 1) for t in (z[:, :-1], h_prev, action[:, :-1], target, mask)
    )
    return z_t, h_prev, a_t, target, mask
