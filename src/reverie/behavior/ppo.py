"""Recurrent PPO on real rollouts: GAE, the clipped losses, sequence minibatches, config.

Everything here is a pure function of tensors/arrays (plus one config dataclass); the
agent that owns the networks and the rollout lives in `agents/`.

Rollout layout: time first, `[T, N]` (T steps of N parallel envs). Step t holds the
observation o_t the action was chosen on, the reward r_t that followed and the env's two
end flags of that transition: `terminated` (the MDP ended: no value after it) and
`truncated` (a time limit cut the episode: the value of its final observation still
counts). PPO: Schulman et al. 2017; GAE: Schulman et al. 2016; the value clipping and
advantage normalisation follow the PPO2 / CleanRL implementations.

The driver's collector (`run/collector.py`, a list of envs it steps and resets itself, so a
resume can replay each env exactly) resets an env on the step its episode ends and hands the
episode's final observation along (`Transition.next_obs`), which is what `final_value`
needs; no transition with an ignored action is inserted. Training sequences are
cut at t = 0, L, 2L, ... (`sequence_minibatches`); episode starts inside a sequence reach
the backbone as its reset flags, `gather_sequences(first, batch, L)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from reverie.errors import suggest
from reverie.sequence import BACKBONES


def gae(
    reward: Tensor,
    value: Tensor,
    bootstrap: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    lam: float,
    final_value: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and value targets of a `[T, N]` rollout.

        V'_t = 0                  if terminated_t
               final_value_t      elif truncated_t   (value of the episode's last observation)
               V_{t+1}            elif t < T − 1
               bootstrap          else               (value of the observation after the rollout)
        δ_t = r_t + γ V'_t − V_t
        A_t = δ_t + γ λ (1 − d_t) A_{t+1},   d_t = terminated_t ∨ truncated_t,   A_T = 0

    (GAE paper eq. 16, with the recursion cut at every episode end so no advantage flows
    from one episode into the next.) A step both terminated and truncated counts as
    terminated.

    reward, value: [T, N]; bootstrap: [N] V(o_T); terminated, truncated: [T, N] bool;
    final_value: [T, N], read only where `truncated` (anything elsewhere), required when
    any step is truncated. Returns (advantages, returns = advantages + value), both [T, N].
    λ = 0 gives the one-step TD error, λ = 1 the discounted return to the episode end (or
    to the bootstrap) minus V_t.
    """
    T, N = reward.shape
    for name, x in (("value", value), ("terminated", terminated), ("truncated", truncated)):
        if x.shape != (T, N):
            raise ValueError(f"{name} must be [T, N] = {(T, N)} like reward, got {tuple(x.shape)}")
    if bootstrap.shape != (N,):
        raise ValueError(f"bootstrap must be [N] = ({N},), the value of o_T per env, "
                         f"got {tuple(bootstrap.shape)}")
    terminated, truncated = terminated.bool(), truncated.bool()
    next_value = torch.cat([value[1:], bootstrap[None]], dim=0)
    if bool(truncated.any()):
        if final_value is None:
            raise ValueError("the rollout has truncated steps: pass final_value [T, N], the "
                             "value of each truncated episode's final observation")
        if final_value.shape != (T, N):
            raise ValueError(f"final_value must be [T, N] = {(T, N)}, got "
                             f"{tuple(final_value.shape)}")
        next_value = torch.where(truncated, final_value.to(next_value.dtype), next_value)
    next_value = next_value.masked_fill(terminated, 0.0)
    delta = reward + gamma * next_value - value
    carry = gamma * lam * (~(terminated | truncated)).to(value.dtype)
    adv = torch.zeros_like(value)
    last = torch.zeros_like(bootstrap, dtype=value.dtype)
    for t in reversed(range(T)):
        last = delta[t] + carry[t] * last
        adv[t] = last
    return adv, adv + value


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of `x` over the entries where `mask` (same shape, bool or 0/1) is set."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def normalize_advantages(adv: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """(A − mean) / (std + eps) over one minibatch; `mask` selects the valid entries.

    adv: any shape, e.g. [B, L]; std is the unbiased sample std (as `Tensor.std`).
    Masked-out entries are returned as 0. With a single valid entry only the mean is
    removed (std undefined).
    """
    if mask is None:
        mask = torch.ones_like(adv, dtype=torch.bool)
    m = mask.to(adv.dtype)
    n = m.sum()
    mean = (adv * m).sum() / n.clamp(min=1.0)
    centred = (adv - mean) * m
    if n < 2:
        return centred
    std = ((centred**2).sum() / (n - 1)).sqrt()
    return centred / (std + eps)


class PPOLosses(NamedTuple):
    """Scalars of one PPO minibatch; `total` combines them with the config's weights."""

    policy: Tensor  # clipped surrogate, to minimise
    value: Tensor  # 0.5 · (clipped) squared error
    entropy: Tensor  # mean policy entropy (a bonus: subtracted in `total`)
    approx_kl: Tensor  # E[(r − 1) − log r], no gradient
    clip_fraction: Tensor  # share of entries with |r − 1| > clip, no gradient

    def total(self, vf_coef: float, ent_coef: float) -> Tensor:
        """policy + vf_coef · value − ent_coef · entropy."""
        return self.policy + vf_coef * self.value - ent_coef * self.entropy


def ppo_losses(
    new_logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    new_value: Tensor,
    old_value: Tensor,
    returns: Tensor,
    entropy: Tensor,
    clip: float,
    vclip: float | None,
    mask: Tensor | None = None,
) -> PPOLosses:
    """The PPO-clip objective (PPO eq. 7) and the PPO2 clipped value loss.

    All inputs share one shape (e.g. [B, L]); `mask` (bool, same shape) drops padding.
    r = exp(new_logp − old_logp);
    policy = −E[min(r A, clip(r, 1 − ε, 1 + ε) A)];
    value  = 0.5 E[max((V − R)², (V_old + clip(V − V_old, −vclip, vclip) − R)²)], or
             0.5 E[(V − R)²] when `vclip` is None.
    `adv` is used as given (normalise it first if wanted).
    """
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    policy = -masked_mean(surrogate, mask)
    err = (new_value - returns) ** 2
    if vclip is not None:
        clipped = old_value + (new_value - old_value).clamp(-vclip, vclip)
        err = torch.max(err, (clipped - returns) ** 2)
    value = 0.5 * masked_mean(err, mask)
    with torch.no_grad():
        # the low-variance k3 estimator of KL(old || new) (Schulman's "approximating KL")
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip).to(ratio.dtype), mask)
    return PPOLosses(policy, value, masked_mean(entropy, mask), approx_kl, clip_fraction)


class SequenceBatch(NamedTuple):
    """One minibatch of training sequences: sequence b is steps start[b] .. start[b]+L−1
    of env env[b]. Both [B] int64."""

    env: np.ndarray
    start: np.ndarray


def sequence_minibatches(
    T: int, N: int, seq_len: int, num_minibatches: int, rng: np.random.Generator
) -> list[SequenceBatch]:
    """Cut a [T, N] rollout into N·T/L whole sequences of length L and deal them, shuffled,
    into `num_minibatches` minibatches (sizes differ by at most one).

    Sequences start at t = 0, L, 2L, ... of one env each, so the backbone state stored at
    those steps during the rollout is the state before each sequence. Every sequence is
    in exactly one minibatch.
    """
    if seq_len < 1 or T % seq_len:
        raise ValueError(f"rollout length {T} must be a positive multiple of seq_len {seq_len}")
    per_env = T // seq_len
    count = per_env * N
    if not 1 <= num_minibatches <= count:
        raise ValueError(f"num_minibatches must be in [1, {count}] (the number of sequences), "
                         f"got {num_minibatches}")
    order = rng.permutation(count)
    env, start = order // per_env, (order % per_env) * seq_len
    return [SequenceBatch(env[i], start[i])
            for i in np.array_split(np.arange(count), num_minibatches)]


def gather_sequences(x: Tensor, batch: SequenceBatch, seq_len: int) -> Tensor:
    """x: [T, N, ...] rollout tensor -> [B, L, ...] the minibatch's sequences."""
    env = torch.as_tensor(batch.env, device=x.device, dtype=torch.long)
    start = torch.as_tensor(batch.start, device=x.device, dtype=torch.long)
    t = start[:, None] + torch.arange(seq_len, device=x.device)  # [B, L]
    return x[t, env[:, None]]


@dataclass
class PPOConfig:
    """Recurrent PPO hyper-parameters (section `rppo`).

    The number of parallel envs N is not here: it is the driver's `run.num_envs`, and the
    agent learns it from the first rollout step.

    Defaults are CleanRL's `ppo_atari_lstm` (γ 0.99, GAE λ 0.95, clip 0.2 with PPO2 value
    clipping, entropy 0.01, vf_coef 0.5, 4 epochs, gradient norm 0.5, per-minibatch
    advantage normalisation), sized for a CPU. POPGym's runs used RLlib's PPO instead: 64
    envs x 1024-step fragments (65,536 env steps per update, minibatches of 8,192), backprop
    through 1024-step sequences, λ 1.0, clip 0.3, a squared-error value loss clamped at 10,
    no entropy bonus, vf_coef 1.0, 30 epochs, lr 5e-5, no gradient clipping and an adaptive
    KL penalty (0.2, target 0.01): scores at these defaults compare memories with each other,
    not with POPGym's published numbers.
    """

    rollout_length: int = 128  # steps per env per update (T)
    seq_len: int = 64  # steps per training sequence (L); T must be a multiple
    epochs: int = 4  # passes over the rollout per update
    num_minibatches: int = 2  # per epoch; must divide N·T/L (2 does for any N at these T, L)
    lr: float = 2.5e-4  # constant, no annealing (agents are not told the run's length); the
    # popgym-ppo preset sets 5e-4
    gamma: float = 0.99
    lam: float = 0.95  # GAE λ
    clip: float = 0.2  # ε of the clipped surrogate
    clip_value_loss: bool = True  # PPO2 value clipping, range `value_clip`
    value_clip: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    max_grad_norm: float = 0.5
    norm_adv: bool = True  # per-minibatch advantage normalisation
    prev_action: bool = True  # feed the previous action to the memory (POPGym does)
    backbone: str = "gru"  # POPGym found the GRU its best baseline
    backbone_kwargs: dict = field(default_factory=dict)  # options of that backbone
    d_model: int = 128
    n_layers: int = 1
    hidden: int = 128  # width of the encoder and the actor/critic MLPs


def check_minibatches(cfg: PPOConfig, num_envs: int) -> None:
    """ValueError unless `num_minibatches` divides the N·T/L sequences of a rollout."""
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"the number of envs (run.num_envs) must be >= 1, got {num_envs!r}")
    sequences = num_envs * cfg.rollout_length // cfg.seq_len
    if sequences % cfg.num_minibatches:
        raise ValueError(
            f"rppo.num_minibatches ({cfg.num_minibatches}) must divide the number of training "
            f"sequences run.num_envs·rppo.rollout_length/rppo.seq_len = {num_envs}·"
            f"{cfg.rollout_length}/{cfg.seq_len} = {sequences}; pick a divisor of {sequences}"
        )


def validate_ppo(cfg: PPOConfig, num_envs: int | None = None) -> None:
    """Raise ValueError with the fix if the config cannot be run; `num_envs` (N, when
    known) adds the check that `num_minibatches` divides the N·T/L training sequences."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"rppo.{f.name} must be an integer, got {v!r}")
    for key in ("rollout_length", "seq_len", "epochs", "num_minibatches",
                "d_model", "n_layers", "hidden"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"rppo.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown rppo.backbone '{cfg.backbone}'{suggest(cfg.backbone, BACKBONES)}"
                         f"; choose one of: {', '.join(BACKBONES)}")
    if cfg.rollout_length % cfg.seq_len:
        lo = cfg.rollout_length // cfg.seq_len * cfg.seq_len or cfg.seq_len
        # the divisor of the rollout nearest the asked length: a user who set seq_len alone
        # keeps the rollout they had
        near = min((d for d in range(1, cfg.rollout_length + 1) if cfg.rollout_length % d == 0),
                   key=lambda d: (abs(d - cfg.seq_len), -d))
        raise ValueError(
            f"rppo.rollout_length ({cfg.rollout_length}) must be a multiple of rppo.seq_len "
            f"({cfg.seq_len}); e.g. set seq_len to {near}, or rollout_length to {lo}"
        )
    if num_envs is not None:
        check_minibatches(cfg, num_envs)
    if not cfg.lr > 0:
        raise ValueError(f"rppo.lr must be positive, got {cfg.lr}; the popgym-ppo preset uses "
                         "5e-4")
    for key in ("gamma", "lam"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise ValueError(f"rppo.{key} must be in [0, 1], got {getattr(cfg, key)}; the "
                             f"default is {getattr(PPOConfig, key)}")
    for key in ("clip", "value_clip", "max_grad_norm"):
        if not getattr(cfg, key) > 0:
            raise ValueError(f"rppo.{key} must be positive, got {getattr(cfg, key)}; the "
                             f"default is {getattr(PPOConfig, key)}")
    for key in ("vf_coef", "ent_coef"):
        if not getattr(cfg, key) >= 0:
            raise ValueError(f"rppo.{key} must be >= 0, got {getattr(cfg, key)}; the default "
                             f"is {getattr(PPOConfig, key)}")
