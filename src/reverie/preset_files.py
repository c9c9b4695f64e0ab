"""Presets: the bundled YAML files (`reverie/presets/*.yaml`) and the user's own preset
files of the same form, which may start from another with `base:`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from reverie.errors import UserError, suggest
from reverie.registry import AGENT_PRESETS, AGENTS, agent_parts


def presets() -> list[str]:
    """Names of the bundled presets."""
    folder = resources.files("reverie") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    """The file of a bundled preset, comments included; a UserError with a did-you-mean for
    an unknown name."""
    if name not in presets():
        raise UserError(
            f"unknown preset '{name}'{suggest(name, presets())}; choose one of: "
            f"{', '.join(presets())}, or pass your own YAML file"
        )
    return (resources.files("reverie") / "presets" / f"{name}.yaml").read_text()


def agent_presets(agent: str) -> list[str]:
    """The bundled presets of `agent`, its `--agent` default first."""
    names = [n for n in presets() if agent_of(load_preset(n)) == agent]
    first = AGENT_PRESETS.get(agent)
    return sorted(names, key=lambda n: n != first)


def agent_of(preset_data: dict[str, Any]) -> str:
    """The agent a loaded preset configures (imagine where it names none)."""
    return str(preset_data.get("agent", "imagine"))


def agents_set(items: list[str] | tuple[str, ...]) -> list[str]:
    """The values given to `agent` in KEY=VALUE items (--set, --grid), in order."""
    return [value.strip() for key, _, value in (item.partition("=") for item in items)
            if key.strip() == "agent"]


def preset_of_agent(agent: str | None, preset: str | None,
                    settings: list[str] | tuple[str, ...] = ()) -> str | None:
    """The preset a `--agent`/`--preset` pair trains: the agent's default preset when only
    --agent is given; --preset unchanged, once checked to be a preset of that agent.
    settings: the `--set`/`--grid` KEY=VALUE(S) given with them, which must not name
    another agent."""
    if agent is None:
        return preset
    agent_parts(agent)  # unknown agents named as such, with a suggestion
    for value in agents_set(settings):
        if value != agent:
            raise UserError(f"--agent {agent} and agent={value} (--set/--grid) disagree; drop "
                            "one of them")
    if preset is None:
        if agent not in AGENT_PRESETS:  # registered by a user, without a bundled preset
            raise UserError(f"agent '{agent}' has no bundled preset; give --preset FILE.yaml "
                            f"holding agent: {agent} and its settings")
        return AGENT_PRESETS[agent]
    data = load_preset(preset)
    if (preset_agent := agent_of(data)) == agent:
        return preset
    if is_preset_file(preset) and "agent" not in data:
        raise UserError(f"preset file '{preset}' names no agent (so it is imagine's); add "
                        f"`agent: {agent}` to it, or `base: {AGENT_PRESETS.get(agent, '...')}` "
                        "to start from that agent's preset")
    raise UserError(f"preset '{preset}' is for agent '{preset_agent}', not '{agent}'; drop "
                    f"--agent, or --preset one of {agent}'s: {', '.join(agent_presets(agent))}")


def is_preset_file(name: str) -> bool:
    """A --preset naming a YAML file (a path or *.yaml / *.yml) rather than a bundled one."""
    return name.endswith((".yaml", ".yml")) or "/" in name


SCALAR_KEYS = ("agent", "seed", "base")  # a preset's top-level keys that are not sections


def load_preset(name: str, _chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A bundled preset by name, or the user's own YAML file of the same form. A file may
    start from another preset with `base: <name or file>` (a relative file from its own
    folder) and change only what differs; a backbone it changes drops the base's backbone
    options, as --backbone does."""
    where, data = _read_preset(name)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise UserError(f"{where}: base must name a preset or a YAML file")
    if is_preset_file(base) and not Path(base).expanduser().is_absolute() \
            and is_preset_file(name):
        base = str(Path(name).expanduser().parent / base)
    if base in (*_chain, name):
        raise UserError(f"{where}: its bases form a cycle ({' -> '.join((*_chain, name, base))})")
    try:
        base_data = load_preset(base, (*_chain, name))
    except UserError as e:
        if is_preset_file(base):  # a base file's own errors name that file
            raise
        raise UserError(f"{where}, its base: {e}") from None
    return _over_base(base_data, data)


def has_base_file(name: str) -> bool:
    """Whether the preset `name` starts from another YAML file (`base: other.yaml`): its
    settings then come from more than one of the user's files (bundled bases are checked)."""
    base = _read_preset(name)[1].get("base")
    return isinstance(base, str) and is_preset_file(base)


def _read_preset(name: str) -> tuple[str, dict[str, Any]]:
    """(how errors name it, its settings as written, `base:` included) of one preset file or
    bundled preset; a UserError for one that is unreadable, empty or not of a preset's form."""
    if is_preset_file(name):
        where = f"preset file '{name}'"
        try:
            text = Path(name).expanduser().read_text()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or "not UTF-8 text"
            raise UserError(f"cannot read {where} ({reason}); pass a YAML file or a bundled "
                            f"preset: {', '.join(presets())}") from None
    else:
        where = f"preset '{name}'"
        text = preset_text(name)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{where} is not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        raise UserError(f"{where} is empty; write the settings that differ from a preset, "
                        "starting with e.g. `base: cartpole`")
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping of settings (agent: ..., run: ...), not "
                        f"a {type(data).__name__}")
    for key, value in data.items():
        if key not in SCALAR_KEYS and value is not None and not isinstance(value, dict):
            raise UserError(f"{where}: '{key}' must be a section of settings (its keys "
                            f"indented below it), not {value!r}")
    return where, data


def _over_base(base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """`data` merged over `base` key by key; a backbone that `data` changes starts without
    the base's backbone options (they belong to the base's backbone)."""
    try:
        mine, theirs = OmegaConf.create(data), OmegaConf.create(base)
        merged = OmegaConf.to_container(OmegaConf.merge(theirs, mine))
    except OmegaConfBaseException as e:  # a section in one, a value in the other
        raise UserError(f"a preset does not fit its base ({str(e).splitlines()[0]})") from None
    agent = agent_of(merged)
    backbone_key = AGENTS.get(agent, (None, None, None, None))[3]
    if backbone_key:
        path = f"{agent}.{backbone_key}"
        backbone = OmegaConf.select(mine, path, default=None)
        if backbone is not None and backbone != OmegaConf.select(theirs, path, default=None):
            node = OmegaConf.create(merged)  # only the file's own options for its backbone
            OmegaConf.update(node, path + "_kwargs",
                             OmegaConf.select(mine, path + "_kwargs", default=None) or {},
                             merge=False)
            merged = OmegaConf.to_container(node)
    return merged
