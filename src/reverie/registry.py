"""The registered agents: where each one's config and class live, and its default preset.

An agent is a module with a config dataclass and an agent class (`reverie.run.agent`);
registering one is adding it to AGENTS (a user may do so at run time).
"""

from __future__ import annotations

import importlib
from typing import Any

from reverie.errors import UserError, suggest

# agent name -> (module, config class, agent class, dotted path of the backbone option)
AGENTS: dict[str, tuple[str, str, str, str | None]] = {
    "imagine": ("reverie.agents.imagine", "ImagineConfig", "ImagineAgent", "world.backbone"),
    "random": ("reverie.agents.random", "RandomConfig", "RandomAgent", None),
    "mbpo": ("reverie.agents.mbpo", "MBPOConfig", "MBPOAgent", None),
    "rppo": ("reverie.agents.rppo", "RPPOConfig", "RPPOAgent", "backbone"),
}
# the preset `--agent NAME` starts from when no --preset is given: each learns something
# real on this CPU (`reverie presets` lists the rest)
AGENT_PRESETS = {"imagine": "cartpole", "random": "random", "mbpo": "mbpo-pendulum",
                 "rppo": "popgym-ppo"}


def agent_parts(name: str) -> tuple[type, type, str | None]:
    """(config class, agent class, backbone option path) of a registered agent."""
    if name not in AGENTS:
        raise UserError(
            f"unknown agent '{name}'{suggest(name, AGENTS)}; choose one of: {', '.join(AGENTS)}"
        )
    module_name, cfg_cls, agent_cls, backbone_key = AGENTS[name]
    module = importlib.import_module(module_name)
    return getattr(module, cfg_cls), getattr(module, agent_cls), backbone_key


def agent_hook(agent: str, name: str, default: Any = None) -> Any:
    """An optional module-level member of a registered agent's module (`validate_config`,
    `training_notes`, `check_spaces`, `REPORT_KEYS`), or `default`."""
    return getattr(importlib.import_module(AGENTS[agent][0]), name, default)
