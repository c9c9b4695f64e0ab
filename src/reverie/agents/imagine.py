"""The world-model agent of the Drama / STORM / DreamerV3 family.

Per `update(replay)`:
  1. world model: one gradient step on replay.sample(batch_size, seq_len, "train");
  2. imagination: warm the backbone on `context − 1` replayed steps (posterior z's, real
     actions, resets honoured), start at the posterior z of the last context step, and roll
     `horizon` steps:  a_t ~ π(feat(z_t, h_{t−1})),  h_t = backbone.step([z_t, a_t]),
     r̂_t = reward(h_t),  ĉ_t = cont(h_t),  z_{t+1} ~ prior(h_t);
  3. behaviour: one actor and one critic step on that trajectory (`ActorCritic.update`),
     with the world model frozen (everything imagined is computed without gradient).

COPlanner (`imagine.coplanner.mode`, off by default; see `agents/coplanner.py`): the
conservative planner replaces the actor's sample at each imagined step by the best of K
candidates (−λ_c·u), the optimistic one does the same when acting with explore=True
(+λ_o·u); disagreement heads for u train on each world-model batch.

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

from reverie.agents.coplanner import CoplannerConfig, LatentCoplanner, mode_of
from reverie.agents.coplanner import check_config as check_coplanner
from reverie.behavior.actor_critic import ActorCritic, ActorCriticConfig
from reverie.behavior.actor_critic import check_config as check_behavior_config
from reverie.compiler import Compiler, run_eagerly
from reverie.envs.actions import check_unit_box
from reverie.errors import UserError, suggest
from reverie.nets import categorical_kernel, image_kernel
from reverie.nets.cpp_kernel import on_cpu
from reverie.nets.optim import OPTIMIZERS, make_optimizer
from reverie.sequence import State, contiguous_state, ssd_kernel
from reverie.world.latent import WorldModel, WorldModelConfig
from reverie.world.latent import check_config as check_world_config

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
    warmup_steps: int = 0  # linear learning-rate warm-up of all the optimisers
    coplanner: CoplannerConfig = field(default_factory=CoplannerConfig)
    # what the backbone sees when acting: the whole episode so far (state carried step by
    # step), or only the last `act_window` steps re-run from a zero state (Drama's code),
    # the length of context the model was trained on
    act_context: str = "episode"
    act_window: int = 16
    # the latent the actor acts on: the posterior of the current observation, or the prior
    # predicted from the history before it (Drama's code; the first step of an episode,
    # which has no history, uses the posterior — Drama acts randomly there)
    act_latent: str = "posterior"
    # the first imagined state: the posterior of the context's last step (after the first
    # context−1 steps), or a prior sample after all `context` steps (Drama's code)
    imag_start: str = "posterior"


ACT_CONTEXTS = ("episode", "window")
LATENTS = ("posterior", "prior")
# run.compile=auto compiles the imagined step with these backbones: at the cartpole preset its
# cold compile costs less than it saves in a 5000-step run (bench/compile.py --auto; ffm and
# gru save less than their compile costs: gru's nn.GRU stays eager under dynamo anyway)
AUTO_COMPILE_STEP = frozenset({"mamba2", "mamba1", "transformer"})


def _check(cfg: Any) -> None:
    """Raise ValueError naming the fix for a config that cannot work."""
    for name in ("batch_size", "imag_batch", "context", "horizon"):
        if int(getattr(cfg, name)) < 1:
            raise ValueError(f"imagine.{name} must be >= 1, got {getattr(cfg, name)}")
    if int(cfg.seq_len) < 2:
        raise ValueError(
            f"imagine.seq_len must be >= 2 (the KL pairs step t with t+1), got {cfg.seq_len}"
        )
    if cfg.world_optimizer not in OPTIMIZERS:
        raise ValueError(f"imagine.world_optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                         f"{cfg.world_optimizer!r}{suggest(cfg.world_optimizer, OPTIMIZERS)}")
    if cfg.act_context not in ACT_CONTEXTS:
        raise ValueError(f"imagine.act_context must be one of {', '.join(ACT_CONTEXTS)}, got "
                         f"{cfg.act_context!r}{suggest(str(cfg.act_context), ACT_CONTEXTS)}")
    for key in ("act_latent", "imag_start"):
        value = str(getattr(cfg, key))
        if value not in LATENTS:
            raise ValueError(f"imagine.{key} must be one of {', '.join(LATENTS)}, got "
                             f"{value!r}{suggest(value, LATENTS)}")
    if cfg.act_context == "window" and not 1 <= int(cfg.act_window) <= int(cfg.seq_len):
        raise ValueError(f"imagine.act_window must be in [1, seq_len={cfg.seq_len}] (the model "
                         f"never saw longer sequences), got {cfg.act_window}")
    if int(cfg.warmup_steps) < 0:
        raise ValueError(f"imagine.warmup_steps must be >= 0, got {cfg.warmup_steps}")
    for name in ("lr_world", "world_grad_clip"):
        if float(getattr(cfg, name)) <= 0:
            raise ValueError(f"imagine.{name} must be positive, got {getattr(cfg, name)}")
    check_coplanner(cfg.coplanner)
    check_world_config(cfg.world)
    check_behavior_config(cfg.behavior)


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
        check_unit_box(space, "imagine")
        return int(space.shape[0]), False
    raise ValueError(
        f"ImagineAgent supports Discrete and 1-D Box action spaces, got {space}; "
        "flatten the action space first"
    )


# settings that make another algorithm: reports group runs by them too (eval.report)
REPORT_KEYS = ("imagine.coplanner.mode",)


def check_spaces(obs_spec: dict[str, tuple[tuple[int, ...], str]],
                 action_space: spaces.Space) -> None:
    """What the agent can act in (ValueError naming the fix); checked by the driver before a
    run or sweep starts."""
    _action_spec(action_space)


def _fork_rng(device: torch.device) -> Any:
    """Fork the random stream of `device` (the CPU's, plus the GPU's on CUDA)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.random.fork_rng(devices=[index])
    return torch.random.fork_rng(devices=[])


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
                self.world.feat_dim, self.action_dim, self.discrete, cfg.behavior,
                onehot_width=self.world.stoch_dim,
            )
            self.world.to(self.device)
            self.behavior.to(self.device)  # in place: the optimisers keep their parameters
            self.coplanner = None if mode_of(cfg.coplanner) == "off" else LatentCoplanner(
                self.world, self.behavior.actor, cfg.coplanner, cfg.behavior.gamma,
                self.device,
            )
        self.world_opt = make_optimizer(
            cfg.world_optimizer, self.world.parameters(), cfg.lr_world, cfg.world_eps
        )
        self.updates = 0
        # run.compile=on (`compile`): compiled versions of the update's tensor functions,
        # and the runner of the code that calls them (falls back to eager on failure)
        self._world_loss: Any = None
        self._imagined_step: Any = None
        self._observe: Any = None  # imagination's context warm-up (no grad)
        self._act_step_compiled: Any = None  # acting's tensor work
        self._run: Any = run_eagerly
        self.compiler: Compiler | None = None  # `compile`'s (`.eager` after a fall-back)

    # -- acting -------------------------------------------------------------------------
    def initial_state(self, n: int) -> AgentState:
        """Zero backbone state and h_{−1} = 0 for n environments (act_context=episode), or
        an empty window of backbone inputs and its fill count (act_context=window)."""
        if self.cfg.act_context == "window":
            w = self.cfg.act_window - 1
            d = self.world.deter_dim
            return (torch.zeros(n, w, d, device=self.device),
                    torch.zeros(n, dtype=torch.long, device=self.device))
        h = torch.zeros(n, self.world.deter_dim, device=self.device)
        return self.world.initial_state(n), h

    def _window_context(self, window: Tensor, count: Tensor) -> AgentState:
        """Backbone state and h_{t−1} from re-running the last `count` inputs of each row's
        window from a zero state: window [N, W−1, D] (newest last), count [N] -> as
        `initial_state` of episode mode. Older slots are masked out by a reset flag at the
        row's first valid step, so nothing before it reaches the result."""
        n, w, _ = window.shape
        start = self.world.initial_state(n)
        empty = count == 0
        if w == 0:
            return start, torch.zeros(n, self.world.deter_dim, device=self.device)
        pos = torch.arange(w, device=self.device)
        first_valid = (w - count)[:, None]  # [N, 1]
        reset = pos[None, :] == first_valid
        h, state = self.world.backbone(window, start, reset)
        state = self.world.reset_state(state, empty)
        return state, h[:, -1].masked_fill(empty[:, None], 0.0)

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
        obs_t = self._obs(obs)
        first_t = torch.as_tensor(np.asarray(first, dtype=bool), device=self.device)
        cop = self.coplanner
        compiled = self._act_step_compiled
        if compiled is None or (explore and cop is not None and cop.optimistic):
            action, state = self._act_step(obs_t, first_t, state, explore)
        else:  # run.compile=on; the optimistic planner's loop stays eager
            action, state = self._run(compiled, obs_t, first_t, state, explore)
        return action.cpu().numpy(), state

    def _act_step(
        self, obs: dict[str, Tensor], first: Tensor, state: AgentState, explore: bool
    ) -> tuple[Tensor, AgentState]:
        """`act` on tensors: the action [N(, A)] and the next state."""
        window = self.cfg.act_context == "window"
        if window:
            inputs, count = state
            count = count.masked_fill(first, 0)
            backbone_state, h_prev = self._window_context(inputs, count)
        else:
            backbone_state, h_prev = state
            # compiled: no branch on the data (resetting no row leaves the state's values)
            if torch.compiler.is_compiling() or first.any():
                backbone_state, h_prev = self._episode_start(backbone_state, h_prev, first)
        z = self._latent(self.world.encode(obs), explore)  # joins the history
        z_act = z
        if self.cfg.act_latent == "prior":  # rows with a history act on its prediction
            history = count > 0 if window else ~first
            z_act = torch.where(history[:, None], self._latent(self.world.prior(h_prev), explore),
                                z)
        cop = self.coplanner
        if explore and cop is not None and cop.optimistic:
            result = cop.plan(z_act, h_prev, backbone_state, "optimistic")
            action = cop.env_action(result.action)
            cop.act_model_steps += result.model_steps
        else:
            action, _ = self.behavior.actor.sample(self.world.feat(z_act, h_prev), explore)
        if window:  # the step's input joins the window; the next act re-runs it from zero
            x = self.world.backbone_input(z, action)
            if inputs.shape[1]:
                inputs = torch.cat([inputs[:, 1:], x[:, None]], dim=1)
                count = (count + 1).clamp(max=inputs.shape[1])
            return action, (inputs, count)
        h, backbone_state = self.world.imagine_step(z, action, backbone_state)
        if torch.compiler.is_compiling():  # states leave in the layout they come in with
            backbone_state = contiguous_state(backbone_state)
        return action, (backbone_state, h)

    def _latent(self, logits: Tensor, explore: bool) -> Tensor:
        """A sample of the categorical latent (explore) or its mode: [N, stoch_dim]."""
        if explore:
            return self.world.sample(logits)
        return F.one_hot(logits.argmax(-1), self.world.classes).flatten(-2).float()

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
        if self.coplanner is not None:
            self.coplanner.set_lr_fraction(frac)

    def train_world(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One world-model gradient step on a [B, T] replay batch (and one step of the
        COPlanner heads on the same batch, from the model's detached latents)."""
        terms, aux = self._run(self._world_gradients, batch)
        metrics = {k: v.item() for k, v in terms.items()}
        grad_norm = nn.utils.clip_grad_norm_(self.world.parameters(), self.cfg.world_grad_clip)
        self.world_opt.step()
        metrics["wm/grad_norm"] = grad_norm.item()
        if self.coplanner is not None:
            metrics.update(self.coplanner.train(aux, batch))
        return metrics

    def _world_gradients(
        self, batch: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The world-model loss's gradients in `.grad`: (0-d metrics, detached latents)."""
        loss, terms, aux = (self._world_loss or self.world.loss_terms)(batch)
        self.world_opt.zero_grad(set_to_none=True)
        loss.backward()
        return terms, aux

    @torch.no_grad()
    def imagine(self, ctx: dict[str, Tensor]) -> dict[str, Tensor]:
        """Roll the actor in the world model from replayed contexts [B, C, ...].

        Returns feat [H+1, B, F], index [H+1, B, S] (the columns of the ones of each
        feat's one-hot z, `WorldModel.sample_index`), action [H, B(, A)] (the actor's raw
        samples, or with the conservative planner the chosen candidates'), reward [H, B],
        cont [H, B].

        The planner draws its candidates and lookahead from a forked random stream, and the
        actor is still sampled once per step from the imagination's own stream: that stream
        advances as without the planner, so with K = 1 (and any λ) the trajectory is the
        plain actor's, draw for draw (tests/test_imagine_coplanner.py).
        """
        world, actor, cop = self.world, self.behavior.actor, self.coplanner
        planning = cop is not None and cop.conservative
        obs = {k: ctx[k] for k in self.obs_keys}
        reset = ctx["reset"].bool()
        B, C = reset.shape
        observe = self._observe or world.observe
        # the warm-up's h at the last step only: the rollout starts from it
        if self.cfg.imag_start == "prior":  # all C steps observed; z_C from the prior
            _, h, state = observe(obs, ctx["action"], reset, last_only=True)
            h_prev = h[:, -1]
            z, index = world.prior_sample(h_prev)
        else:
            if C > 1:
                _, h, state = observe(
                    {k: v[:, :-1] for k, v in obs.items()}, ctx["action"][:, :-1],
                    reset[:, :-1], last_only=True
                )
                h_prev = h[:, -1]
            else:
                state = world.initial_state(B)
                h_prev = torch.zeros(B, world.deter_dim, device=self.device)
            state, h_prev = self._episode_start(state, h_prev, reset[:, -1])
            z, index = world.posterior_sample({k: v[:, -1] for k, v in obs.items()})

        # one layout for the state in and out of every step (backbones' forward may return
        # views), so a compiled step is compiled once
        state = contiguous_state(state)
        H = self.cfg.horizon
        # each step's feat is written into its row of the trajectory (no stack at the end)
        feats = z.new_empty(H + 1, B, world.feat_dim)
        actions, hs, indices = [], [], []
        for t in range(H):
            feat = world.feat(z, h_prev, out=feats[t])
            indices.append(index)
            if planning:
                with _fork_rng(self.device):
                    result = cop.plan(z, h_prev, state, "conservative", index)
                actor.sample(feat, index=index)
                raw = result.action
                action = cop.env_action(raw)
                cop.imagine_model_steps += result.model_steps
                h_prev, state = world.imagine_step(z, action, state, index)
                z, index = world.prior_sample(h_prev)
            else:
                raw, h_prev, state, z, index = (self._imagined_step or self.imagined_step)(
                    feat, z, index, state)
            actions.append(raw)
            hs.append(h_prev)
        world.feat(z, h_prev, out=feats[H])
        indices.append(index)
        h_all = torch.stack(hs)  # the heads run once over all steps, not inside the loop
        return {
            "feat": feats,
            "index": torch.stack(indices),  # where z's ones are: one-hot first layers
            "action": torch.stack(actions),
            "reward": world.reward(h_all),
            "cont": world.cont(h_all),
        }

    def imagined_step(
        self, feat: Tensor, z: Tensor, index: Tensor, state: State
    ) -> tuple[Tensor, Tensor, State, Tensor, Tensor]:
        """One step of imagination from feat(z_t, h_{t−1}): a_t ~ π, h_t = backbone.step,
        z_{t+1} ~ prior(h_t). `index`: the columns of z_t's ones (`sample_index`). Returns
        (the actor's raw sample, h_t, state, z_{t+1}, its index)."""
        action, raw = self.behavior.actor.sample(feat, index=index)
        # the rollout's state is its own (the context warm-up made it): step over it
        h, state = self.world.imagine_step(z, action, state, index, overwrite=True)
        if torch.compiler.is_compiling():  # states leave in the layout they come in with
            state = contiguous_state(state)
        return (raw, h, state, *self.world.prior_sample(h))

    def compile(self, compiler: Compiler) -> None:
        """run.compile=on: the world-model loss, imagination's context warm-up (`observe`,
        no grad), one imagined step (the backbone's `step` with the actor and the prior
        around it), the actor-critic losses and acting's tensor work (`_act_step`) become
        compiled graphs, each for the fixed shapes of its batch. The optimiser steps and
        the conservative and optimistic planners stay eager.

        run.compile=auto: the imagined step alone, and only with a backbone in
        `AUTO_COMPILE_STEP`: a forward-only graph that compiles in seconds and saves more
        than that within a default-length run (bench/compile.py); the rest stays eager."""
        self.compiler, self._run = compiler, compiler.run
        planning = self.coplanner is not None and self.coplanner.conservative
        if compiler.mode == "auto":
            if self.cfg.world.backbone in AUTO_COMPILE_STEP and not planning:
                self._imagined_step = compiler.wrap(self.imagined_step)
            return
        # dynamic=None: shapes inside the loss may depend on the data (FFM's segments per
        # chunk); after one change dynamo makes such a size symbolic instead of recompiling
        self._world_loss = compiler.wrap(self.world.loss_terms, dynamic=None)
        # not in auto: at the cartpole preset its cold compile (~10 s) costs more than it
        # saves in a 5000-step run (~4 ms an update); at bench/throughput.py's sizes ~20 ms
        self._observe = compiler.wrap(self.world.observe)
        # imagination's latent samples and Mamba-2 steps in one pass each
        # (reverie.nets.categorical_kernel, reverie.sequence.ssd_kernel)
        if on_cpu(self.world):
            compiler.build(categorical_kernel.load, "the categorical sampling kernel",
                           "the torch ops sample", self.world.use_sample_kernel)
            if self.world.image_keys:  # the conv nets' (reverie.nets.image_kernel)
                compiler.build(image_kernel.load, "the conv nets' kernels",
                               "the torch ops scale and normalise", self.world.use_image_kernels)
            # only the imagined step writes over its state (COPlanner's lookahead does not)
            if self.world.backbone.step_kernel_blocks() and not planning:
                compiler.build(ssd_kernel.load, "the Mamba-2 step kernels", "the torch ops step",
                               self.world.backbone.use_step_kernel)
        if not planning:
            self._imagined_step = compiler.wrap(self.imagined_step)
        # acting: one graph per number of envs and explore flag (an env step's ~150 small
        # ops cost ~0.9 ms eager at bench/throughput.py's sizes)
        self._act_step_compiled = compiler.wrap(self._act_step)
        self.behavior.compile_with(compiler)
        compiler.say_unbuilt()  # one note per reason for the kernels that did not build

    def update(self, replay: Any) -> dict[str, float]:
        """One world-model step, then one actor-critic step on imagined rollouts."""
        cfg = self.cfg
        self._set_lr()
        batch = self._batch(replay.sample(cfg.batch_size, cfg.seq_len, purpose="train"))
        metrics = self.train_world(batch)
        ctx = self._batch(replay.sample(cfg.imag_batch, cfg.context, purpose="imagine"))
        traj = self._run(self.imagine, ctx)
        metrics.update(self.behavior.update(**traj))
        if self.coplanner is not None:
            metrics.update(self._coplanner_metrics(traj))
        self.updates += 1
        return metrics

    @torch.no_grad()
    def _coplanner_metrics(self, traj: dict[str, Tensor]) -> dict[str, float]:
        """u along the imagined trajectory; planner model steps in this update's
        imagination and in acting since the last update."""
        cop = self.coplanner
        feat = traj["feat"][:-1]
        z, h_prev = feat.split([self.world.stoch_dim, self.world.deter_dim], -1)
        u = cop.uncertainty(z, h_prev, cop.env_action(traj["action"]))
        metrics = {
            "coplanner/u_mean": u.mean().item(),
            "coplanner/model_steps": float(cop.imagine_model_steps),
            "coplanner/act_model_steps": float(cop.act_model_steps),
        }
        cop.imagine_model_steps = cop.act_model_steps = 0
        return metrics

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Modules, optimisers, return normaliser and slow critic; tensors and primitives
        only, so `torch.load(..., weights_only=True)` reads it back."""
        d = {
            "world": self.world.state_dict(),
            "behavior": self.behavior.state_dict(),  # actor, critic, slow critic, normaliser
            "world_opt": self.world_opt.state_dict(),
            "behavior_opt": self.behavior.optim_state_dict(),
            "updates": torch.tensor(self.updates, dtype=torch.long),
        }
        if self.coplanner is not None:  # heads, their optimiser and counter
            d["coplanner"] = self.coplanner.state_dict()
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if (self.coplanner is not None) != ("coplanner" in d):
            raise ValueError(
                "checkpoint and agent disagree on imagine.coplanner.mode (one has the "
                "disagreement heads, the other not); load it with the run's own config"
            )
        self.world.load_state_dict(d["world"])
        self.behavior.load_state_dict(d["behavior"])
        self.world_opt.load_state_dict(d["world_opt"])
        self.behavior.load_optim_state_dict(d["behavior_opt"])
        self.updates = int(d["updates"])
        if self.coplanner is not None:
            self.coplanner.load_state_dict(d["coplanner"])
