"""MBPO (Janner et al., 2019) with COPlanner's UP-MPC (Wang et al., ICLR 2024) as an option.

The agent keeps its own real transitions (`uses_replay = False`); the driver hands it every
env step (`observe`) and asks how many updates are due (`updates_due`: G per env step after
`warmup`). Each `update(None)` is MBPO's inner loop:

  1. every `model_train_every` env steps (and at the first update): fit the probabilistic
     ensemble on all real data until its holdout MSE stops improving, then branch
     `rollout_batch` model rollouts from real states, of length
     `rollout_length(schedule, epoch)` (epochs of `epoch_length` env steps since warm-up).
     Each rollout step's action is the SAC policy's sample (mode mbpo/optimistic) or UP-MPC's
     conservative choice (mode conservative/coplanner: score − λ_c · disagreement); the
     next state comes from a random elite per row (TS1); rows that end stop (the task's
     termination rule on the predicted state, `mbpo.termination`, as MBPO does; else the
     ensemble's termination head). The model buffer keeps the rollouts of the last
     `retain_epochs` epochs;
  2. one SAC gradient step on a batch with a `real_ratio` share of real transitions and the
     rest from the model buffer.

Acting: SAC's sample (explore) or tanh(μ) (not explore); in modes optimistic/coplanner an
exploring act is UP-MPC's optimistic choice (score + λ_o · disagreement) once the model
has been trained. Modes: mbpo (plain MBPO), conservative, optimistic, coplanner (both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from reverie.behavior.sac import SAC, SACConfig
from reverie.envs import vector_width
from reverie.envs.actions import check_unit_box
from reverie.errors import suggest
from reverie.planning.upmpc import UPMPCConfig, plan
from reverie.replay.transitions import TransitionRing
from reverie.rng import substream
from reverie.world.ensemble import EnsembleDynamics
from reverie.world.termination import CHOICES as TERMINATIONS
from reverie.world.termination import RULES as TERMINATION_RULES
from reverie.world.termination import rule_of_env

if TYPE_CHECKING:
    from reverie.run.collector import Transition

MODES = ("mbpo", "conservative", "optimistic", "coplanner")
CONSERVATIVE_MODES = ("conservative", "coplanner")  # UP-MPC picks the model rollouts' actions
OPTIMISTIC_MODES = ("optimistic", "coplanner")  # UP-MPC picks the exploring real actions
# mode mbpo steps rollouts by TS1 alone (one elite per row); the logged disagreement
# (model/rollout_uncertainty) runs every elite on the rollouts of this many start states
U_METRIC_ROWS = 1024


@dataclass
class EnsembleConfig:
    """MBPO's dynamics model and how it is fitted."""

    members: int = 7
    elites: int = 5
    hidden: int = 200
    layers: int = 4
    lr: float = 1e-3
    batch_size: int = 256
    holdout: float = 0.2  # fraction of the real data held out for early stopping
    max_holdout: int = 5000
    patience: int = 5  # stop after more than this many epochs without a >1% holdout gain
    max_epochs: int = 1000  # cap on epochs per fit (MBPO: none; a CPU preset may want one)


@dataclass
class MBPOConfig:
    """MBPO's MuJoCo defaults; COPlanner's UP-MPC defaults (K=5, H=5, λ_c=2, λ_o=1)."""

    mode: str = "mbpo"  # mbpo | conservative | optimistic | coplanner
    model: EnsembleConfig = field(default_factory=EnsembleConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    upmpc: UPMPCConfig = field(default_factory=UPMPCConfig)
    warmup: int = 5000  # real env steps before the first update
    updates_per_step: int = 20  # G: SAC gradient steps per env step
    real_ratio: float = 0.05  # share of real transitions in each SAC batch
    model_train_every: int = 250  # env steps between model fits (and rollout generations)
    rollout_batch: int = 100_000  # branched rollouts per generation (400 per env step)
    # rollouts stepped together: bounds memory, not the math (UP-MPC steps K x as many rows);
    # on this CPU 1k-4k rows per model call ran ~25% faster per row than 20k-100k
    rollout_chunk: int = 2_000
    # rollout length: min_len until epoch min_epoch, linear to max_len at max_epoch
    schedule: list[int] = field(default_factory=lambda: [20, 150, 1, 1])
    epoch_length: int = 1000  # env steps per MBPO epoch
    retain_epochs: int = 1  # the model buffer keeps this many epochs of rollouts
    capacity: int = 1_000_000  # real transitions kept
    # what ends a model rollout: `learned` (the ensemble's termination head) or a MuJoCo
    # task's known rule on the predicted next state, as MBPO does (reverie.world.termination:
    # hopper | walker2d | ant | humanoid | inverted_pendulum)
    termination: str = "learned"


# -- MBPO's formulas -------------------------------------------------------------------------
def rollout_length(schedule: list[int] | tuple[int, ...], epoch: int) -> int:
    """MBPO's rollout-length schedule [min_epoch, max_epoch, min_len, max_len]: min_len up to
    min_epoch, then linear in the epoch, reaching max_len at max_epoch; rounded down."""
    min_epoch, max_epoch, min_len, max_len = (int(x) for x in schedule)
    if epoch <= min_epoch:
        return min_len
    if epoch >= max_epoch:
        return max_len
    frac = (epoch - min_epoch) / (max_epoch - min_epoch)
    return int(min_len + frac * (max_len - min_len))


def batch_split(batch_size: int, real_ratio: float) -> tuple[int, int]:
    """(real rows, model rows) of one SAC batch: int(real_ratio · B) real, as MBPO."""
    n_real = int(real_ratio * batch_size)
    return n_real, batch_size - n_real


def model_buffer_capacity(cfg: MBPOConfig) -> int:
    """Rows the retention window can hold: generations in the window x rollouts x max length."""
    generations = math.ceil(cfg.retain_epochs * cfg.epoch_length / cfg.model_train_every)
    return generations * cfg.rollout_batch * max(int(x) for x in cfg.schedule[2:])


# -- config checks ---------------------------------------------------------------------------
def _check(c: Any) -> None:
    """Raise ValueError naming the fix for a section that cannot work."""
    if c.mode not in MODES:
        raise ValueError(f"unknown mbpo.mode '{c.mode}'{suggest(c.mode, MODES)}; choose one "
                         f"of: {', '.join(MODES)} (mbpo: plain MBPO, no UP-MPC)")
    positive = ("updates_per_step", "model_train_every", "rollout_batch", "rollout_chunk",
                "epoch_length", "retain_epochs", "capacity")
    for name in positive:
        if int(getattr(c, name)) < 1:
            raise ValueError(f"mbpo.{name} must be >= 1, got {getattr(c, name)}")
    if int(c.warmup) < 2:
        raise ValueError(f"mbpo.warmup must be >= 2 (the first model fit needs a holdout), "
                         f"got {c.warmup}; MBPO uses 5000 on MuJoCo")
    if not 0.0 <= float(c.real_ratio) <= 1.0:
        raise ValueError(f"mbpo.real_ratio must be in [0, 1], got {c.real_ratio}; MBPO uses 0.05")
    s = list(c.schedule)
    if len(s) != 4 or any(int(x) != x for x in s):
        raise ValueError(f"mbpo.schedule must be 4 integers [min_epoch, max_epoch, min_len, "
                         f"max_len], got {s}; e.g. [20, 150, 1, 15]")
    if not (0 <= s[0] <= s[1] and 1 <= s[2] <= s[3]):
        raise ValueError(f"mbpo.schedule {s} needs 0 <= min_epoch <= max_epoch and "
                         "1 <= min_len <= max_len; e.g. [20, 150, 1, 15]")
    m = c.model
    for name in ("members", "elites", "hidden", "layers", "batch_size", "max_holdout",
                 "patience", "max_epochs"):
        if int(getattr(m, name)) < 1:
            raise ValueError(f"mbpo.model.{name} must be >= 1, got {getattr(m, name)}")
    if int(m.elites) > int(m.members):
        raise ValueError(f"mbpo.model.elites ({m.elites}) cannot exceed mbpo.model.members "
                         f"({m.members}); MBPO uses 5 of 7")
    if not 0.0 < float(m.holdout) < 1.0 or float(m.lr) <= 0.0:
        raise ValueError("mbpo.model.holdout must be in (0, 1) and mbpo.model.lr > 0; "
                         "use 0.2 and 1e-3")
    u = c.upmpc
    for name in ("candidates", "horizon"):
        if int(getattr(u, name)) < 1:
            raise ValueError(f"mbpo.upmpc.{name} must be >= 1, got {getattr(u, name)}; use 5")
    for name in ("gamma_reward", "gamma_uncertainty"):
        if not 0.0 < float(getattr(u, name)) <= 1.0:
            raise ValueError(f"mbpo.upmpc.{name} must be in (0, 1], got {getattr(u, name)}; "
                             "use 0.97")
    for name in ("lambda_conservative", "lambda_optimistic"):
        if float(getattr(u, name)) < 0.0:
            raise ValueError(f"mbpo.upmpc.{name} must be >= 0 (the mode sets its sign), got "
                             f"{getattr(u, name)}; COPlanner's MBPO setting is "
                             f"{getattr(UPMPCConfig, name)}")
    if int(c.sac.batch_size) < 1:
        raise ValueError(f"mbpo.sac.batch_size must be >= 1, got {c.sac.batch_size}")
    if c.termination not in TERMINATIONS:
        raise ValueError(f"unknown mbpo.termination '{c.termination}'"
                         f"{suggest(str(c.termination), TERMINATIONS)}; choose one of: "
                         f"{', '.join(TERMINATIONS)}")


def validate_config(section: Any, cfg: Any = None) -> None:
    """Config-time check of the `mbpo` section (and of the run settings MBPO needs)."""
    _check(section)
    if cfg is None:
        return
    num_envs = int(cfg.run.get("num_envs", 1)) if "run" in cfg else 1
    if num_envs != 1:
        raise ValueError(f"mbpo steps one env (MBPO's G updates per env step); set "
                         f"run.num_envs=1, got {num_envs}")
    if cfg.get("env") is not None and cfg.env.get("obs") == "image":
        raise ValueError("mbpo models vector observations; set env.obs=vector and use a "
                         "state-based env, or the imagine agent for images")
    env_id = str(cfg.env.get("id", "")) if cfg.get("env") is not None else ""
    rule = section.termination
    if rule in TERMINATION_RULES and cfg.get("env") is not None and cfg.env.get("prev_reward"):
        raise ValueError(f"mbpo.termination={rule} reads the task's own observation, which "
                         "env.prev_reward=true extends; set env.prev_reward=false or "
                         "mbpo.termination=learned")
    if rule in TERMINATION_RULES and rule_of_env(env_id) != rule:
        own = rule_of_env(env_id)
        raise ValueError(f"mbpo.termination={rule} is {TERMINATION_RULES[rule][1]}'s rule, but "
                         f"the env is {env_id}; set mbpo.termination="
                         f"{own or 'learned'}" + (" (or learned)" if own else ""))


def _action_dim(space: spaces.Space) -> int:
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"mbpo needs continuous (1-D Box) actions, got {space}; for discrete "
                         "actions use the imagine agent")
    check_unit_box(space, "mbpo")
    return int(space.shape[0])


def training_notes(cfg: Any) -> list[str]:
    """Legitimate settings under which the run updates nothing, or plans nothing
    (`config.training_notes`)."""
    steps, warmup, prefill = int(cfg.run.steps), int(cfg.mbpo.warmup), int(cfg.run.prefill)
    notes = []
    if steps < warmup:
        notes.append(f"run.steps={steps} < mbpo.warmup={warmup}: mbpo fits its model and "
                     "updates only after mbpo.warmup real env steps, so this run trains "
                     "nothing; raise --steps or lower mbpo.warmup (>= 2)")
    elif warmup > max(prefill, 2):  # e.g. run.prefill lowered alone: two separate settings
        notes.append(f"mbpo.warmup={warmup} > run.prefill={prefill}: the untrained policy acts "
                     f"from env step {prefill}, and the model is first fitted and SAC updated "
                     f"at {warmup}; set mbpo.warmup={max(prefill, 2)} to train right after the "
                     "prefill")
    if cfg.mbpo.mode != "mbpo" and int(cfg.mbpo.upmpc.candidates) == 1:
        notes.append(f"mbpo.upmpc.candidates=1 with mbpo.mode={cfg.mbpo.mode}: UP-MPC's one "
                     "candidate is the policy's own action, so it chooses nothing (the run "
                     "learns as mode mbpo) and still pays for its lookahead; COPlanner uses 5")
    return notes


def check_spaces(obs_spec: dict[str, tuple[tuple[int, ...], str]],
                 action_space: spaces.Space) -> None:
    """What mbpo can model (ValueError naming the fix): 1-D vector observations and 1-D Box
    actions in [-1, 1]; checked by the driver before a run or sweep starts."""
    vector_width(obs_spec, "mbpo")
    _action_dim(action_space)


# settings that make another algorithm: reports group runs by them too (eval.report)
REPORT_KEYS = ("mbpo.mode",)


# -- the agent -------------------------------------------------------------------------------
class MBPOAgent:
    """Ensemble dynamics + SAC on mixed real/model batches; see the module docstring."""

    uses_replay = False  # real transitions arrive through `observe`
    # the last model fit's and rollout generation's numbers and the buffers' sizes: a log
    # row gives them as they are, not averaged with the fits before in its window
    latest_metrics = ("model/", "mbpo/")
    note: Callable[[str], None] | None = None  # set by the driver: one line to the user
    schedule = "mbpo.updates_per_step SAC updates per env step after mbpo.warmup"

    def __init__(
        self,
        obs_spec: dict[str, tuple[tuple[int, ...], str]],
        action_space: spaces.Space,
        cfg: MBPOConfig,
        device: torch.device | str,
        seed: int,
    ) -> None:
        _check(cfg)
        self.cfg = cfg
        self.device = torch.device(device)
        self.obs_keys = sorted(obs_spec)
        self.obs_dim = vector_width(obs_spec, "mbpo")
        self.action_dim = _action_dim(action_space)
        o, a, m = self.obs_dim, self.action_dim, cfg.model
        self.sac = SAC(o, a, cfg.sac, seed=seed, device=self.device)
        with torch.random.fork_rng(devices=[]):  # parameters depend on `seed` only
            torch.manual_seed(substream(seed, 3))  # not SAC's initial draws (its `seed`)
            self.model = EnsembleDynamics(o, a, m.members, m.elites, m.hidden, m.layers,
                                          lr=m.lr)
        self.model.to(self.device)  # in place: the optimiser keeps its parameters
        # model fits, rollout starts, batches and model samples (SAC samples with its own)
        self.generator = torch.Generator(device=self.device).manual_seed(substream(seed, 7))
        fields = {"obs": ((o,), torch.float32), "action": ((a,), torch.float32),
                  "reward": ((), torch.float32), "next_obs": ((o,), torch.float32),
                  "terminal": ((), torch.float32)}
        self.real = TransitionRing(cfg.capacity, fields, self.device)
        self.rollouts = TransitionRing(model_buffer_capacity(cfg), fields, self.device)
        self.generations: list[list[int]] = []  # [env step made at, rows] in the rollout ring
        self.env_steps = 0  # real transitions observed
        self.due_until = 0  # env steps already paid out by `updates_due`
        self.model_trained_at = -1  # env step of the last fit; -1: never
        self.updates = 0
        self.model_metrics: dict[str, float] = {}  # of the last fit and rollout generation
        self.act_scores: list[float] = [0.0, 0.0]  # Σ best optimistic score, acts planned
        self.capped_told = False  # a fit capped by max_epochs is said once
        rule = TERMINATION_RULES.get(cfg.termination)
        if rule is not None and len(self.obs_keys) != 1:  # a rule reads one task's vector
            raise ValueError(f"mbpo.termination={cfg.termination} reads the task's own "
                             f"observation, but the env gives {self.obs_keys}; set "
                             "env.prev_reward=false or mbpo.termination=learned")
        self.terminal_rule = None if rule is None else rule[0]

    # -- acting -------------------------------------------------------------------------------
    def initial_state(self, n: int) -> None:
        return None

    def _flat(self, obs: dict[str, Any]) -> Tensor:
        """{key: [N, D_k]} -> [N, O], keys in sorted order."""
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise ValueError(f"observation is missing keys {missing}; pass {self.obs_keys}")
        parts = [torch.as_tensor(np.asarray(obs[k]), dtype=torch.float32, device=self.device)
                 for k in self.obs_keys]
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=-1)

    def _model_step(self, state: Tensor, action: Tensor) -> tuple[Tensor, ...]:
        """UP-MPC's step: every elite samples (for u), a random elite's sample is the next
        state (TS1): (next_obs, reward, u, terminal)."""
        next_obs, reward, u, term = self.model.rollout_step(state, action, self.generator)
        return next_obs, reward, u, self._ended(next_obs, term)

    def _ts1_step(self, state: Tensor, action: Tensor) -> tuple[Tensor, ...]:
        """Plain MBPO's step: each row through its own random elite only (TS1), no u:
        (next_obs, reward, terminal)."""
        next_obs, reward, term = self.model.sample_next(state, action, self.generator,
                                                        mode="ts1")
        return next_obs, reward, self._ended(next_obs, term)

    def _ended(self, next_obs: Tensor, learned: Tensor) -> Tensor:
        """Which model steps end their rollout: the task's rule on the sampled next state
        (`mbpo.termination`), else the ensemble's termination head."""
        return learned if self.terminal_rule is None else self.terminal_rule(next_obs)

    def _policy_sample(self, state: Tensor) -> Tensor:
        return self.sac.act(state, explore=True)

    def _upmpc(self, obs: Tensor, mode: str):
        return plan(obs, self._model_step, self._policy_sample, self.cfg.upmpc, mode)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], first: np.ndarray, state: None,
            explore: bool) -> tuple[np.ndarray, None]:
        """obs: {key: [N, D]} -> actions [N, A] float32 in [−1, 1]; `first` is unused (MBPO's
        policy is memoryless)."""
        x = self._flat(obs)
        if explore and self.cfg.mode in OPTIMISTIC_MODES and self.model_trained_at >= 0:
            result = self._upmpc(x, "optimistic")
            action = result.action
            self.act_scores[0] += float(result.scores.max(dim=1).values.sum())
            self.act_scores[1] += x.shape[0]
        else:
            action = self.sac.act(x, explore=explore)
        return action.cpu().numpy().astype(np.float32), state

    # -- data ---------------------------------------------------------------------------------
    def observe(self, t: Transition) -> None:
        """Store one vector step's real transitions (s, a, r, s', terminated); `t.next_obs`
        is the final observation where an episode ended, so truncations bootstrap from it."""
        obs, next_obs = self._flat(t.obs), self._flat(t.next_obs)
        n = obs.shape[0]
        self.real.add({
            "obs": obs,
            "action": torch.as_tensor(np.asarray(t.action, np.float32)).reshape(n, -1),
            "reward": torch.as_tensor(np.asarray(t.reward, np.float32)).reshape(n),
            "next_obs": next_obs,
            "terminal": torch.as_tensor(np.asarray(t.terminated, np.float32)).reshape(n),
        })
        self.env_steps += n

    def updates_due(self, env_steps: int) -> int:
        """G updates for every env step since the last call, counting steps >= `warmup`."""
        start = max(self.due_until, self.cfg.warmup - 1)
        due = max(0, int(env_steps) - start) * self.cfg.updates_per_step
        self.due_until = max(self.due_until, int(env_steps))
        return due if len(self.real) >= 2 else 0

    # -- learning -----------------------------------------------------------------------------
    def model_due(self) -> bool:
        return (self.model_trained_at < 0
                or self.env_steps - self.model_trained_at >= self.cfg.model_train_every)

    def epoch(self) -> int:
        """MBPO epochs completed since warm-up (its schedule counts from the first update)."""
        return max(0, self.env_steps - self.cfg.warmup) // self.cfg.epoch_length

    def train_model(self) -> dict[str, float]:
        """Fit the ensemble on every real transition (MBPO's early stopping)."""
        m, n = self.cfg.model, len(self.real)
        if self.model_trained_at < 0 and self.note is not None:
            self.note(f"mbpo: fitting the model on {n:,} real transitions, then "
                      f"{self.cfg.rollout_batch:,} model rollouts; the first fit is the longest "
                      "(no progress until it ends)")
        rows = self.real.rows()
        fit = self.model.fit(
            rows["obs"], rows["action"], rows["next_obs"], rows["reward"], rows["terminal"],
            self.generator, batch_size=m.batch_size, holdout_fraction=m.holdout,
            max_holdout=m.max_holdout, max_epochs=m.max_epochs, patience=m.patience,
        )
        self.model_trained_at = self.env_steps
        if fit["epochs"] >= m.max_epochs and not self.capped_told and self.note is not None:
            self.capped_told = True  # once a run (a process): every later fit may be capped
            spread = ("its predicted spread (the uncertainty UP-MPC weighs) may still be its "
                      "initial one" if self.cfg.mode != "mbpo" else
                      "its rollouts come from a model still improving")
            self.note(f"mbpo: the model fit stopped at mbpo.model.max_epochs={m.max_epochs} "
                      f"before its holdout loss stopped improving: {spread}; raise "
                      "mbpo.model.max_epochs for a converged model")
        return {"model/holdout_mse": fit["holdout_mse"], "model/train_loss": fit["train_loss"],
                "model/epochs": fit["epochs"], "model/fit_rows": float(n)}

    @torch.no_grad()
    def generate_rollouts(self) -> dict[str, float]:
        """Branch `rollout_batch` model rollouts from real states into the model buffer."""
        cfg = self.cfg
        length = rollout_length(cfg.schedule, self.epoch())
        conservative = cfg.mode in CONSERVATIVE_MODES
        starts = self.real.sample(cfg.rollout_batch, self.generator, keys=["obs"])["obs"]
        rows, u_rows, planned = 0, 0, 0
        u_sums: list[Tensor] = []  # per-step sums, read once at the end (no per-step sync)
        score_sums: list[Tensor] = []
        for start, obs in zip(range(0, cfg.rollout_batch, cfg.rollout_chunk),
                              starts.split(cfg.rollout_chunk)):
            # mode mbpo logs u on the rollouts from the first U_METRIC_ROWS start states
            # only (they stay a prefix of the rows: terminated rows drop out in order)
            tracked = min(obs.shape[0], max(0, U_METRIC_ROWS - start))
            for _ in range(length):
                if conservative:
                    result = self._upmpc(obs, "conservative")
                    action = result.action
                    score_sums.append(result.scores.max(dim=1).values.sum())
                    planned += obs.shape[0]
                    next_obs, reward, u, term = self._model_step(obs, action)
                    u_sums.append(u.sum())
                    u_rows += obs.shape[0]
                else:
                    action = self._policy_sample(obs)
                    next_obs, reward, term = self._ts1_step(obs, action)
                    if tracked:
                        u_sums.append(self.model.disagreement(
                            obs[:tracked], action[:tracked], self.generator).sum())
                        u_rows += tracked
                        tracked = int((~term[:tracked]).sum())
                self.rollouts.add({"obs": obs, "action": action, "reward": reward,
                                   "next_obs": next_obs, "terminal": term.float()})
                rows += obs.shape[0]
                obs = next_obs[~term]  # a predicted termination ends that rollout
                if obs.shape[0] == 0:
                    break
        self._retain(rows)
        # Python float sums in step order: the values the per-step float() sums gave
        u_sum = sum(torch.stack(u_sums).tolist()) if u_sums else 0.0
        metrics = {"model/rollout_length": float(length),
                   # COPlanner's u (std across elites' samples): over every rollout row in
                   # the conservative modes (UP-MPC computes it anyway); in mode mbpo over
                   # the rollouts from the first U_METRIC_ROWS start states only
                   "model/rollout_uncertainty": u_sum / max(u_rows, 1),
                   "model/rollout_rows": float(rows)}
        if conservative:
            score_sum = sum(torch.stack(score_sums).tolist()) if score_sums else 0.0
            metrics["upmpc/rollout_score"] = score_sum / max(planned, 1)
            metrics["upmpc/rollout_model_steps"] = float(
                planned * cfg.upmpc.candidates * cfg.upmpc.horizon)
        return metrics

    def _retain(self, rows: int) -> None:
        """Record a new generation and forget those older than `retain_epochs` epochs."""
        self.generations.append([self.env_steps, rows])
        window = self.cfg.retain_epochs * self.cfg.epoch_length
        self.generations = [g for g in self.generations if g[0] > self.env_steps - window]
        self.rollouts.keep_newest(sum(r for _, r in self.generations))

    def sample_batch(self) -> dict[str, Tensor]:
        """One SAC batch: `real_ratio` of it real transitions, the rest model rollouts."""
        n_real, n_model = batch_split(self.cfg.sac.batch_size, self.cfg.real_ratio)
        if len(self.rollouts) == 0:  # every rollout ended at once: real data only
            n_real, n_model = n_real + n_model, 0
        parts = [self.real.sample(n_real, self.generator)]
        if n_model:
            parts.append(self.rollouts.sample(n_model, self.generator))
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        batch["done"] = batch.pop("terminal")  # SAC bootstraps unless the MDP terminated
        return batch

    def update(self, replay: Any = None) -> dict[str, float]:
        """MBPO's inner step: (re)fit and roll out the model when due, then one SAC step."""
        if self.model_due():
            self.model_metrics = {**self.train_model(), **self.generate_rollouts()}
        metrics = {f"sac/{k}": v for k, v in self.sac.update(self.sample_batch()).items()}
        metrics.update(self.model_metrics)
        metrics["mbpo/model_buffer"] = float(len(self.rollouts))
        metrics["mbpo/real_buffer"] = float(len(self.real))
        if self.act_scores[1]:
            metrics["upmpc/act_score"] = self.act_scores[0] / self.act_scores[1]
            self.act_scores = [0.0, 0.0]
        self.updates += 1
        return metrics

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the future depends on, as tensors and primitives (weights_only=True)."""
        return {**self.policy_state_dict(), "real": self.real.state_dict(),
                "rollouts": self.rollouts.state_dict(),
                "generations": [list(g) for g in self.generations]}

    def policy_state_dict(self) -> dict[str, Any]:
        """What acting needs (the driver's best.pt): `state_dict` without the two buffers,
        which at MuJoCo sizes are most of a checkpoint (millions of model rows)."""
        return {
            "sac": self.sac.state_dict(),  # networks, α, optimisers, SAC's generator
            "model": self.model.state_dict(),  # weights, normalisation, elites
            "model_opt": self.model.optimizer.state_dict(),  # outside the module's state
            "generator": self.generator.get_state(),
            "counters": {"env_steps": self.env_steps, "due_until": self.due_until,
                         "model_trained_at": self.model_trained_at, "updates": self.updates},
            "model_metrics": dict(self.model_metrics),
            "act_scores": list(self.act_scores),
        }

    def restore_learned(self, d: dict[str, Any]) -> None:
        """A rollback after a non-finite loss: the checkpoint's networks, optimisers, model and
        model rollouts (made by the good model), but the real transitions collected since and
        the env-step schedule go on (the env was not rolled back); the model, fitted at the
        checkpoint's step, is refitted on them when its schedule next comes."""
        real = self.real.state_dict()  # a copy of the rows
        env_steps, due_until = self.env_steps, self.due_until
        self.load_state_dict(d)
        self.real.load_state_dict(real)
        self.env_steps, self.due_until = env_steps, due_until

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """A full `state_dict`, or a `policy_state_dict` (the buffers then stay empty)."""
        self.sac.load_state_dict(d["sac"])
        self.model.load_state_dict(d["model"])
        self.model.optimizer.load_state_dict(d["model_opt"])
        if "real" in d:
            self.real.load_state_dict(d["real"])
            self.rollouts.load_state_dict(d["rollouts"])
            self.generations = [[int(a), int(b)] for a, b in d["generations"]]
        self.generator.set_state(d["generator"])
        c = d["counters"]
        self.env_steps, self.due_until = int(c["env_steps"]), int(c["due_until"])
        self.model_trained_at, self.updates = int(c["model_trained_at"]), int(c["updates"])
        self.model_metrics = {k: float(v) for k, v in d["model_metrics"].items()}
        self.act_scores = [float(x) for x in d["act_scores"]]
