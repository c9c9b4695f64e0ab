"""Whether a config's env suits its agent and preset: checked where a run starts (the
driver), and before one (`train --show-config`, the sweep's check of every env of a grid)."""

from __future__ import annotations

from gymnasium import spaces
from omegaconf import DictConfig

from reverie.config import agent_hook
from reverie.envs import image_keys, make_obs_spec
from reverie.errors import UserError
from reverie.run.collector import env_of


def check_obs_kind(cfg: DictConfig, obs_spec) -> None:
    """The preset's observation kind (env.obs: vector | image | any) fits the env's."""
    kind = "image" if image_keys(obs_spec) else "vector"
    if cfg.env.obs in (kind, "any"):
        return
    if cfg.agent == "imagine":  # its presets are sized for one kind or the other
        env_id = str(cfg.env.id)
        fix = ("--preset atari100k" if kind == "image" else "--preset minatar"
               if env_id.startswith("minatar:") else "--preset dmc-proprio"
               if env_id.startswith("dmc:") else "--preset cartpole")
        # env.obs says what the run is sized for (its preset's, or a --set): it does not turn
        # an env's observations into the other kind (DMC and MinAtar give vectors only)
        raise UserError(f"env '{env_id}' gives {kind} observations, and env.obs={cfg.env.obs} "
                        f"(from the preset or --set) sizes the run for {cfg.env.obs}s; an env "
                        f"gives one kind only: use {fix} (or set env.obs=any)")
    raise UserError(f"env '{cfg.env.id}' gives {kind} observations but env.obs={cfg.env.obs}; "
                    f"set env.obs={kind} (or any), or drop the setting that made it "
                    f"{cfg.env.obs}")


def check_spaces(cfg: DictConfig, obs_spec, action_space: spaces.Space) -> None:
    """The env's spaces suit the agent (its module's optional `check_spaces(obs_spec,
    action_space)`, which raises ValueError) and the preset's observation kind."""
    check = agent_hook(cfg.agent, "check_spaces")
    if check is not None:
        try:
            check(obs_spec, action_space)
        except ValueError as e:
            raise UserError(f"agent {cfg.agent} cannot run env '{cfg.env.id}': {e}") from None
    check_obs_kind(cfg, obs_spec)


def check_env(cfg: DictConfig, agent: bool = False) -> None:
    """The config's env exists (did-you-mean otherwise) and suits the agent and the preset:
    what a run would refuse at its start, refused before one (show-config, sweeps).
    agent=True also builds the agent once on the CPU, so that options only its parts check
    (a backbone's) are refused here as at a run's start."""
    env = env_of(cfg)
    try:
        obs_spec = make_obs_spec(env.observation_space)
        check_spaces(cfg, obs_spec, env.action_space)
        if agent:
            import torch

            from reverie.run.agent import build_agent

            build_agent(cfg, obs_spec, env.action_space, torch.device("cpu"))
    finally:
        env.close()
