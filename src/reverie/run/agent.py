"""The agent contract of the driver, and how a run builds, compiles and loads an agent."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from gymnasium import spaces
from omegaconf import DictConfig

from reverie.compiler import Compiler
from reverie.config import agent_parts, to_object
from reverie.errors import UserError
from reverie.precision import use_precision
from reverie.replay import Replay


def select_device(name: str | torch.device | None, setting: str = "run.device") -> torch.device:
    """The torch device `name` names ("auto" or None: CUDA where there is one, else the CPU);
    a UserError naming `setting` (the config key, or a Python argument) for anything else."""
    name = "auto" if name is None else str(name)  # Python callers: None, a torch.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{setting}={name} but no CUDA device is visible; use {setting}=cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # "cuda:x", "cuda:-1", "tpu"
        raise UserError(f"{setting}={name} is not a device; use cpu, cuda or cuda:N (N from 0)") \
            from None
    if device.type not in ("cpu", "cuda"):  # mps, meta, ...: reverie runs on CPU and CUDA
        raise UserError(f"{setting}={name}: reverie runs on cpu or cuda; use one of them")
    if device.type == "cuda" and device.index is not None \
            and device.index >= (count := torch.cuda.device_count()):
        have = "cuda:0" if count == 1 else f"cuda:0..cuda:{count - 1}"
        raise UserError(f"{setting}={name} but this machine has {count} CUDA device"
                        f"{'' if count == 1 else 's'} ({have}); use one of them")
    return device


def batch_obs(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One observation as a batch of one env."""
    return {k: v[None] for k, v in obs.items()}


class Agent(Protocol):
    """What the driver drives (registered in `config.AGENTS`). Optional members:
    `uses_replay: bool` (default True), `observe(t: Transition) -> None`,
    `updates_due(env_steps: int) -> int` (default: by `run.train_ratio`) with `schedule: str`
    (says what sets it, for the error that refuses run.train_ratio),
    `compile(compiler: Compiler) -> None` (run.compile=on|auto, see `reverie.compiler`),
    `policy_state_dict() -> dict` (what acting needs, for best.pt; `load_state_dict` takes
    it too), `restore_learned(d)` (a rollback after a non-finite loss: load the checkpoint's
    learned state but keep the data being collected, e.g. an on-policy rollout; default
    `load_state_dict`), `latest_metrics: tuple[str, ...]` (prefixes of the update metrics
    that are states, logged as their last value in a row instead of the window's mean),
    `note: Callable[[str], None] | None` (the driver sets it: one line to the user, e.g.
    before a long silent step).
    The agent's module may define `check_spaces(obs_spec,
    action_space)` (raises ValueError for an env it cannot run), `training_notes(cfg) ->
    list[str]` and `REPORT_KEYS` (settings that make another algorithm; see
    `config.agent_hook`)."""

    def initial_state(self, n: int) -> Any: ...

    def act(self, obs: dict[str, np.ndarray], first: np.ndarray, state: Any,
            explore: bool) -> tuple[np.ndarray, Any]: ...

    def update(self, replay: Replay | None) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, d: dict[str, Any]) -> None: ...


def build_agent(cfg: DictConfig, obs_spec, action_space: spaces.Space, device: torch.device):
    _, agent_cls, _ = agent_parts(cfg.agent)
    try:
        agent = agent_cls(obs_spec, action_space, to_object(cfg, cfg.agent), device,
                          int(cfg.seed))
    except ValueError as e:  # components validate their own options and name the fix
        raise UserError(f"bad {cfg.agent} config: {e}") from None
    return use_precision(agent, device, str(cfg.run.precision))


def num_params(agent) -> int:
    """The size of an agent: every parameter of the torch modules it holds (target and slow
    copies included), each counted once (a module shared by two parts, or a compiled wrapper
    of one, counts once)."""
    seen: dict[int, int] = {}

    def walk(obj: Any, depth: int) -> None:
        # reverie's own helper objects hold modules too (mbpo's SAC: actor and critics)
        for part in vars(obj).values():
            if isinstance(part, torch.nn.Module):
                seen.update((id(p), p.numel()) for p in part.parameters())
            elif depth and type(part).__module__.startswith("reverie.") \
                    and hasattr(part, "__dict__"):
                walk(part, depth - 1)

    walk(agent, 2)
    return sum(seen.values())


def compile_agent(agent, name: str, note, mode: str = "on") -> None:
    """run.compile=on|auto: the agent's optional `compile(compiler)` swaps its tensor
    functions for compiled ones (see `reverie.compiler`; `compiler.mode` says which); an agent
    without it runs as it is (said once with `on`, silently with `auto`)."""
    compile_ = getattr(agent, "compile", None)
    if compile_ is None:
        if mode == "on":
            note(f"note: run.compile: agent {name} has nothing to compile; it runs eagerly")
        return
    compile_(Compiler(note, mode))


def load_agent_state(agent, payload: dict[str, Any], where: str,
                     rollback: bool = False) -> None:
    """Load a checkpoint's agent state, or say in one line why it does not fit. `rollback`
    (after a non-finite loss): through the agent's optional `restore_learned`, which keeps
    the data it is collecting now (the envs go on from where they are)."""
    load = getattr(agent, "restore_learned", None) if rollback else None
    try:
        (load or agent.load_state_dict)(payload["agent"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise UserError(
            f"checkpoint {where} does not fit this run's model ({type(e).__name__}); "
            "was config.yaml edited after the run started?"
        ) from None
