"""Recurrent PPO with any backbone of the zoo as its memory (POPGym's PPO + memory model).

Acting, per env step (`act(..., explore=True)`, then the driver's `observe`):
    x_t = [o_t, features(a_{t−1})]       a_{t−1} = 0 and the memory s reset where o_t is first
    h_t, s_t = backbone.step(encoder(x_t), s_{t−1})
    a_t ~ π(·|h_t),  V_t = critic(h_t)
The rollout [T, N] keeps x_t, a_t, log π(a_t), V_t, r_t, the end flags, the episode-start
flags and, at t ≡ 0 (mod seq_len), the memory s_{t−1} after the reset: the start state of
the training sequence that begins at t.

Update, every `rollout_length` steps (`update(None)`):
    GAE(γ, λ), with V(final observation) for truncated episodes and V(o_T) as bootstrap;
    `epochs` x `num_minibatches` of whole sequences [B, L]: `backbone.forward` from each
    stored start state with the episode starts as resets; clipped surrogate + (clipped)
    value loss − entropy bonus (PPO eq. 9), advantages normalised per minibatch, global
    gradient-norm clip, Adam (eps 1e-5, CleanRL), constant learning rate.

Value of a truncated episode's final observation: `observe` runs one more backbone step
on that observation from the env's memory after the step (s_t, with a_t as the previous
action) and evaluates the critic; the same step on the last `next_obs` of the rollout gives
the bootstrap. Both are computed with the weights that acted (no update happens inside a
rollout), so they equal what the next `act` would have computed.

The previous reward as a memory input: `env.prev_reward=true` adds it to the observation
(for every agent, in evaluation too), so it reaches the memory like any observation key.
Not here: learning-rate annealing (the agent is not told the run's length; POPGym's PPO used a
constant rate).
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from reverie.behavior.distributions import (
    ActionHead,
    Distribution,
    action_features,
    action_features_size,
)
from reverie.behavior.ppo import (
    PPOConfig,
    check_minibatches,
    gae,
    gather_sequences,
    normalize_advantages,
    ppo_losses,
    sequence_minibatches,
    validate_ppo,
)
from reverie.behavior.rollout import Rollout
from reverie.envs import vector_width
from reverie.envs.actions import check_unit_box
from reverie.errors import UserError
from reverie.nets.mlp import MLP
from reverie.nets.optim import adam
from reverie.rng import generator_state, numpy_generator, set_generator_state
from reverie.sequence import State, make_backbone

RPPOConfig = PPOConfig  # section `rppo`; N is the driver's run.num_envs
AgentState = dict[str, Any]  # {"memory": backbone State, "prev_action": [N, A]}


class RPPOConfigError(UserError, ValueError):
    """A bad `rppo` setting: a UserError for the CLI (exit 2), a ValueError for callers."""


def training_notes(cfg: Any) -> list[str]:
    """Legitimate settings under which the run updates nothing (`config.training_notes`)."""
    one = int(cfg.rppo.rollout_length) * int(cfg.run.num_envs)
    if int(cfg.run.steps) < one:
        return [f"run.steps={cfg.run.steps} is shorter than one rollout (rppo.rollout_length="
                f"{cfg.rppo.rollout_length} x run.num_envs={cfg.run.num_envs} = {one} env "
                "steps): no update will happen; raise --steps"]
    return []


def check_spaces(obs_spec: dict[str, tuple[tuple[int, ...], str]],
                 action_space: spaces.Space) -> None:
    """What rppo can run (ValueError naming the fix): 1-D vector observations, and Box
    actions in [-1, 1]; checked by the driver before a run or sweep starts."""
    vector_width(obs_spec, "rppo")
    check_unit_box(action_space, "rppo")


def validate_config(section: Any, cfg: Any = None) -> None:
    """Config-time check of the `rppo` section and, given the full run config `cfg`, of the
    run settings it depends on (`run.prefill` must be 0, `run.num_envs` sets N)."""
    try:
        ppo = _as_config(section)
        num_envs = None
        if cfg is not None:
            run = cfg.run
            if int(run.prefill) != 0:
                raise ValueError(f"rppo is on-policy and learns from its own actions only: set "
                                 f"run.prefill=0 (got {run.prefill})")
            num_envs = int(getattr(run, "num_envs", 1))
        validate_ppo(ppo, num_envs)
    except ValueError as e:
        raise RPPOConfigError(str(e)) from None


def _as_config(section: Any) -> PPOConfig:
    if isinstance(section, PPOConfig):
        return section
    from omegaconf import DictConfig, OmegaConf

    obj = OmegaConf.to_object(section) if isinstance(section, DictConfig) else section
    if isinstance(obj, PPOConfig):
        return obj
    return PPOConfig(**(asdict(obj) if is_dataclass(obj) else dict(obj)))


class RecurrentActorCritic(nn.Module):
    """encoder MLP -> backbone (memory) -> actor head and critic, the verbs of the agent."""

    def __init__(self, in_dim: int, action_space: spaces.Space, cfg: PPOConfig) -> None:
        super().__init__()
        self.encoder = MLP(in_dim, cfg.d_model, cfg.hidden, 1)
        self.backbone = make_backbone(cfg.backbone, d_model=cfg.d_model, n_layers=cfg.n_layers,
                                      options_key="rppo.backbone_kwargs",
                                      **dict(cfg.backbone_kwargs))
        self.actor = MLP(cfg.d_model, None, cfg.hidden, 1)
        self.action_head = ActionHead(action_space, cfg.hidden)
        self.critic = MLP(cfg.d_model, 1, cfg.hidden, 1)

    def step(self, x: Tensor, memory: State) -> tuple[Tensor, State]:
        """One step of memory: x [N, F] -> h [N, D]."""
        return self.backbone.step(self.encoder(x), memory)

    def unroll(self, x: Tensor, memory: State, reset: Tensor) -> Tensor:
        """A sequence in parallel: x [B, L, F], reset [B, L] bool -> h [B, L, D]."""
        h, _ = self.backbone(self.encoder(x), memory, reset)
        return h

    def policy(self, h: Tensor) -> Distribution:
        return self.action_head(self.actor(h))

    def value(self, h: Tensor) -> Tensor:
        """h [..., D] -> V [...]."""
        return self.critic(h).squeeze(-1)


class RPPOAgent:
    """Recurrent PPO on the driver's on-policy rollouts; see the module docstring."""

    uses_replay = False  # the driver builds no replay and calls update(None)
    schedule = ("one PPO update, rppo.epochs passes, per rollout of rppo.rollout_length x "
                "run.num_envs env steps")

    def __init__(
        self,
        obs_spec: dict[str, tuple[tuple[int, ...], str]],
        action_space: spaces.Space,
        cfg: PPOConfig,
        device: torch.device | str,
        seed: int,
    ) -> None:
        validate_ppo(cfg)
        self.cfg = cfg
        self.device = torch.device(device)
        self.obs_keys = sorted(obs_spec)
        check_spaces(obs_spec, action_space)
        self.obs_dim = vector_width(obs_spec, "rppo")
        self.action_space = action_space
        self.prev_action_dim = action_features_size(action_space) if cfg.prev_action else 0
        # Parameters depend only on `seed`; the driver's global generator is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = RecurrentActorCritic(self.obs_dim + self.prev_action_dim, action_space,
                                            cfg).to(self.device)
        self.opt = adam(self.net.parameters(), cfg.lr, eps=1e-5)
        self.gen = torch.Generator(device=self.device)  # action sampling
        self.gen.manual_seed(seed)
        self.rng = numpy_generator(seed)  # minibatch order
        self.num_envs: int | None = None  # N, known from the first rollout step
        self.updates = 0
        self.rollout = Rollout(cfg.rollout_length, cfg.seq_len)
        self._pending: dict[str, Any] | None = None  # the explored step awaiting observe

    # -- acting -------------------------------------------------------------------------
    def initial_state(self, n: int) -> AgentState:
        """Zero memory and previous action for n envs."""
        return {"memory": self.net.backbone.initial_state(n),
                "prev_action": torch.zeros(n, self.prev_action_dim, device=self.device)}

    def _inputs(self, obs: dict[str, Any], prev_action: Tensor) -> Tensor:
        """{key: [N, D_k]} and [N, A] -> x [N, F] (keys in sorted order)."""
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise ValueError(f"observation is missing keys {missing}; pass {self.obs_keys}")
        parts = [torch.as_tensor(np.asarray(obs[k]), device=self.device).float()
                 for k in self.obs_keys]
        return torch.cat([*parts, prev_action], dim=-1)

    def _env_action(self, raw: Tensor) -> Tensor:
        """The distribution's sample -> the env's action (offset by `start`, or clipped)."""
        space = self.action_space
        if isinstance(space, spaces.Box):
            return raw.clamp(-1.0, 1.0)
        return raw + torch.as_tensor(space.start, device=raw.device).long()

    @torch.no_grad()
    def act(
        self, obs: dict[str, np.ndarray], first: np.ndarray, state: AgentState, explore: bool
    ) -> tuple[np.ndarray, AgentState]:
        """obs: {key: [N, D]}; first: [N] bool (the row's memory and previous action reset).

        Returns actions ([N] or [N, K] int64, or [N, d] float32 in [−1, 1]) and the next
        state. explore=True samples and records the step for `observe`; explore=False takes
        the mode and touches nothing of the rollout (evaluation).
        """
        if self.net.training:  # (a mode switch walks every module: only when needed)
            self.net.eval()  # acting is deterministic given the generator (no dropout)
        # a copy (torch.tensor): the caller's array may change after act returns
        first_t = torch.tensor(np.asarray(first, dtype=bool), device=self.device)
        memory, prev = state["memory"], state["prev_action"]
        if bool(first_t.any()):
            memory = self.net.backbone.reset_state(memory, first_t)
            prev = prev.masked_fill(first_t[:, None], 0.0)
        x = self._inputs(obs, prev)
        h, memory_after = self.net.step(x, memory)
        dist = self.net.policy(h)
        raw = dist.sample(self.gen) if explore else dist.mode()
        action = self._env_action(raw)
        prev_after = (action_features(action, self.action_space) if self.prev_action_dim
                      else prev)
        if explore:
            self._record_act(x, first_t, raw, dist.log_prob(raw), self.net.value(h), memory,
                             memory_after, prev_after)
        out = action.cpu().numpy()
        out = out.astype(np.float32) if isinstance(self.action_space, spaces.Box) else out
        return out, {"memory": memory_after, "prev_action": prev_after}

    def _record_act(self, x: Tensor, first: Tensor, raw: Tensor, logp: Tensor, value: Tensor,
                    memory: State, memory_after: State, prev_after: Tensor) -> None:
        n = x.shape[0]
        if self.num_envs is None:
            check_minibatches(self.cfg, n)
            self.num_envs = n
        elif n != self.num_envs:
            raise ValueError(f"the rollout has {self.num_envs} envs but act() got {n} rows; "
                             "evaluate with explore=False")
        self._pending = {
            "x": x, "first": first, "action": raw, "logp": logp, "value": value,
            "memory_after": memory_after, "prev_after": prev_after,
        }
        if self.rollout.needs_start_state:
            self._pending["start_memory"] = memory

    # -- the rollout ----------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, t: Any) -> None:
        """Record the transition of the last `act(..., explore=True)`; `t` has obs, action,
        reward, terminated, truncated, next_obs (the final observation where an episode
        ended) and first, each batched over the N envs."""
        p = self._pending
        if p is None:
            raise RuntimeError("observe() needs a preceding act(..., explore=True)")
        first = torch.as_tensor(np.asarray(t.first, dtype=bool), device=self.device)
        if not torch.equal(first, p["first"]):
            raise ValueError("observe(t): t.first differs from the `first` the action was "
                             "chosen with")
        dev = self.device
        reward = torch.as_tensor(np.asarray(t.reward, dtype=np.float32), device=dev)
        terminated = torch.as_tensor(np.asarray(t.terminated, dtype=bool), device=dev)
        truncated = torch.as_tensor(np.asarray(t.truncated, dtype=bool), device=dev)
        last = len(self.rollout) + 1 == self.cfg.rollout_length
        need_final = truncated & ~terminated
        final_value = torch.zeros_like(p["value"])
        if last or bool(need_final.any()):
            self.net.eval()
            h, _ = self.net.step(self._inputs(t.next_obs, p["prev_after"]), p["memory_after"])
            next_value = self.net.value(h)
            final_value = torch.where(need_final, next_value, final_value)
            if last:
                self.rollout.bootstrap = next_value
        self.rollout.add(
            {"x": p["x"], "first": first, "action": p["action"], "logp": p["logp"],
             "value": p["value"], "reward": reward, "terminated": terminated,
             "truncated": truncated, "final_value": final_value},
            p.get("start_memory"),
        )
        self._pending = None

    def updates_due(self, env_steps: int) -> int:
        """1 when the rollout is full (the driver then calls update(None) once), else 0."""
        return int(self.rollout.full)

    # -- learning -----------------------------------------------------------------------
    def update(self, replay: Any = None) -> dict[str, float]:
        """GAE, then `epochs` passes of clipped-PPO minibatches over whole sequences; clears
        the rollout. `replay` is ignored (None from the driver)."""
        cfg = self.cfg
        T, L = cfg.rollout_length, cfg.seq_len
        if not self.rollout.full:
            raise RuntimeError(f"update() needs a full rollout of {T} steps, have "
                               f"{len(self.rollout)}; call it when updates_due() says so")
        r = self.rollout.tensors()  # [T, N, ...]
        N = r["x"].shape[1]
        adv, ret = gae(r["reward"], r["value"], self.rollout.bootstrap, r["terminated"],
                       r["truncated"], cfg.gamma, cfg.lam, r["final_value"])
        sums: dict[str, float] = {}
        count = 0
        self.net.train()
        for _ in range(cfg.epochs):
            for batch in sequence_minibatches(T, N, L, cfg.num_minibatches, self.rng):
                memory = self.rollout.start_states(batch)
                seq = {name: gather_sequences(r[name], batch, L)
                       for name in ("x", "first", "action", "logp", "value")}
                h = self.net.unroll(seq["x"], memory, seq["first"])
                dist = self.net.policy(h)
                mb_adv = gather_sequences(adv, batch, L)
                if cfg.norm_adv:
                    mb_adv = normalize_advantages(mb_adv)
                losses = ppo_losses(
                    dist.log_prob(seq["action"]), seq["logp"], mb_adv, self.net.value(h),
                    seq["value"], gather_sequences(ret, batch, L), dist.entropy(), cfg.clip,
                    cfg.value_clip if cfg.clip_value_loss else None,
                )
                self.opt.zero_grad(set_to_none=True)
                losses.total(cfg.vf_coef, cfg.ent_coef).backward()
                grad_norm = nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
                self.opt.step()
                for name, v in (("policy_loss", losses.policy), ("value_loss", losses.value),
                                ("entropy", losses.entropy), ("approx_kl", losses.approx_kl),
                                ("clip_fraction", losses.clip_fraction),
                                ("grad_norm", grad_norm)):
                    sums[name] = sums.get(name, 0.0) + float(v.detach())
                count += 1
        metrics = {f"ppo/{k}": v / count for k, v in sums.items()}
        var_ret = float(ret.var())
        metrics["ppo/explained_variance"] = (
            1.0 - float((ret - r["value"]).var()) / var_ret if var_ret > 0 else 0.0)
        metrics["ppo/value_mean"] = float(r["value"].mean())
        metrics["ppo/return_mean"] = float(ret.mean())
        metrics["ppo/rollout_reward_mean"] = float(r["reward"].mean())
        # the driver's grad_steps counts updates (one per rollout); each is this many
        # optimiser steps (SB3's n_updates counts these)
        metrics["ppo/minibatch_steps"] = float(count)
        self.updates += 1
        self.rollout.clear()
        return metrics

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Networks, optimiser, both generators, the partial rollout and the pending step:
        tensors, ints, lists and dicts only (`torch.load(..., weights_only=True)`)."""
        d: dict[str, Any] = {
            "net": self.net.state_dict(),
            "opt": self.opt.state_dict(),
            "gen": self.gen.get_state(),
            "rng": generator_state(self.rng),
            "updates": self.updates,
            "num_envs": -1 if self.num_envs is None else self.num_envs,
            "rollout": self.rollout.state_dict(),
        }
        if self._pending is not None:
            d["pending"] = {k: [dict(layer) for layer in v] if isinstance(v, tuple) else v
                            for k, v in self._pending.items()}
        return d

    def restore_learned(self, d: dict[str, Any]) -> None:
        """A rollback after a non-finite loss: the checkpoint's networks, optimiser, counters
        and generators, but the rollout collected since goes on — the envs and the acting
        memory were not rolled back, so the checkpoint's partial rollout would join steps
        from two times into one sequence."""
        rollout, pending = self.rollout.state_dict(), self._pending
        self.load_state_dict(d)
        self.rollout.load_state_dict(rollout, self.device)
        self._pending = pending

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.net.load_state_dict(d["net"])
        self.opt.load_state_dict(d["opt"])
        self.gen.set_state(d["gen"])
        set_generator_state(self.rng, d["rng"])
        self.updates = int(d["updates"])
        self.num_envs = None if int(d["num_envs"]) < 0 else int(d["num_envs"])
        self.rollout.load_state_dict(d["rollout"], self.device)
        self._pending = None
        if "pending" in d:
            dev = self.device
            self._pending = {
                k: tuple({n: x.to(dev) for n, x in layer.items()} for layer in v)
                if isinstance(v, list) else v.to(dev)
                for k, v in d["pending"].items()
            }
