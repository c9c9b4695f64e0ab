"""The world-model agent of the Drama / STORM / DreamerV3 family.

Per `update(replay)`:
  1. world model: one gradient step on replay.sample(batch_size, seq_len, "train");
  2. imagination: warm the backbone on `context − 1` replayed steps (posterior z's, real
     actions, resets honoured), start at the posterior z of the last context step, and roll
     `horizon` steps:  a_t ~ π(feat(z_t, h_{t−1})),  h_t = backbone.step([z_t, a_t]),
     r̂_t = reward(h_t),  ĉ_t = cont(h_t),  z_{t+1} ~ prior(h_t);
  3. behaviour: one actor and one critic step on that trajectory (`ActorCritic.update`),
     with the world model frozen (everything imagined is computed without gradient).

The first imagined state always counts fully (weight 1): the start is a real observation,
and if the last context step opens a new episode the backbone state and h_{t−1} are reset
before it, exactly as when acting. Acting mirrors imagination: encode o_t -> z_t, act on
feat(z_t, h_{t−1}), then advance the backbone with [z_t, a_t] to get the next h_{t−1}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import Tensor, nn

from reverie.behavior.actor_critic import ActorCritic, ActorCriticConfig
from reverie.errors import UserError, suggest
from reverie.nets.optim import OPTIMIZERS, make_optimizer
from reverie.sequence import State
from reverie.world.latent import WorldModel, WorldModelConfig

AgentState = tuple[State, Tensor]  # (backbone state, h_{t−1} [N, deter_dim])


@dataclass
class ImagineConfig:
    world: WorldModelConfig = field(default_factory=WorldModelConfig)
    behavior: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    batch_size: int = 16  # world-model batch: batch_size sequences of seq_len steps
    seq_len: int = 64
    imag_batch: int = 1024  # imagined rollouts per update
    context: int = 8  # replayed steps that start each rollout (the last is its first state)
    horizon: int = 16
    lr_world: float = 1e-4
    world_optimizer: str = "adam"  # adam (STORM) or laprop (Drama's code)
    world_eps: float = 1e-8
    world_grad_clip: float = 1000.0
    warmup_steps: int = 0  # linear learning-rate warm-up of all three optimisers


def _check(cfg: Any) -> None:
    """Raise ValueError naming the fix for a config that cannot work."""
    for name in ("batch_size", "imag_batch", "context", "horizon"):
        if int(getattr(cfg, name)) < 1:
            raise ValueError(f"imagine.{name} must be >= 1, got {getattr(cfg, name)}")
    if int(cfg.seq_len) < 2:
        raise ValueError(
            f"imagine.seq_len must be >= 2 (the KL pairs step t with t+1), got {cfg.seq_len}"
        )
    for name, value in (("world_optimizer", cfg.world_optimizer),
                        ("behavior.optimizer", cfg.behavior.optimizer)):
        if value not in OPTIMIZERS:
            raise ValueError(
                f"imagine.{name} must be one of {', '.join(OPTIMIZERS)}, got {value!r}"
                + suggest(value, OPTIMIZERS))
    if int(cfg.warmup_steps) < 0:
        raise ValueError(f"imagine.warmup_steps must be >= 0, got {cfg.warmup_steps}")
    for name in ("lr_world", "world_grad_clip"):
        if float(getattr(cfg, name)) <= 0:
            raise ValueError(f"imagine.{name} must be positive, got {getattr(cfg, name)}")
    ranges = (("world.unimix", cfg.world.unimix, 0.0, 1.0, "[0, 1)"),
              ("behavior.unimix", cfg.behavior.unimix, 0.0, 1.0, "[0, 1)"),
              ("behavior.gamma", cfg.behavior.gamma, 1e-9, 1.0 + 1e-9, "(0, 1]"),
              ("behavior.lam", cfg.behavior.lam, 0.0, 1.0 + 1e-9, "[0, 1]"))
    for name, value, low, high, text in ranges:
        if not low <= float(value) < high:
            raise ValueError(f"imagine.{name} must be in {text}, got {value}")


def validate_config(cfg: Any, run_cfg: Any = None) -> None:
    """Config-time check used by `reverie.config` (raises UserError for the CLI)."""
    try:
        _check(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None


def _action_spec(space: spaces.Space) -> tuple[int, bool]:
    """(action_dim, discrete) of a Discrete or 1-D Box space in [−1, 1]."""
    if isinstance(space, spaces.Discrete):
        return int(space.n), True
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        if not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
            raise ValueError(
                "continuous actions must lie in [-1, 1]; wrap the env with "
                "gymnasium.wrappers.RescaleAction(env, -1.0, 1.0)"
            )
        return int(space.shape[0]), False
    raise ValueError(
        f"ImagineAgent supports Discrete and 1-D Box action spaces, got {space}; "
        "flatten the action space first"
    )


class ImagineAgent:
    """World model + imagination actor-critic; see the module docstring for the loop."""

    def __init__(
        self,
        obs_spec: dict[str, tuple[tuple[int, ...], str]],
        action_space: spaces.Space,
        cfg: ImagineConfig,
        device: torch.device,
        seed: int,
    ) -> None:
        _check(cfg)
        self.cfg = cfg
        self.device = torch.device(device)
        self.obs_keys = sorted(obs_spec)
        self.action_dim, self.discrete = _action_spec(action_space)
        # Parameters depend only on `seed`; the global generator (which the driver owns
        # and checkpoints) is left untouched by construction.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.world = WorldModel(obs_spec, self.action_dim, self.discrete, cfg.world)
            self.behavior = ActorCritic(
                self.world.feat_dim, self.action_dim, self.discrete, cfg.behavior
            )
        self.world.to(self.device)
        self.behavior.to(self.device)  # in place: the optimisers keep their parameters
        self.world_opt = make_optimizer(
            cfg.world_optimizer, self.world.parameters(), cfg.lr_world, cfg.world_eps
        )
        self.updates = 0

    # -- acting -------------------------------------------------------------------------
    def initial_state(self, n: int) -> AgentState:
        """Zero backbone state and h_{−1} = 0 for n environments."""
        h = torch.zeros(n, self.world.deter_dim, device=self.device)
        return self.world.initial_state(n), h

    def _obs(self, obs: dict[str, Any]) -> dict[str, Tensor]:
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise ValueError(f"observation is missing keys {missing}; pass {self.obs_keys}")
        return {k: torch.as_tensor(obs[k], device=self.device) for k in self.obs_keys}

    @torch.no_grad()
    def act(
        self, obs: dict[str, np.ndarray], first: np.ndarray, state: AgentState, explore: bool
    ) -> tuple[np.ndarray, AgentState]:
        """obs: {key: [N, ...]}; first: [N] bool (row starts an episode: its state is reset).

        Returns actions ([N] int64 or [N, A] float32 in [−1, 1]) and the next state.
        `explore=False` takes the posterior's and the policy's modes.
        """
        backbone_state, h_prev = state
        first_t = torch.as_tensor(np.asarray(first, dtype=bool), device=self.device)
        if first_t.any():
            backbone_state, h_prev = self._episode_start(backbone_state, h_prev, first_t)
        logits = self.world.encode(self._obs(obs))
        if explore:
            z = self.world.sample(logits)
        else:
            z = F.one_hot(logits.argmax(-1), self.world.classes).flatten(-2).float()
        action, _ = self.behavior.actor.sample(self.world.feat(z, h_prev), explore)
        h, backbone_state = self.world.imagine_step(z, action, backbone_state)
        return action.cpu().numpy(), (backbone_state, h)

    def _episode_start(self, state: State, h_prev: Tensor, mask: Tensor) -> AgentState:
        """Rows where `mask: [N] bool` start an episode: zero backbone state and h_{t−1}."""
        return self.world.reset_state(state, mask), h_prev.masked_fill(mask[:, None], 0.0)

    # -- learning -----------------------------------------------------------------------
    def _batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _set_lr(self) -> None:
        cfg = self.cfg
        frac = min(1.0, (self.updates + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        pairs = [
            (self.world_opt, cfg.lr_world),
            (self.behavior.actor_opt, cfg.behavior.lr_actor),
            (self.behavior.critic_opt, cfg.behavior.lr_critic),
        ]
        for opt, lr in pairs:
            for group in opt.param_groups:
                group["lr"] = lr * frac

    def train_world(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One world-model gradient step on a [B, T] replay batch."""
        loss, metrics, _ = self.world.loss(batch)
        self.world_opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.world.parameters(), self.cfg.world_grad_clip)
        self.world_opt.step()
        metrics["wm/grad_norm"] = grad_norm.item()
        return metrics

    @torch.no_grad()
    def imagine(self, ctx: dict[str, Tensor]) -> dict[str, Tensor]:
        """Roll the actor in the world model from replayed contexts [B, C, ...].

        Returns feat [H+1, B, F], action [H, B(, A)] (the actor's raw samples),
        reward [H, B], cont [H, B].
        """
        world, actor = self.world, self.behavior.actor
        obs = {k: ctx[k] for k in self.obs_keys}
        reset = ctx["reset"].bool()
        B, C = reset.shape
        if C > 1:
            _, h, state = world.observe(
                {k: v[:, :-1] for k, v in obs.items()}, ctx["action"][:, :-1], reset[:, :-1]
            )
            h_prev = h[:, -1]
        else:
            state = world.initial_state(B)
            h_prev = torch.zeros(B, world.deter_dim, device=self.device)
        state, h_prev = self._episode_start(state, h_prev, reset[:, -1])
        z = world.sample(world.encode({k: v[:, -1] for k, v in obs.items()}))

        feats, actions, hs = [], [], []
        for _ in range(self.cfg.horizon):
            feat = world.feat(z, h_prev)
            action, raw = actor.sample(feat)
            h_prev, state = world.imagine_step(z, action, state)
            z = world.sample(world.prior(h_prev))
            feats.append(feat)
            actions.append(raw)
            hs.append(h_prev)
        feats.append(world.feat(z, h_prev))
        h_all = torch.stack(hs)  # the heads run once over all steps, not inside the loop
        return {
            "feat": torch.stack(feats),
            "action": torch.stack(actions),
            "reward": world.reward(h_all),
            "cont": world.cont(h_all),
        }

    def update(self, replay: Any) -> dict[str, float]:
        """One world-model step, then one actor-critic step on imagined rollouts."""
        cfg = self.cfg
        self._set_lr()
        batch = self._batch(replay.sample(cfg.batch_size, cfg.seq_len, purpose="train"))
        metrics = self.train_world(batch)
        ctx = self._batch(replay.sample(cfg.imag_batch, cfg.context, purpose="imagine"))
        traj = self.imagine(ctx)
        metrics.update(self.behavior.update(**traj))
        self.updates += 1
        return metrics

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Modules, optimisers, return normaliser and slow critic; tensors and primitives
        only, so `torch.load(..., weights_only=True)` reads it back."""
        return {
            "world": self.world.state_dict(),
            "behavior": self.behavior.state_dict(),  # actor, critic, slow critic, normaliser
            "world_opt": self.world_opt.state_dict(),
            "behavior_opt": self.behavior.optim_state_dict(),
            "updates": torch.tensor(self.updates, dtype=torch.long),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.world.load_state_dict(d["world"])
        self.behavior.load_state_dict(d["behavior"])
        self.world_opt.load_state_dict(d["world_opt"])
        self.behavior.load_optim_state_dict(d["behavior_opt"])
        self.updates = int(d["updates"])
