"""`reverie.load(path)`: from a run folder (or one of its checkpoint files) to `.act(obs)`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_flatten

from reverie.config import load_run_config, parse_run_config
from reverie.envs import make_obs_spec
from reverie.errors import UserError
from reverie.run.agent import batch_obs, build_agent, load_agent_state, select_device
from reverie.run.checkpoint import CheckpointStore, load_file
from reverie.run.collector import env_of
from reverie.run.evaluation import evaluate
from reverie.run.folder import check_no_links


class Policy:
    """A trained agent for one environment at a time.

    `act(obs, state=None) -> (action, state)`: obs is the dict the env of `make_env()`
    returns (or a bare array for single-key observations); pass `state=None` on the first
    step of an episode and the returned state afterwards. Continuous actions are in [-1, 1]:
    the env of `make_env()` rescales them to the task's own range.
    """

    def __init__(self, agent, cfg, obs_spec, env_id: str) -> None:
        self.agent = agent
        self.cfg = cfg
        self.obs_spec = obs_spec
        self.env_id = env_id
        self.step: int | None = None  # env steps the agent had trained for
        self.eval_return: float | None = None  # its evaluation (a best checkpoint's)
        self._state_form: tuple | None = None  # initial_state(1) flattened (_check_state)

    def _as_dict(self, obs: Any) -> dict[str, np.ndarray]:
        if isinstance(obs, dict):
            missing = set(self.obs_spec) - set(obs)
            if missing:
                raise UserError(f"observation is missing keys {sorted(missing)}; make the env "
                                "the way the run did with policy.make_env()")
            arrays = {k: np.asarray(obs[k]) for k in self.obs_spec}
        elif len(self.obs_spec) != 1:
            raise UserError(f"pass a dict observation with keys {sorted(self.obs_spec)}")
        else:
            key, (_, dtype) = next(iter(self.obs_spec.items()))
            arrays = {key: np.asarray(obs, dtype=dtype)}
        for key, arr in arrays.items():
            shape = tuple(self.obs_spec[key][0])
            if arr.shape != shape:
                many = " (act takes one env's observation: call it per env)" \
                    if arr.shape[1:] == shape else ""
                raise UserError(f"observation '{key}' has shape {arr.shape}, expected {shape}"
                                f"{many}; make the env the way the run did with "
                                "policy.make_env()")
        return arrays

    def _check_state(self, state: Any) -> None:
        """`state` must have the form of the states `act` returns (the agent's own: nested
        tuples/dicts of one-row tensors), else one line instead of the agent's raw error."""
        if self._state_form is None:  # the agent's form, once: act is called every step
            self._state_form = tree_flatten(self.agent.initial_state(1))
        want, want_spec = self._state_form
        got, got_spec = tree_flatten(state)
        same = got_spec == want_spec and all(
            type(g) is type(w) if not isinstance(w, torch.Tensor) else
            isinstance(g, torch.Tensor) and g.dim() == w.dim() and g.shape[:1] == w.shape[:1]
            # bf16 runs act under autocast and return bf16 states
            and (g.dtype == w.dtype or (g.is_floating_point() and w.is_floating_point()))
            for g, w in zip(got, want))
        if not same:
            raise UserError(f"state is not one that act returned (got {type(state).__name__}); "
                            "pass state=None at an episode's first step and the state act "
                            "returned after that")

    def act(self, obs: Any, state: Any = None, explore: bool = False) -> tuple[Any, Any]:
        first = state is None
        if first:
            state = self.agent.initial_state(1)
        else:
            self._check_state(state)
        with torch.no_grad():
            action, state = self.agent.act(batch_obs(self._as_dict(obs)), np.array([first]),
                                           state, explore)
        return action[0], state

    def make_env(self, render: bool = False):
        """The env as the run built it (its wrappers, image size, prev_reward key; Box
        actions rescaled to [-1, 1], the range `act` returns)."""
        return env_of(self.cfg, render=render)

    def evaluate(self, episodes: int, seed: int = 12345,
                 on_step: Callable[[int, int], None] | None = None) -> list[float]:
        """Greedy returns of `episodes` episodes; `on_step(env steps played, episodes ended)`
        after each step of them (`run.evaluation.evaluate`)."""
        return evaluate(self.agent, lambda: env_of(self.cfg, evaluation=True), episodes,
                        seed=seed, on_step=on_step)


def load(path: str | Path, device: str = "auto", best: bool = False) -> Policy:
    """Load the newest verified checkpoint of a run folder, or a given checkpoint file (also
    one copied out of its run: checkpoints carry their run's config). `best=True`: the run's
    agent of its best evaluation so far (checkpoints/best.pt, run.keep_best); `Policy.step`
    and `Policy.eval_return` then say which."""
    path = Path(path)
    if best and path.is_file():
        raise UserError(f"--best takes a run folder, not '{path}' (load a checkpoint file "
                        "without --best)")
    if path.is_file():
        payload = load_file(path)
        run = path.parent.parent
        if path.parent.name == "checkpoints" and (run / "config.yaml").is_file():
            cfg = load_run_config(run)
        elif isinstance(payload.get("config"), str):
            cfg = parse_run_config(payload["config"], f"the config inside {path}")
        else:
            raise UserError(f"checkpoint '{path}' is outside its run folder and predates "
                            "checkpoints that carry their config; load it from RUN/checkpoints/")
    elif path.is_dir():
        if not (path / "config.yaml").is_file():  # before scanning it for links: any folder
            raise UserError(f"'{path}' is not a reverie run folder (no config.yaml); pass a "
                            "run folder such as runs/demo, or a checkpoint file")
        check_no_links(path)
        store = CheckpointStore(path / "checkpoints")
        if best:
            payload = store.load_best()
        else:
            payload, _, skipped = store.load_latest()
            for text in skipped:  # e.g. the newest is truncated: say which agent this is
                print(f"reverie: {text}", file=sys.stderr, flush=True)
        cfg = load_run_config(path)
    else:
        raise UserError(f"no run or checkpoint at '{path}'; pass a run folder such as runs/demo")
    if payload.get("agent_name") != cfg.agent:
        raise UserError(f"checkpoint at '{path}' is from agent '{payload.get('agent_name')}', "
                        f"the run config says '{cfg.agent}'")
    env = env_of(cfg)
    obs_spec = make_obs_spec(env.observation_space)
    agent = build_agent(cfg, obs_spec, env.action_space, select_device(device, "device"))
    load_agent_state(agent, payload, str(path))
    policy = Policy(agent, cfg, obs_spec, cfg.env.id)
    if isinstance(payload.get("best"), dict):
        policy.step, policy.eval_return = payload["best"]["step"], payload["best"]["eval_return"]
    elif isinstance(payload.get("counters"), dict):
        policy.step = payload["counters"].get("env_steps")
    return policy
