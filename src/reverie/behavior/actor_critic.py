"""Actor-critic learned in imagination (DreamerV3 §"Actor critic learning", as in Drama/STORM).

The world model is frozen here: the agent rolls it forward and hands over the imagined
trajectory as plain tensors, time-major so the rollout can append one step at a time:

    feat:   [H+1, B, F]   feat(z_t, h_{t-1}) of the states 0..H
    action: [H, B] long (discrete) or [H, B, A] float — the actor's *raw* samples
    reward: [H, B]        predicted reward after the action at t
    cont:   [H, B]        predicted probability that the episode continues after t
    index:  [H+1, B, S]   optional: the columns of the ones of feat's one-hot latent z_t
                          (`ActorCritic`'s onehot_width), for the one-hot first layers

Losses (per state t < H, weighted by w_t = Π_{k<t} c_k so states after a predicted
termination count less):
    actor  = −w_t [ log π(a_t|s_t) · sg((R_t − V_t) / S) + η H[π(·|s_t)] ]   (REINFORCE)
    critic = w_t [ CE(two_hot(symlog R_t), p_ψ(s_t)) + CE(two_hot(symlog V^slow_t), p_ψ(s_t)) ]
R_t are λ-returns bootstrapped from the slow (EMA) critic, V_t the baseline (with the
default `targets`, dreamerv3, the slow critic's value), S = max(1, EMA(p95 − p5)) of the
returns.

`targets` picks where the returns and the baseline come from (the λ-return alignment —
reward after the action — is the same in all three):
    dreamerv3  R from the slow critic and the slow critic as baseline (DreamerV3's slowtar);
               the default: on CartPole (bench/drama_ablation.py, 4 seeds, 10k env steps)
               it kept 500 to the end on every seed, where `reverie` drifted (mean of the
               last three evaluations 499 vs 445; the same area under the curve)
    reverie    R from the slow critic, baseline the fast critic, weights Π c_k (the default
               until that measurement; neither DreamerV3's nor Drama's)
    drama      R from the fast critic and the fast critic as baseline; the slow critic's own
               λ-return is a second critic target; continuation thresholded to 0/1 and a
               plain mean over imagined steps (Drama's released code)

`actor_input_norm` (Drama's code) feeds the actor feat normalised by a running mean/std of
the imagined states it is trained on (`RunningNorm`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from reverie.behavior.returns import ReturnNormalizer, lambda_returns
from reverie.compiler import Compiler, run_eagerly
from reverie.errors import suggest
from reverie.nets import onehot_kernel
from reverie.nets.cpp_kernel import on_cpu
from reverie.nets.math import symlog, symlog_bins, two_hot_loss, two_hot_value, unimix
from reverie.nets.mlp import MLP
from reverie.nets.optim import OPTIMIZERS, make_optimizer


@dataclass
class ActorCriticConfig:
    """Defaults are STORM's (actor 3x256, critic 3x512, γ 0.985, λ 0.95, entropy 3e-4, Adam
    3e-5, slow critic 0.02), which Drama keeps except its optimiser (LaProp 4e-5, eps 1e-20:
    the `atari100k` preset sets those)."""

    actor_hidden: int = 256
    actor_layers: int = 3
    critic_hidden: int = 512
    critic_layers: int = 3
    gamma: float = 0.985
    lam: float = 0.95
    entropy: float = 3e-4
    return_norm_decay: float = 0.99
    return_norm_low: float = 0.05
    return_norm_high: float = 0.95
    slow_critic_fraction: float = 0.02
    value_bins: int = 255
    lr_actor: float = 3e-5
    lr_critic: float = 3e-5
    grad_clip: float = 100.0
    optimizer: str = "adam"  # adam or laprop (Drama's code), for actor and critic
    adam_eps: float = 1e-5  # ε of either optimiser
    unimix: float = 0.01  # uniform mixture of the discrete policy
    min_std: float = 0.1  # bounds of the continuous policy's std
    max_std: float = 1.0
    targets: str = "dreamerv3"  # dreamerv3 | reverie | drama: see the module doc
    # Drama's code normalises the actor's input by a running mean/std (clipped to ±10);
    # here the statistics come from each update's imagined states, not from acting
    actor_input_norm: bool = False


TARGETS = ("dreamerv3", "reverie", "drama")


class RunningNorm(nn.Module):
    """x ↦ clip((x − μ) / sqrt(σ² + ε), ±clip) with μ, σ² the mean and variance of every row
    passed to `update` so far (Chan et al.'s parallel combination, as Drama's VecNormalize).

    Before the first update μ = 0 and σ² = 1 (identity up to the clip). `forward` never
    updates the statistics, so acting and evaluation do not change the policy.
    """

    def __init__(self, dim: int, eps: float = 1e-8, clip: float = 10.0) -> None:
        super().__init__()
        self.eps, self.clip = eps, clip
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold the rows of x: [..., dim] into the statistics."""
        x = x.reshape(-1, x.shape[-1])
        n = x.shape[0]
        # the batch's moments in float32 in two passes, the mean, then the centred squares'
        # (on Atari's 16k x 1536 inputs faster than var_mean's Welford over rows, which was
        # faster than a float64 copy), their combination in float64
        x = x.float()
        mean = x.mean(0)
        batch_var, batch_mean = (x - mean).square_().mean(0).double(), mean.double()
        total = self.count + n
        delta = batch_mean - self.mean
        self.var.copy_((self.var * self.count + batch_var * n
                        + delta.square() * self.count * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        mean, std = self.mean.to(x.dtype), (self.var + self.eps).sqrt().to(x.dtype)
        return ((x - mean) / std).clamp(-self.clip, self.clip)


class Actor(nn.Module):
    """π(a | feat): an MLP followed by a categorical or a bounded normal.

    Discrete: categorical with `unimix` of the uniform distribution mixed in (DreamerV3), so
    every action keeps probability >= unimix / n and log π stays bounded.
    Continuous: DreamerV3's bounded normal N(tanh(μ), σ), σ = (max−min)·sigmoid(s + 2) + min.
    Its entropy is analytic (unlike a tanh-squashed Gaussian); samples can leave [−1, 1],
    so `sample` returns the raw sample (for log π) and the clipped action (for the world
    model and the environment).
    """

    def __init__(
        self,
        feat_dim: int,
        action_dim: int,
        discrete: bool,
        hidden: int,
        layers: int,
        unimix: float = 0.01,
        min_std: float = 0.1,
        max_std: float = 1.0,
        input_norm: bool = False,
        onehot_width: int = 0,
    ) -> None:
        super().__init__()
        if action_dim <= 0:
            raise ValueError(f"action_dim must be a positive integer, got {action_dim}")
        if not 0.0 < min_std <= max_std:
            raise ValueError(f"need 0 < min_std <= max_std, got {min_std}, {max_std}")
        self.discrete = discrete
        self.action_dim = action_dim
        self.unimix = unimix
        self.min_std, self.max_std = min_std, max_std
        out = action_dim if discrete else 2 * action_dim
        self.net = MLP(feat_dim, out, hidden, layers, onehot_width=onehot_width)
        self.input_norm = RunningNorm(feat_dim) if input_norm else None

    def dist(self, feat: Tensor, index: Tensor | None = None) -> Distribution:
        """feat: [..., F] -> a distribution with batch shape [...]. `index` [..., S]: the
        columns of the ones of feat's one-hot latent (`ActorCritic` doc), or None."""
        if self.input_norm is None:
            x = self.net(feat, index)
        else:  # normalised, the latent is no longer one-hot
            x = self.net(self.input_norm(feat))
        if self.discrete:
            return Categorical(logits=unimix(x, self.unimix), validate_args=False)
        mean, std = x.chunk(2, dim=-1)
        std = (self.max_std - self.min_std) * torch.sigmoid(std + 2.0) + self.min_std
        return Independent(Normal(torch.tanh(mean), std, validate_args=False), 1)

    def sample(
        self, feat: Tensor, explore: bool = True, index: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """feat: [..., F] -> (action, raw). Discrete: both [...] long. Continuous: both
        [..., A]; `action` is `raw` clipped to [−1, 1]. `explore=False` takes the mode."""
        d = self.dist(feat, index)
        if self.discrete:
            raw = d.sample() if explore else d.probs.argmax(-1)
            return raw, raw
        raw = d.sample() if explore else d.mean
        return raw.clamp(-1.0, 1.0), raw


class Critic(nn.Module):
    """v(feat) as a two-hot distribution over `bins` values uniform in symlog space.

    The output layer starts at zero (uniform probabilities decode to exactly 0), so early
    imagined returns are not dominated by random value estimates (DreamerV3).
    """

    def __init__(self, feat_dim: int, hidden: int, layers: int, bins: int = 255,
                 onehot_width: int = 0) -> None:
        super().__init__()
        self.net = MLP(feat_dim, bins, hidden, layers, zero_init=True,
                       onehot_width=onehot_width)
        self.register_buffer("bins", symlog_bins(bins), persistent=False)

    def forward(self, feat: Tensor, index: Tensor | None = None) -> Tensor:
        """feat: [..., F] -> logits [..., bins]; `index` as in `Actor.dist`."""
        return self.net(feat, index)

    def value(self, logits: Tensor) -> Tensor:
        """logits: [..., bins] -> expected value in reward units: [...]."""
        return two_hot_value(logits, self.bins)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Two-hot cross-entropy against value targets in reward units: [...]."""
        return two_hot_loss(logits, symlog(target), self.bins)


def check_config(cfg: ActorCriticConfig) -> None:
    """The config's own checks: also run when a config is built."""
    if not 0.0 < cfg.slow_critic_fraction <= 1.0:
        raise ValueError(
            "imagine.behavior.slow_critic_fraction must be in (0, 1], got "
            f"{cfg.slow_critic_fraction}; use 0.02"
        )
    for name in ("lr_actor", "lr_critic"):
        if not float(getattr(cfg, name)) > 0.0:
            raise ValueError(f"imagine.behavior.{name} must be positive, got "
                             f"{getattr(cfg, name)}")
    ranges = (("unimix", cfg.unimix, 0.0, 1.0, "[0, 1)"),
              ("gamma", cfg.gamma, 1e-9, 1.0 + 1e-9, "(0, 1]"),
              ("lam", cfg.lam, 0.0, 1.0 + 1e-9, "[0, 1]"))
    for name, value, low, high, text in ranges:
        if not low <= float(value) < high:
            raise ValueError(f"imagine.behavior.{name} must be in {text}, got {value}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"imagine.behavior.optimizer must be one of {', '.join(OPTIMIZERS)}, "
                         f"got {cfg.optimizer!r}{suggest(cfg.optimizer, OPTIMIZERS)}")
    if cfg.targets not in TARGETS:
        raise ValueError(f"imagine.behavior.targets must be one of {', '.join(TARGETS)}, got "
                         f"{cfg.targets!r}{suggest(str(cfg.targets), TARGETS)}")


class ActorCritic(nn.Module):
    """Actor, critic, slow critic, return normaliser and their optimisers.

    `onehot_width` W > 0: feat's first W values are the world model's one-hot latent z
    (S categoricals), and the trajectory may carry `index` [H+1, B, S], the columns of its
    ones: the networks' first layers then read z as sums of weight columns
    (reverie.nets.onehot), the same values to float rounding in fewer operations.
    """

    def __init__(
        self, feat_dim: int, action_dim: int, discrete: bool, cfg: ActorCriticConfig,
        onehot_width: int = 0,
    ) -> None:
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        self.actor = Actor(
            feat_dim, action_dim, discrete, cfg.actor_hidden, cfg.actor_layers,
            cfg.unimix, cfg.min_std, cfg.max_std, cfg.actor_input_norm, onehot_width,
        )
        self.critic = Critic(feat_dim, cfg.critic_hidden, cfg.critic_layers, cfg.value_bins,
                             onehot_width)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.return_norm = ReturnNormalizer(
            cfg.return_norm_decay, cfg.return_norm_low, cfg.return_norm_high
        )
        self.actor_opt = make_optimizer(
            cfg.optimizer, self.actor.parameters(), cfg.lr_actor, cfg.adam_eps
        )
        self.critic_opt = make_optimizer(
            cfg.optimizer, self.critic.parameters(), cfg.lr_critic, cfg.adam_eps
        )
        # the update's pure tensor functions and the runner of the code that calls them:
        # `compile_with` swaps in compiled ones (run.compile=on)
        self._targets, self._losses, self._run = self.targets, self.losses, run_eagerly

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        """ψ_slow ← (1 − f) ψ_slow + f ψ (DreamerV3: f = 0.02 every update)."""
        f = self.cfg.slow_critic_fraction
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
            slow.lerp_(fast, f)

    @torch.no_grad()
    def targets(
        self, feat: Tensor, reward: Tensor, cont: Tensor, index: Tensor | None = None
    ) -> dict[str, Tensor]:
        """What the losses regress to, for `targets` = reverie | dreamerv3 | drama (module
        doc): a pure tensor function. feat [H+1, B, F]; reward, cont [H, B]; index
        [H+1, B, S] or None (class doc).

        Returns ret (λ-returns), second (the critic's second target), weight (w_t) and
        cont (as used), all [H, B]; with dreamerv3 also baseline, the slow critic's value
        (otherwise the actor's baseline is the critic's own value, from `losses`).
        """
        cfg = self.cfg
        slow_value = self.critic.value(self.slow_critic(feat, index))  # [H+1, B]
        if cfg.targets == "drama":
            cont = (cont > 0.5).to(cont.dtype)
            fast_value = self.critic.value(self.critic(feat, index))
            ret = lambda_returns(reward.T, cont.T, fast_value.T, cfg.gamma, cfg.lam).T
            second = lambda_returns(reward.T, cont.T, slow_value.T, cfg.gamma, cfg.lam).T
            weight = torch.ones_like(cont)
        else:
            ret = lambda_returns(reward.T, cont.T, slow_value.T, cfg.gamma, cfg.lam).T
            second = slow_value[:-1]
            # w_t: probability that state t is still inside the episode (w_0 = 1).
            weight = torch.cumprod(torch.cat([torch.ones_like(cont[:1]), cont[:-1]], 0), 0)
        out = {"ret": ret, "second": second, "weight": weight, "cont": cont}
        if cfg.targets == "dreamerv3":
            out["baseline"] = slow_value[:-1]
        return out

    def losses(
        self, feat: Tensor, action: Tensor, targets: dict[str, Tensor], scale: Tensor,
        index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Actor and critic losses given `targets(...)` and the return scale S (a 0-d
        tensor): a pure tensor function. Returns (actor_loss, critic_loss, 0-d metrics)."""
        ret, weight = targets["ret"], targets["weight"]
        index = None if index is None else index[:-1]
        logits = self.critic(feat[:-1], index)  # [H, B, bins]
        value = self.critic.value(logits.detach())
        critic_loss = self.critic.loss(logits, ret) + self.critic.loss(logits, targets["second"])
        critic_loss = (weight * critic_loss).mean()
        baseline = targets.get("baseline", value)

        dist = self.actor.dist(feat[:-1], index)
        adv = (ret - baseline) / scale
        entropy = dist.entropy()
        actor_loss = -(weight * (dist.log_prob(action) * adv + self.cfg.entropy * entropy)).mean()
        terms = {
            "ac/actor_loss": actor_loss.detach(),
            "ac/critic_loss": critic_loss.detach(),
            "ac/entropy": entropy.detach().mean(),
            "ac/advantage": adv.mean(),
            "ac/value": value.mean(),
            "imag/return": ret.mean(),
            "imag/cont": targets["cont"].mean(),
        }
        return actor_loss, critic_loss, terms

    def _prepare(
        self, feat: Tensor, action: Tensor, reward: Tensor, cont: Tensor,
        index: Tensor | None,
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Check the shapes, compute the targets and fold this trajectory's returns (and,
        with actor_input_norm, its states) into the running statistics; (feat, targets, S)."""
        H = reward.shape[0]
        if feat.shape[0] != H + 1 or cont.shape[0] != H or action.shape[0] != H:
            raise ValueError(
                f"imagined trajectory must be feat [H+1, B, F], action/reward/cont [H, B]; got "
                f"feat {tuple(feat.shape)}, action {tuple(action.shape)}, "
                f"reward {tuple(reward.shape)}, cont {tuple(cont.shape)}"
            )
        feat = feat.detach()
        if index is not None and index.shape[:2] != feat.shape[:2]:
            raise ValueError(f"index must be [H+1, B, S] like feat {tuple(feat.shape)}, got "
                             f"{tuple(index.shape)}")
        targets = self._run(self._targets, feat, reward, cont, index)
        # DreamerV3 folds the trajectory's own returns in before using the scale
        self.return_norm.update(targets["ret"])
        if self.actor.input_norm is not None:
            self.actor.input_norm.update(feat[:-1])
        return feat, targets, self.return_norm.scale()

    def _metrics(self, terms: dict[str, Tensor], reward: Tensor, scale: Tensor) -> dict[str, float]:
        low, high = self.return_norm.percentiles().tolist()
        m = {k: v.item() for k, v in terms.items()}
        return {"ac/actor_loss": m["ac/actor_loss"], "ac/critic_loss": m["ac/critic_loss"],
                "ac/entropy": m["ac/entropy"], "ac/advantage": m["ac/advantage"],
                "ac/value": m["ac/value"], "ac/return_scale": scale.item(),
                "ac/return_low": low, "ac/return_high": high,
                "imag/return": m["imag/return"], "imag/reward": reward.mean().item(),
                "imag/cont": m["imag/cont"]}

    def loss(
        self, feat: Tensor, action: Tensor, reward: Tensor, cont: Tensor,
        index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Actor and critic losses of an imagined trajectory (shapes: module doc).

        Folds this trajectory's returns into the return normaliser first (DreamerV3 does
        the same), so call it once per update. Returns (actor_loss, critic_loss, metrics).
        """
        feat, targets, scale = self._prepare(feat, action, reward, cont, index)
        actor_loss, critic_loss, terms = self._losses(feat, action, targets, scale, index)
        return actor_loss, critic_loss, self._metrics(terms, reward, scale)

    def _gradients(
        self, feat: Tensor, action: Tensor, targets: dict[str, Tensor], scale: Tensor,
        index: Tensor | None,
    ) -> dict[str, Tensor]:
        actor_loss, critic_loss, terms = self._losses(feat, action, targets, scale, index)
        self.actor_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        (actor_loss + critic_loss).backward()  # disjoint parameters: one backward for both
        return terms

    def update(
        self, feat: Tensor, action: Tensor, reward: Tensor, cont: Tensor,
        index: Tensor | None = None,
    ) -> dict[str, float]:
        """One actor and one critic step on an imagined trajectory, then the slow critic."""
        feat, targets, scale = self._prepare(feat, action, reward, cont, index)
        terms = self._run(self._gradients, feat, action, targets, scale, index)
        metrics = self._metrics(terms, reward, scale)
        clip = self.cfg.grad_clip
        metrics["ac/actor_grad_norm"] = nn.utils.clip_grad_norm_(
            self.actor.parameters(), clip).item()
        metrics["ac/critic_grad_norm"] = nn.utils.clip_grad_norm_(
            self.critic.parameters(), clip).item()
        self.actor_opt.step()
        self.critic_opt.step()
        self.update_slow_critic()
        return metrics

    def compile_with(self, compiler: Compiler) -> None:
        """run.compile=on: `targets` and `losses` (forward and backward) as compiled graphs;
        the statistics' updates and the optimiser steps stay eager. (Not `nn.Module.compile`,
        which would compile `forward`.) The first layers that read a one-hot latent take their
        weight gradients from reverie's row-scatter kernel where it builds."""
        self._targets = compiler.wrap(self.targets)
        self._losses = compiler.wrap(self.losses)
        self._run = compiler.run
        # the one-hot first layers' weight gradients as row scatters (reverie.nets.onehot_kernel)
        if self.onehot_layers() and on_cpu(self):
            compiler.build(onehot_kernel.load, "the one-hot weight-gradient kernel",
                           "the dense product runs", self.use_onehot_kernel)

    def onehot_layers(self) -> list[MLP]:
        """The MLPs (actor, critic, slow critic) whose first layer reads the one-hot latent."""
        return [m for m in self.modules() if isinstance(m, MLP) and m.onehot_width]

    def use_onehot_kernel(self, on: bool) -> None:
        """Their weight gradients by reverie.nets.onehot_kernel (built by its `load()`) or
        as the dense product."""
        for m in self.onehot_layers():
            m.onehot_kernel = on

    def optim_state_dict(self) -> dict[str, dict]:
        return {"actor": self.actor_opt.state_dict(), "critic": self.critic_opt.state_dict()}

    def load_optim_state_dict(self, d: dict[str, dict]) -> None:
        self.actor_opt.load_state_dict(d["actor"])
        self.critic_opt.load_state_dict(d["critic"])
