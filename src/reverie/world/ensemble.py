"""Probabilistic ensemble dynamics model of PETS / MBPO, with COPlanner's disagreement.

E members, each an MLP (obs, action) -> N(Δobs, reward | μ, σ²) plus a termination logit.
All members run in one batched matmul per layer: weights are `[E, in, out]` tensors and a
layer is `baddbmm(b, x, W)` with `x: [E, N, in]`.

Per member m, on its bootstrap resample of the training set (PETS eq. 4, MBPO §5):
    loss_m = mean[(μ − y)² e^{−log σ²} + log σ²] + BCE(term_logit, terminal)
    log σ² = soft-bounded between learned min/max (PETS appendix A.1):
        lv ← max − softplus(max − lv);  lv ← min + softplus(lv − min)
Total loss = Σ_m loss_m + 0.01 (Σ max − Σ min) + Σ_l ½ wd_l ‖W_l‖² (MBPO's per-layer decay).

Training stops once no member's holdout MSE improved by more than 1% for 5 epochs
(MBPO); each member keeps its best weights; the `elites` lowest-holdout members are used
for rollouts. COPlanner's uncertainty u is the std across members of their *sampled*
predictions of [next obs, reward], averaged over those dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.nets.math import full
from reverie.nets.optim import adam

# MBPO's L2 coefficients of the 4 hidden layers and the output layer.
MBPO_WEIGHT_DECAY = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)
# rows per block of a forward pass without autograd (see `EnsembleDynamics.forward`):
# 256-1024 ran alike on this CPU at hidden 200 with 1-7 members (2048 at 5 members: ~20% slower)
INFERENCE_ROWS = 1024
# `predict` for a subset of members on at most this many rows runs every member instead
INFERENCE_ROWS_ALL_MEMBERS = 64


class EnsemblePrediction(NamedTuple):
    """Per-member Gaussian predictions; M = number of members asked for, N = batch."""

    next_obs_mean: Tensor  # [M, N, O]
    next_obs_var: Tensor  # [M, N, O]
    reward_mean: Tensor  # [M, N]
    reward_var: Tensor  # [M, N]
    terminal_prob: Tensor  # [M, N]


def soft_bound_logvar(logvar: Tensor, min_logvar: Tensor, max_logvar: Tensor) -> Tensor:
    """Smoothly squash `logvar` into (min, max) with softplus so gradients never vanish."""
    logvar = max_logvar - F.softplus(max_logvar - logvar)
    return min_logvar + F.softplus(logvar - min_logvar)


def gaussian_nll(mean: Tensor, logvar: Tensor, target: Tensor) -> Tensor:
    """MBPO's Gaussian NLL (up to ½ and the constant), averaged per member: `[E, N, D]` -> [E]."""
    return ((mean - target).pow(2) * torch.exp(-logvar) + logvar).mean(dim=(1, 2))


def ensemble_disagreement(samples: Tensor) -> Tensor:
    """COPlanner's u: std across members, averaged over output dims: `[M, N, D]` -> [N].

    Population std (no Bessel correction), so u is 0 exactly when all members agree.
    Written as two passes over the member axis: `Tensor.std(dim=0)` reduces across the
    outermost, strided axis and was 6x slower on CPU at [8, 4096, 256].
    """
    dev = samples - samples.mean(dim=0)
    return dev.square().mean(dim=0).sqrt().mean(dim=-1)


def bootstrap_indices(n: int, members: int, generator: torch.Generator) -> Tensor:
    """One resample with replacement of range(n) per member: [members, n] long."""
    return torch.randint(n, (members, n), generator=generator, device=generator.device)


def improved_members(best: Tensor, current: Tensor, min_improvement: float) -> Tensor:
    """MBPO's early-stopping test: relative holdout improvement > threshold: [E] bool.

    A member with no best yet (`best = inf`) always counts as improved.
    """
    rel = (best - current) / best.abs().clamp_min(1e-12)
    return torch.isinf(best) | (rel > min_improvement)


class EnsembleDynamics(nn.Module):
    """E probabilistic MLPs predicting (Δobs, reward, termination) from (obs, action)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        members: int = 7,
        elites: int = 5,
        hidden: int = 200,
        layers: int = 4,
        weight_decay: float | Sequence[float] | None = None,
        logvar_init: tuple[float, float] = (-10.0, 0.5),
        logvar_penalty: float = 0.01,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        if obs_dim <= 0 or action_dim <= 0 or hidden <= 0 or layers < 1:
            raise ValueError(
                f"ensemble sizes must be positive (layers >= 1), got obs_dim={obs_dim}, "
                f"action_dim={action_dim}, hidden={hidden}, layers={layers}"
            )
        if not 1 <= elites <= members:
            raise ValueError(f"need 1 <= elites <= members, got {elites} and {members}; use 5/7")
        if weight_decay is None:  # MBPO's schedule; other depths: its range, linearly
            decay = list(MBPO_WEIGHT_DECAY) if layers == 4 else np.linspace(
                MBPO_WEIGHT_DECAY[0], MBPO_WEIGHT_DECAY[-1], layers + 1
            ).tolist()
        elif np.isscalar(weight_decay):
            decay = [float(weight_decay)] * (layers + 1)
        else:
            decay = [float(w) for w in weight_decay]
        if len(decay) != layers + 1:
            raise ValueError(
                f"weight_decay needs one value per linear layer ({layers + 1}), got {len(decay)}"
            )
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.members, self.num_elites = members, elites
        self.weight_decay = decay
        self.logvar_penalty = logvar_penalty
        out_dim = obs_dim + 1  # [Δobs, reward]
        sizes = [obs_dim + action_dim] + [hidden] * layers + [2 * out_dim + 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(sizes[:-1], sizes[1:]):
            # MBPO's init: truncated normal, std 1 / (2 sqrt(fan_in)), zero bias.
            std = 1.0 / (2.0 * math.sqrt(d_in))
            w = torch.empty(members, d_in, d_out)
            nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(members, 1, d_out)))
        self.min_logvar = nn.Parameter(torch.full((out_dim,), logvar_init[0]))
        self.max_logvar = nn.Parameter(torch.full((out_dim,), logvar_init[1]))
        self.register_buffer("input_mean", torch.zeros(obs_dim + action_dim))
        self.register_buffer("input_std", torch.ones(obs_dim + action_dim))
        self.register_buffer("elites", torch.arange(elites))
        self.optimizer = adam(self.parameters(), lr)

    # -- the network -------------------------------------------------------------------------
    def normalise(self, obs: Tensor, action: Tensor) -> Tensor:
        """[..., O], [..., A] -> standardised inputs [..., O + A]."""
        return (torch.cat([obs, action], dim=-1) - self.input_mean) / self.input_std

    def forward(
        self, x: Tensor, members: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised inputs `x: [M, N, O+A]` -> (mean [M,N,O+1], logvar [M,N,O+1],
        termination logit [M,N]); `members: [M]` long picks the members (default all E).

        Without autograd (rollouts, planning, holdout) the rows run in blocks of
        `INFERENCE_ROWS` with the bias add and SiLU in place: a block's activations stay in
        cache, which ran ~2x faster per row on this CPU at 10k rows x 5 members than one
        [M, N, 200] pass (whose bias broadcast, SiLU and copies were memory-bound); the
        numbers are the same up to float rounding (identical in the tests here)."""
        weights, biases = self._member_params(members)
        return self._run(x, weights, biases)

    def _run(
        self, x: Tensor, weights: list[Tensor], biases: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`forward` with the members' weights `[M, in, out]` and biases `[M, 1, out]`."""
        if torch.is_grad_enabled() and (x.requires_grad or weights[0].requires_grad):
            x = self._layers(x, weights, biases)
        elif x.shape[1] <= INFERENCE_ROWS:
            x = self._layers_inplace(x, weights, biases)
        else:
            x = torch.cat([self._layers_inplace(block, weights, biases)
                           for block in x.split(INFERENCE_ROWS, dim=1)], dim=1)
        d = self.obs_dim + 1
        mean, logvar, logit = full(x).split([d, d, 1], dim=-1)  # float32 under bf16 too
        return mean, soft_bound_logvar(logvar, self.min_logvar, self.max_logvar), logit[..., 0]

    def _member_params(self, members: Tensor | None) -> tuple[list[Tensor], list[Tensor]]:
        """The weights and biases of `members` (all E when None), stacked member-first."""
        weights, biases = list(self.weights), list(self.biases)
        if members is None:
            return weights, biases
        return [w[members] for w in weights], [b[members] for b in biases]

    @staticmethod
    def _layers(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
        """The MLP with autograd: baddbmm and SiLU per layer."""
        last = len(weights) - 1
        for i, (w, b) in enumerate(zip(weights, biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = F.silu(x)
        return x

    @staticmethod
    def _layers_inplace(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
        """The MLP without autograd: bmm, then bias and SiLU in place (no fresh tensor per
        elementwise op)."""
        last = len(weights) - 1
        for i, (w, b) in enumerate(zip(weights, biases)):
            x = torch.bmm(x, w).add_(b)
            if i < last:
                x = F.silu(x, inplace=True)
        return x

    # -- prediction --------------------------------------------------------------------------
    def predict(
        self, obs: Tensor, action: Tensor, members: Tensor | None = None
    ) -> EnsemblePrediction:
        """obs: [N, O], action: [N, A] -> every member's Gaussian (see `EnsemblePrediction`)."""
        x = self.normalise(obs, action).unsqueeze(0)
        if members is not None and x.shape[1] <= INFERENCE_ROWS_ALL_MEMBERS and not (
                torch.is_grad_enabled() and self.weights[0].requires_grad):
            # a few rows (UP-MPC acting): every member's rows, then `members`' — gathering
            # their weights (~40% of such a call) costs more than the others' rows do
            mean, logvar, logit = (t[members] for t in self(x.expand(self.members, -1, -1)))
        else:
            m = self.members if members is None else len(members)
            mean, logvar, logit = self(x.expand(m, -1, -1), members)
        var = torch.exp(logvar)
        o = self.obs_dim
        return EnsemblePrediction(
            next_obs_mean=obs + mean[..., :o],
            next_obs_var=var[..., :o],
            reward_mean=mean[..., o],
            reward_var=var[..., o],
            terminal_prob=torch.sigmoid(logit),
        )

    def sample_members(
        self,
        obs: Tensor,
        action: Tensor,
        generator: torch.Generator,
        members: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Each member samples its prediction: (next_obs [M,N,O], reward [M,N],
        terminal_prob [M,N])."""
        p = self.predict(obs, action, members)
        mean = torch.cat([p.next_obs_mean, p.reward_mean.unsqueeze(-1)], dim=-1)
        var = torch.cat([p.next_obs_var, p.reward_var.unsqueeze(-1)], dim=-1)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        sample = mean + var.sqrt() * eps
        return sample[..., : self.obs_dim], sample[..., self.obs_dim], p.terminal_prob

    def draw_members(self, n: int, generator: torch.Generator) -> Tensor:
        """A uniformly random elite for each of `n` rows: [n] long member indices."""
        pick = torch.randint(len(self.elites), (n,), generator=generator, device=generator.device)
        return self.elites[pick.to(self.elites.device)]

    @torch.no_grad()
    def sample_next(
        self,
        obs: Tensor,
        action: Tensor,
        generator: torch.Generator,
        mode: str = "ts1",
        member_idx: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One sampled model step (PETS trajectory sampling) -> (next_obs [N,O], reward [N],
        terminal [N] bool).

        TS1 draws a random elite per row at every call; TS∞ keeps the member of each
        trajectory, `member_idx: [N]` (e.g. from `draw_members` at the rollout's start).
        A row is terminal when its member predicts termination probability > 0.5.
        """
        n = obs.shape[0]
        if mode == "ts1":
            member_idx = self.draw_members(n, generator)
        elif mode == "tsinf":
            if member_idx is None or member_idx.shape != (n,):
                raise ValueError("mode='tsinf' needs member_idx: [N] long, from draw_members(N)")
        else:
            raise ValueError(f"unknown trajectory-sampling mode {mode!r}; use 'ts1' or 'tsinf'")
        # each row is evaluated by its own member only: 1/M of the work of evaluating every
        # used member on every row, the same numbers up to float rounding (`_forward_rows`)
        used, pos = torch.unique(member_idx, return_inverse=True)
        mean, logvar, logit = self._forward_rows(self.normalise(obs, action), pos, used)
        o = self.obs_dim
        mean = torch.cat([obs + mean[:, :o], mean[:, o:]], dim=-1)
        var = torch.exp(logvar)
        # the noise `sample_members(obs, action, generator, used)` draws, of which each row
        # uses its member's: the generator advances as it always did, so a seed gives the
        # same samples as evaluating every used member
        eps = torch.randn((len(used), *mean.shape), generator=generator, dtype=mean.dtype,
                          device=mean.device)[pos, torch.arange(n, device=obs.device)]
        sample = mean + var.sqrt() * eps
        return sample[:, :o], sample[:, o], torch.sigmoid(logit) > 0.5

    def _forward_rows(
        self, x: Tensor, pos: Tensor, members: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Row i of normalised inputs `x: [N, O+A]` through member `members[pos[i]]` only:
        (mean [N, O+1], logvar [N, O+1], termination logit [N]), the rows `forward` gives for
        those members. The rows are grouped by member and each group runs as one batch."""
        if x.shape[0] == 0:  # no rows (and no members): forward's empty outputs
            out = self(x.unsqueeze(0), torch.zeros(1, dtype=torch.long, device=x.device))
            return out[0][0], out[1][0], out[2][0]
        order = torch.argsort(pos, stable=True)
        counts = torch.bincount(pos, minlength=len(members)).tolist()
        weights, biases = list(self.weights), list(self.biases)
        # member i's slices are views: no copy of its weights per call
        outs = [self._run(xs.unsqueeze(0), [w[i : i + 1] for w in weights],
                          [b[i : i + 1] for b in biases])
                for i, xs, c in zip(members.tolist(), x[order].split(counts), counts) if c > 0]
        mean, logvar, logit = (torch.cat([o[k][0] for o in outs]) for k in range(3))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return mean[inverse], logvar[inverse], logit[inverse]

    @torch.no_grad()
    def disagreement(
        self,
        obs: Tensor,
        action: Tensor,
        generator: torch.Generator,
        members: Tensor | None = None,
    ) -> Tensor:
        """COPlanner's u over `members` (default the elites): [N]."""
        members = self.elites if members is None else members
        next_obs, reward, _ = self.sample_members(obs, action, generator, members)
        return ensemble_disagreement(torch.cat([next_obs, reward.unsqueeze(-1)], dim=-1))

    @torch.no_grad()
    def rollout_step(
        self, obs: Tensor, action: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """UP-MPC's model step from one forward pass of the elites: (next_obs [N,O],
        reward [N], u [N], terminal [N] bool); the transition comes from a random elite."""
        next_obs, reward, term = self.sample_members(obs, action, generator, self.elites)
        u = ensemble_disagreement(torch.cat([next_obs, reward.unsqueeze(-1)], dim=-1))
        n = obs.shape[0]
        pick = torch.randint(len(self.elites), (n,), generator=generator, device=generator.device)
        pick, rows = pick.to(obs.device), torch.arange(n, device=obs.device)
        return next_obs[pick, rows], reward[pick, rows], u, term[pick, rows] > 0.5

    # -- training ----------------------------------------------------------------------------
    def loss(
        self, x: Tensor, target: Tensor, terminal: Tensor
    ) -> tuple[Tensor, Tensor]:
        """x: [E, B, O+A] normalised, target: [E, B, O+1], terminal: [E, B] float ->
        (total loss, per-member NLL [E])."""
        mean, logvar, logit = self(x)
        nll = gaussian_nll(mean, logvar, target)
        bce = F.binary_cross_entropy_with_logits(logit, terminal, reduction="none").mean(1)
        total = (nll + bce).sum()
        total = total + self.logvar_penalty * (self.max_logvar.sum() - self.min_logvar.sum())
        for wd, w in zip(self.weight_decay, self.weights):
            total = total + 0.5 * wd * w.pow(2).sum()
        return total, nll

    @torch.no_grad()
    def holdout_mse(self, x: Tensor, target: Tensor) -> Tensor:
        """MSE of each member's mean on held-out rows: x [N, O+A], target [N, O+1] -> [E]."""
        mean, _, _ = self(x.unsqueeze(0).expand(self.members, -1, -1))
        return (mean - target).pow(2).mean(dim=(1, 2))

    @torch.no_grad()
    def select_elites(self, x: Tensor, target: Tensor) -> Tensor:
        """Make the `num_elites` members of lowest MSE on (x [N, O+A] normalised,
        target [N, O+1]) the elites; returns every member's MSE [E]."""
        mse = self.holdout_mse(x, target)
        self.elites.copy_(torch.argsort(mse)[: self.num_elites])
        return mse

    def fit(
        self,
        obs: Tensor | np.ndarray,
        action: Tensor | np.ndarray,
        next_obs: Tensor | np.ndarray,
        reward: Tensor | np.ndarray,
        terminal: Tensor | np.ndarray,
        generator: torch.Generator,
        batch_size: int = 256,
        holdout_fraction: float = 0.2,
        max_holdout: int = 5000,
        max_epochs: int = 1000,
        patience: int = 5,
        min_improvement: float = 0.01,
    ) -> dict[str, float]:
        """Train on transitions `obs [N,O], action [N,A], next_obs [N,O], reward [N],
        terminal [N]` until the holdout MSE stops improving (no member better by more than
        `min_improvement` for more than `patience` epochs in a row, MBPO's
        max_epochs_since_update); then pick the elites.

        Returns {"train_loss", "holdout_mse" (elite mean), "epochs"}.
        """
        dev = self.input_mean.device

        def tensor(a: Tensor | np.ndarray) -> Tensor:
            return torch.as_tensor(a, dtype=torch.float32, device=dev)

        obs, action, next_obs = tensor(obs), tensor(action), tensor(next_obs)
        reward, terminal = tensor(reward).reshape(-1), tensor(terminal).reshape(-1)
        n = obs.shape[0]
        if n < 2:
            raise ValueError(f"fitting the ensemble needs at least 2 transitions, got {n}")
        if batch_size < 1 or max_epochs < 1 or patience < 1:
            raise ValueError("batch_size, max_epochs and patience must be >= 1; use 256/1000/5")
        inputs = torch.cat([obs, action], dim=-1)
        targets = torch.cat([next_obs - obs, reward.unsqueeze(-1)], dim=-1)
        perm = torch.randperm(n, generator=generator, device=generator.device).to(dev)
        n_hold = min(max(1, int(n * holdout_fraction)), max_holdout, n - 1)
        hold, train = perm[:n_hold], perm[n_hold:]
        self.input_mean.copy_(inputs[train].mean(0))
        std = inputs[train].std(0, correction=0)
        self.input_std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))
        x_all = (inputs - self.input_mean) / self.input_std
        x_hold, y_hold = x_all[hold], targets[hold]
        x_tr, y_tr, t_tr = x_all[train], targets[train], terminal[train]

        idx = bootstrap_indices(len(train), self.members, generator).to(dev)
        params = list(self.weights) + list(self.biases)
        best_params = [p.detach().clone() for p in params]
        best = torch.full((self.members,), math.inf, device=dev)
        since, epoch, train_loss = 0, 0, float("nan")
        while epoch < max_epochs and since <= patience:
            shuffle = torch.rand(idx.shape, generator=generator, device=generator.device)
            order = torch.argsort(shuffle, dim=1)
            idx = idx.gather(1, order.to(dev))
            losses = []
            for start in range(0, idx.shape[1], batch_size):
                b = idx[:, start : start + batch_size]
                total, nll = self.loss(x_tr[b], y_tr[b], t_tr[b])
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                self.optimizer.step()
                losses.append(nll.detach().mean())
            # one read per epoch (no per-step sync); the same floats as .item() per step
            train_loss = float(np.mean(torch.stack(losses).tolist()))
            epoch += 1
            current = self.holdout_mse(x_hold, y_hold)
            better = improved_members(best, current, min_improvement)
            with torch.no_grad():
                for p, keep in zip(params, best_params):
                    keep[better] = p[better]
            best = torch.where(better, current, best)
            since = 0 if bool(better.any()) else since + 1

        with torch.no_grad():
            for p, keep in zip(params, best_params):
                p.copy_(keep)
        mse = self.select_elites(x_hold, y_hold)
        return {
            "train_loss": train_loss,
            "holdout_mse": float(mse[self.elites].mean()),
            "epochs": float(epoch),
        }
