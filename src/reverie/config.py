"""Typed configuration: dataclass schemas, YAML presets, dotted overrides, validation.

A run's config is the merge, in order, of the schema defaults, a named preset
(`presets/<name>.yaml`), the command-line flags and `--set a.b=v` overrides. The agent's
own section (e.g. `imagine:`) is the agent's config dataclass, so every key is type-checked
and an unknown key is an error that suggests the closest valid one.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

from reverie.errors import UserError, suggest
from reverie.preset_files import (  # noqa: F401  (reverie.config's names before the split)
    agent_of,
    agent_presets,
    agents_set,
    has_base_file,
    is_preset_file,
    load_preset,
    preset_of_agent,
    preset_text,
    presets,
)
from reverie.registry import AGENT_PRESETS, AGENTS, agent_hook, agent_parts  # noqa: F401

SAMPLERS = ("uniform", "dfs")
COMPILE_MODES = ("off", "auto", "on")
PRECISIONS = ("fp32", "bf16")  # reverie.precision
VECTOR_MODES = ("sync", "async")  # reverie.envs.vector
HALF_NAMES = ("fp16", "float16", "half", "16", "16-mixed")
# YAML reads a bare on/off as a boolean, which run.compile (a string) stores as 'True'/'False'
_COMPILE_SPELLINGS = {"on": "on", "true": "on", "off": "off", "false": "off",
                      "auto": "auto"}
OBS_KINDS = ("any", "vector", "image")
MAX_SEED = 2**32 - 1  # numpy's legacy global seed takes 32 bits
MAX_THREADS = 256  # far past any CPU's cores; OpenMP crashes (SIGSEGV) on absurd counts
# Keys that may change when a run is resumed: they do not change what the agent learns from
# the data it has (logging, evaluation, checkpoint cadence, the run's length, resources).
RESUME_KEYS = ("run.steps", "run.progress", "run.log_every", "run.eval_every",
               "run.eval_episodes", "run.eval_noop_max", "run.checkpoint_every",
               "run.keep_checkpoints", "run.keep_best",
               "run.max_nan_retries", "run.threads", "run.share_cores", "run.device", "run.compile",
               "run.precision", "run.vector",
               "replay.capacity")  # raised only: the replay grows, keeping its rows
# settings that change no result of a run (its budget aside, which does): reports and sweeps
# take runs that differ only in them for one
NO_RESULT_KEYS = frozenset({"run.steps", "run.progress", "run.log_every",
                            "run.checkpoint_every", "run.keep_checkpoints", "run.keep_best",
                            "run.max_nan_retries", "replay.on_disk"})



@dataclass
class EnvConfig:
    id: str = "CartPole-v1"
    image_size: int = 64
    # which observations the preset's model sizes were chosen for; "any" skips the check
    obs: str = "any"
    # Atari: store a lost life as a terminal step (Drama/STORM); the episode goes on
    life_loss_terminal: bool = False
    # add the previous step's reward to the observation (key `prev_reward`; POPGym's memory
    # models can take it): every agent sees it, in training and evaluation alike
    prev_reward: bool = False


@dataclass
class RunConfig:
    steps: int = 5000  # env steps (agent steps; Atari: 4 frames each)
    train_ratio: float = 1024.0  # replayed steps per env step
    prefill: int = 500  # random-action steps before the first update
    log_every: int = 250
    eval_every: int = 1000
    eval_episodes: int = 5
    checkpoint_every: int = 1000  # env steps between checkpoints (at any step, mid-episode too)
    keep_checkpoints: int = 3
    # keep the agent of the best evaluation so far in checkpoints/best.pt (beside the last
    # `keep_checkpoints`): `reverie.load(run, best=True)`, `reverie eval/watch RUN --best`
    keep_best: bool = True
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads; 0 = torch's as it is (all cores, fresh)
    # lower torch's threads to the cores other processes leave free, while they run (with
    # libgomp's long spin, which the `reverie` command then keeps: fast alone, safe beside a
    # neighbour; reverie/openmp.py); results then depend on the machine's load by float
    # rounding, as they do on run.threads
    share_cores: bool = False
    num_envs: int = 1  # envs stepped together; a replay keeps one ring per env (mbpo takes 1)
    # the envs as Gymnasium's SyncVectorEnv (sync: all in this process) or AsyncVectorEnv
    # (async: one worker process per env, worth it when an env step costs more than a pipe
    # round trip and cores are free: bench/vector_env.py); both give the same data
    vector: str = "sync"
    max_nan_retries: int = 3
    progress: bool = True
    # Atari evaluation: up to this many random no-op starts (the Atari100k protocol: 30;
    # Drama's own evaluation: 0)
    eval_noop_max: int = 30
    # torch.compile (inductor, reverie/compiler.py). on: the agent's losses, imagination's
    # context warm-up and imagined step, acting, and reverie's own kernels (the one-hot weight
    # gradient, imagination's latent sample and Mamba-2 step, the conv nets' pixel scaling
    # and norms with image observations; the minatar, dmc-proprio and
    # atari100k presets set it: bench/compile_presets.py, bench/kernels.py);
    # auto: only what pays for itself in a default-length run on a cold cache (for `imagine`:
    # its imagined step with a backbone whose step gains, bench/compile.py); off: nothing
    compile: str = "auto"
    # fp32, or bf16: mixed precision (torch.autocast; matmuls and convolutions in bfloat16,
    # parameters, optimiser state and losses in float32; reverie/precision.py). Several times
    # faster matmuls on CPUs with AMX/AVX512-BF16 and on recent GPUs (bench/precision.py)
    precision: str = "fp32"


@dataclass
class ReplayConfig:
    capacity: int = 1_000_000  # rows; capped at run.steps
    sampler: str = "dfs"
    tau: float = 10.0  # DFS temperature
    # memory-mapped in the run folder, so --resume keeps the data; in memory (false) a
    # resume can only finish a run stopped at its budget (its final evaluation)
    on_disk: bool = True


@dataclass
class Config:
    agent: str = "imagine"
    seed: int = 0
    env: EnvConfig = field(default_factory=EnvConfig)
    run: RunConfig = field(default_factory=RunConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)


def _schema(agent: str) -> DictConfig:
    cfg_cls, _, _ = agent_parts(agent)
    schema = OmegaConf.structured(Config)
    OmegaConf.set_struct(schema, False)
    schema[agent] = OmegaConf.structured(cfg_cls)
    OmegaConf.set_struct(schema, True)
    _open_kwargs(schema)
    return schema


def _open_kwargs(node: DictConfig) -> None:
    """`*_kwargs` fields (e.g. world.backbone_kwargs) pass free-form options to a component,
    which validates them itself; every other section stays closed to unknown keys."""
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if str(key).endswith("_kwargs"):
                OmegaConf.set_struct(child, False)
            else:
                _open_kwargs(child)


def _keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            path = f"{prefix}{k}"
            out.append(path)
            out.extend(_keys(node._get_node(k), path + "."))
    return out


def _friendly(e: OmegaConfBaseException, schema: DictConfig) -> UserError:
    key = getattr(e, "full_key", None) or ""
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        keys = _keys(schema)
        # a top-level setting put under a section (run.seed): the name is the better clue
        same_name = [k for k in schema.keys() if "." in key and k == key.rsplit(".", 1)[-1]
                     and not isinstance(schema._get_node(k), DictConfig)]
        hint = f" (did you mean '{same_name[0]}'?)" if same_name else suggest(key, keys)
        return UserError(f"unknown config key '{key}'{hint}; see `reverie train --show-config`")
    if isinstance(e, InterpolationResolutionError):
        return UserError(f"bad value for '{key}': cannot resolve '${{...}}' "
                         f"({type(e).__name__}); write the value itself")
    if isinstance(e, ValidationError):
        msg = str(e).splitlines()[0]
        want, default = _expected(schema, key)
        value = re.match(r"Value '(.*?)'", msg)
        if want in ("a list", "a mapping"):  # omegaconf's words name its node classes
            return UserError(f"bad value for '{key}': it takes {want}; write e.g. "
                             f"{key}={default}")
        conv = re.match(r"Value '(.*?)' of type '\w+' could not be converted to (\w+)", msg)
        if want is None and conv is not None:  # an element of a list (mbpo.schedule[2])
            want = EXPECTED.get(f"{conv.group(2)}Node")
            if want is not None:
                return UserError(f"bad value for '{key}': '{conv.group(1)}' is not {want}")
        none = re.match(r"Incompatible value 'None' for field of type", msg)
        if none is not None and want is not None:  # null (~) for a setting that needs one
            return UserError(f"bad value for '{key}': null is not {want}; write e.g. "
                             f"{key}={default}")
        if want is None or value is None:
            return UserError(f"bad value for '{key}': {msg}")
        return UserError(f"bad value for '{key}': '{value.group(1)}' is not {want}; write "
                         f"e.g. {key}={default}")
    return UserError(f"bad config: {str(e).splitlines()[0]}")


def check_flags_agree(flags: dict[str, Any], overrides: list[str], agent: str,
                       backbone_key: str | None) -> None:
    """A flag and a --set of the same key with different values: which one the user meant is
    not knowable (the --set won, silently)."""
    keys = {"env": "env.id", "steps": "run.steps", "seed": "seed"}
    if backbone_key:
        keys["backbone"] = f"{agent}.{backbone_key}"
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        flag = next((f for f, k in keys.items() if k == key and flags.get(f) is not None), None)
        if flag is None:
            continue
        try:
            given = OmegaConf.select(OmegaConf.from_dotlist([item]), key)
        except (OmegaConfBaseException, yaml.YAMLError, ValueError):
            continue  # a malformed value is said by the merge, with its own message
        if str(given) != str(flags[flag]):
            raise UserError(f"--{flag} {flags[flag]} and --set {item.strip()} both set {key}; "
                            "give one of them")


# what a typed setting takes, by its OmegaConf node type
EXPECTED = {"IntegerNode": "a whole number", "FloatNode": "a number", "StringNode": "a string",
            "BooleanNode": "true or false", "ListConfig": "a list", "DictConfig": "a mapping"}


def _schema_node(schema: DictConfig, key: str) -> Any:
    """The schema's node of a dotted setting (its type says what it takes), None if `key` is
    not a plain setting of the schema."""
    parent, _, name = key.rpartition(".")
    try:
        return (OmegaConf.select(schema, parent) if parent else schema)._get_node(name)
    except Exception:  # noqa: BLE001 - not a plain setting of the schema
        return None


def _expected(schema: DictConfig, key: str) -> tuple[str | None, Any]:
    """(what `key` takes in words, its default) for a typed setting, else (None, None)."""
    node = _schema_node(schema, key)
    want = EXPECTED.get(type(node).__name__)
    if want is None:
        return None, None
    if isinstance(node, DictConfig) and is_dataclass(OmegaConf.get_type(node)):
        return None, None  # a section of settings (said by _check_override_key), not a mapping
    if isinstance(node, (ListConfig, DictConfig)):  # written as --set takes it: [20,100,1,15]
        default = OmegaConf.to_container(node)
        return want, json.dumps(default, separators=(",", ":")).replace('"', "")
    default = node._value()
    if default is None:  # YAML's null: `None` would arrive as the text 'None'
        return want, "null"
    return want, str(default).lower() if isinstance(default, bool) else default


# what YAML 1.1 reads as a boolean: `--set mbpo.mode=off` arrived as 'False'
YAML_BOOL_WORDS = {"on", "off", "yes", "no", "y", "n", "true", "false"}


def _as_text(overrides: list[str], schema: DictConfig) -> list[str]:
    """`--set`s of a text setting whose value YAML would read as a boolean, quoted: the
    value stays the word given (its error, if any, quotes it back), not 'False'."""
    out = []
    for item in overrides:
        key, value = (x.strip() for x in item.split("=", 1))
        node = _schema_node(schema, key)  # None: left to the merge to judge
        text = type(node).__name__ == "StringNode" and value.lower() in YAML_BOOL_WORDS
        out.append(f"{key}='{value}'" if text else item)
    return out


def listed_overrides(overrides: Any) -> list[str]:
    """Python callers' overrides as a list: one string would be read letter by letter."""
    if isinstance(overrides, str):
        raise UserError(f"overrides must be a list of 'key=value' strings, e.g. "
                        f"[{overrides!r}], not one string")
    return list(overrides)


def _parse_dotlist(items: list[str]) -> list[str]:
    for item in items:
        if "=" not in item or item.startswith("="):
            raise UserError(f"--set expects key=value (e.g. run.steps=2000), got '{item}'")
        key, value = item.split("=", 1)
        if not value.strip():  # OmegaConf reads an empty value as None: say what to write
            raise UserError(f"--set {key}= gives no value; write {key}=VALUE "
                            "(see `reverie train --show-config`)")
    return items


def _check_override_key(key: str, schema: DictConfig, agent: str, value: str = "") -> None:
    """A dotted key whose prefix is a value, not a section (e.g. agent.x), or a section given
    a value that is not a mapping of its keys: say where it goes."""
    parts = key.split(".")
    if len(parts) > 1 and parts[0] in AGENTS and parts[0] != agent:  # another agent's option
        same_name = [k for k in _keys(schema)
                     if k.startswith(f"{agent}.") and k.rsplit(".", 1)[-1] == parts[-1]]
        close = f" (did you mean '{same_name[0]}'?)" if len(same_name) == 1 else ""
        raise UserError(f"'{key}' is an option of agent {parts[0]}, and this run's agent is "
                        f"{agent}{close}; train {parts[0]} with --agent {parts[0]}, or set "
                        f"{agent}'s options under '{agent}.' (`--show-config` lists them)")
    node: Any = schema
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, DictConfig) or part not in node:
            return  # an unknown key: OmegaConf's error names it, with a suggestion
        node = node._get_node(part)
        if not isinstance(node, DictConfig) and not str(part).endswith("_kwargs"):
            prefix = ".".join(parts[: i + 1])
            rest = ".".join(parts[i + 1 :])
            if prefix == "agent":
                raise UserError(
                    f"'agent' is the agent's name ({', '.join(AGENTS)}), not a section; "
                    f"{agent}'s options live under '{agent}.'"
                    f"{suggest(f'{agent}.{rest}', _keys(schema))}"
                )
            raise UserError(f"'{prefix}' is a value, not a section; so '{key}' does not exist"
                            f"{suggest(key, _keys(schema))}")
    leaf = node._get_node(parts[-1]) if isinstance(node, DictConfig) and parts[-1] in node \
        else None
    if isinstance(leaf, DictConfig) and is_dataclass(OmegaConf.get_type(leaf)) \
            and not _is_mapping(value):
        # a whole section set to one value: OmegaConf would fail, or, with a later key of the
        # section set too, drop this one without a word
        first = next(iter(leaf.keys()))
        raise UserError(f"'{key}' is a section of settings, not one setting; set its keys, "
                        f"e.g. --set {key}.{first}=... (`--show-config` lists them)")


def _is_mapping(text: str) -> bool:
    try:
        return isinstance(yaml.safe_load(text), dict)
    except yaml.YAMLError:
        return False


def unread_keys(agent: str) -> list[str]:
    """Config keys the agent never reads: `replay` (a whole section) for agents that keep
    their own transitions (`uses_replay = False`), `run.train_ratio` for those with their own
    `updates_due` schedule."""
    _, agent_cls, _ = agent_parts(agent)
    return ((["replay"] if not getattr(agent_cls, "uses_replay", True) else [])
            + (["run.train_ratio"] if hasattr(agent_cls, "updates_due") else []))


def _check_used(key: str, agent: str) -> None:
    """A --set of a key the agent never reads would be ignored in silence: refuse it. Agents
    that keep their own transitions (`uses_replay = False`) read no `replay.` key, and those
    with their own `updates_due` schedule (described by their `schedule`) no run.train_ratio."""
    unread = unread_keys(agent)
    if key.startswith("replay.") and "replay" in unread:
        raise UserError(f"{key} has no effect on agent {agent}: it keeps its own transitions "
                        f"(its own settings are under {agent}.); drop it (--set, --grid or "
                        "your preset file)")
    if key == "run.train_ratio" and key in unread:
        schedule = getattr(agent_parts(agent)[1], "schedule", "updates_due")
        raise UserError(f"run.train_ratio has no effect on agent {agent}: it keeps its own "
                        f"update schedule ({schedule}); drop it (--set, --grid or your preset "
                        "file)")


def _resolve(cfg: DictConfig, schema: DictConfig) -> DictConfig:
    """Resolve `${...}` interpolations once, so every later read sees plain values."""
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise _friendly(e, schema) from None
    return cfg


def _validated(cfg: DictConfig, where: str = "") -> DictConfig:
    try:
        _normalise(cfg)
        validate(cfg)
    except UserError as e:
        raise UserError(f"{where}{e}") from None
    except (ValueError, TypeError, AttributeError, KeyError, OmegaConfBaseException) as e:
        # a section overridden by a value of the wrong kind (e.g. run=[]) lands here
        raise UserError(f"{where}bad config: {str(e).splitlines()[0]}; see --show-config") \
            from None
    return cfg


def preset_summary(name: str, width: int = 80) -> str:
    """One line on a bundled preset: its agent, env, env steps and the first sentence of the
    comment that opens its file (cut at `width` characters)."""
    text = preset_text(name)
    comment = " ".join(line.lstrip("# ").strip() for line in text.splitlines()
                       if line.startswith("#"))
    cut = comment.find(". ")
    sentence = (comment[:cut + 1] if cut >= 0 else comment).strip()
    if len(sentence) > width:
        sentence = sentence[:width].rsplit(" ", 1)[0].rstrip(",;:(") + " ..."
    cfg = build_config(name)
    return f"{name:<24} {cfg.agent:<8} {cfg.env.id:<30} {int(cfg.run.steps):>9,}  {sentence}"


FLAG_TYPES = {"env": str, "backbone": str, "steps": int, "seed": int}  # build_config's flags


def _checked_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags that are given (not None), each a known name of the right type: a library
    caller's `{"step": 600}` or `{"steps": "600"}` is said, not ignored or converted."""
    given = {}
    for name, value in flags.items():
        if name not in FLAG_TYPES:
            raise UserError(f"unknown flag '{name}'{suggest(str(name), FLAG_TYPES)}; "
                            f"build_config's flags are {', '.join(FLAG_TYPES)} (any other "
                            "key goes in the overrides, e.g. 'run.train_ratio=512')")
        if value is None:
            continue
        kind = FLAG_TYPES[name]
        ok = isinstance(value, numbers.Integral) if kind is int else isinstance(value, kind)
        if not ok or isinstance(value, bool):
            raise UserError(f"flag '{name}' must be {'an' if kind is int else 'a'} "
                            f"{kind.__name__}, got {type(value).__name__} {value!r}")
        given[name] = int(value) if kind is int else value  # numpy integers too
    return given


def build_config(
    preset: str | None = "cartpole",
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> DictConfig:
    """Merge schema defaults, a preset, CLI flags (env, backbone, steps, seed) and `--set`s."""
    preset_data = load_preset(preset) if preset else {}
    overrides = _parse_dotlist(listed_overrides(overrides or []))
    flags = _checked_flags(flags or {})
    preset_agent = agent_of(preset_data)
    # the agent must be known before the schema can be built
    agent = (agents_set(overrides) or [preset_agent])[-1]
    if agent != preset_agent and isinstance(preset_data.get(preset_agent), dict):
        agent_parts(agent)  # an unknown name is said as such
        fix = (f"use --agent {agent} (preset {AGENT_PRESETS[agent]})"
               if agent in AGENT_PRESETS else f"give --preset FILE.yaml holding agent: {agent}")
        others = [n for n in agent_presets(agent) if n != AGENT_PRESETS.get(agent)]
        raise UserError(
            f"preset '{preset}' configures agent '{preset_agent}' (its {preset_agent}: section "
            f"does not apply to {agent}); {fix}"
            + (f", or --preset one of {agent}'s: {', '.join(others)}" if others else "")
        )
    schema = _schema(agent)
    _, _, backbone_key = agent_parts(agent)
    for section in ("replay", "run") if agent == preset_agent else ():
        for name in preset_data.get(section) or {}:  # keys a preset sets for an agent that
            _check_used(f"{section}.{name}", agent)  # never reads them
    backbone_flag = "backbone" in flags
    for item in list(overrides):
        key, value = (x.strip() for x in item.split("=", 1))
        _check_override_key(key, schema, agent, value)
        _check_used(key, agent)
        if backbone_key and key == f"{agent}.{backbone_key}" and not backbone_flag:
            # same as --backbone: the preset's backbone options go with the preset's backbone;
            # said twice, the last one counts, as for any key
            overrides.remove(item)
            flags["backbone"] = value
    check_flags_agree(flags, overrides, agent, backbone_key)
    overrides = _as_text(overrides, schema)
    files = f"{preset} or a base it names" if preset and has_base_file(preset) else preset
    other = [k for k in preset_data if k in AGENTS and k != agent]
    if other:  # said as `--set` says it (OmegaConf: "unknown key 'rppo' (did you mean 'mbpo'?)")
        raise UserError(f"in preset {files}: its '{other[0]}:' section holds options of agent "
                        f"{other[0]}, and its agent is {agent}; set agent: {other[0]}, or put "
                        f"{agent}'s options under '{agent}:' (`--show-config` lists them)")
    try:
        cfg = OmegaConf.merge(schema, preset_data)
    except OmegaConfBaseException as e:  # a key or value of the preset's own files
        raise UserError(f"in preset {files}: {_friendly(e, schema)}") from None
    try:
        if "env" in flags:
            cfg.env.id = flags["env"]
        if "steps" in flags:
            cfg.run.steps = flags["steps"]
        if "seed" in flags:
            cfg.seed = flags["seed"]
        if "backbone" in flags:
            if backbone_key is None:
                raise UserError(f"agent '{agent}' takes no backbone; drop --backbone")
            path = f"{agent}.{backbone_key}"
            if OmegaConf.select(cfg, path) != flags["backbone"]:
                # the preset's backbone options belong to the preset's backbone
                kwargs_path = path + "_kwargs"
                if OmegaConf.select(cfg, kwargs_path) is not None:
                    OmegaConf.update(cfg, kwargs_path, {}, merge=False)
            OmegaConf.update(cfg, path, flags["backbone"], merge=False)
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        raise _friendly(e, schema) from None
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse an override value ({type(e).__name__}); quote plain "
                        "text values, e.g. --set env.id=CartPole-v1") from None
    except (ValueError, TypeError) as e:  # e.g. a section and its key both overridden
        raise _container_mismatch(overrides, schema) or UserError(
            f"conflicting overrides ({str(e).splitlines()[0]}); set leaf keys such as "
            "run.steps=2000") from None
    return _validated(_resolve(cfg, schema))


def _container_mismatch(overrides: list[str], schema: DictConfig) -> UserError | None:
    """A mapping given to a list setting or a list to a mapping (OmegaConf: "Cannot merge
    incompatible container types"): the setting and what it takes, else None."""
    for item in overrides:
        key, _, text = (part.strip() for part in item.partition("="))
        want, default = _expected(schema, key)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        if (want, type(value)) in (("a list", dict), ("a mapping", list)):
            return UserError(f"bad value for '{key}': it takes {want}; write e.g. "
                             f"{key}={default}")
    return None


def off_spelling(value: Any) -> str:
    """A mode as a string, with YAML 1.1's reading of a bare `off` (false, which OmegaConf
    stores as 'False' in a str field) mapped back to 'off'."""
    text = str(value).strip()
    return "off" if text.lower() in ("false", "off") else text


def _normalise(cfg: DictConfig) -> None:
    """Canonical spellings of values YAML may have turned into booleans (run.compile: on),
    and of run.vector in any letter case."""
    mode = _COMPILE_SPELLINGS.get(str(cfg.run.compile).strip().lower())
    if mode is not None:
        cfg.run.compile = mode
    # imagine.coplanner.mode: off (a bare `off` is YAML's false, stored as 'False'), so runs
    # set either way are one setting in reports
    cop = OmegaConf.select(cfg, "imagine.coplanner", default=None)
    if cop is not None and off_spelling(cop.mode) == "off":
        cop.mode = "off"
    if str(cfg.run.vector).strip().lower() in VECTOR_MODES:  # ASYNC, Sync: one spelling
        cfg.run.vector = str(cfg.run.vector).strip().lower()


def validate(cfg: DictConfig) -> None:
    """Checks that types alone cannot express; each failure names the fix."""
    run = cfg.run
    if not 0 <= cfg.seed <= MAX_SEED:
        raise UserError(f"seed must be a non-negative integer below 2**32, got {cfg.seed}")
    if run.steps <= 0:
        raise UserError(f"run.steps must be positive, got {run.steps}; e.g. --steps 5000")
    if not math.isfinite(run.train_ratio) or run.train_ratio <= 0:
        raise UserError(
            f"run.train_ratio must be > 0 (replayed steps per env step), got {run.train_ratio}"
        )
    for key in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        if run[key] <= 0:
            raise UserError(f"run.{key} must be positive, got {run[key]}")
    for key in ("prefill", "eval_episodes", "threads"):
        if run[key] < 0:
            raise UserError(f"run.{key} must be >= 0, got {run[key]}")
    if run.eval_noop_max < 0:
        raise UserError(f"run.eval_noop_max must be >= 0, got {run.eval_noop_max}")
    if run.num_envs < 1:
        raise UserError(f"run.num_envs must be >= 1, got {run.num_envs}")
    if run.vector not in VECTOR_MODES:
        raise UserError(f"run.vector must be sync or async, got '{run.vector}'"
                        f"{suggest(str(run.vector), VECTOR_MODES)}")
    if run.threads > MAX_THREADS:
        raise UserError(f"run.threads={run.threads} is more than any CPU can use; set at most "
                        f"{MAX_THREADS} (0 = all cores)")
    if run.max_nan_retries < 0:
        raise UserError(f"run.max_nan_retries must be >= 0, got {run.max_nan_retries}")
    if run.device not in ("auto", "cpu", "cuda") and not str(run.device).startswith("cuda:"):
        raise UserError(f"run.device must be auto, cpu or cuda, got '{run.device}'")
    if run.compile not in COMPILE_MODES:
        raise UserError(f"run.compile must be off, auto or on, got '{run.compile}'"
                        f"{suggest(str(run.compile), COMPILE_MODES)}")
    if run.precision not in PRECISIONS:
        why = (" (float16 is not offered: its narrow exponent range needs loss scaling; "
               "bf16 has float32's range)" if str(run.precision).lower() in HALF_NAMES
               else suggest(str(run.precision), PRECISIONS))
        raise UserError(f"run.precision must be fp32 or bf16, got '{run.precision}'{why}")
    if cfg.replay.sampler not in SAMPLERS:
        raise UserError(
            f"unknown replay.sampler '{cfg.replay.sampler}'{suggest(cfg.replay.sampler, SAMPLERS)}"
            f"; choose one of: {', '.join(SAMPLERS)}"
        )
    if cfg.replay.capacity <= 0 or not math.isfinite(cfg.replay.tau) or cfg.replay.tau <= 0:
        raise UserError("replay.capacity and replay.tau must be positive")
    need, envs = rows_per_sample(cfg), int(run.num_envs)
    if cfg.replay.capacity < need:
        raise UserError(
            f"replay.capacity={cfg.replay.capacity} cannot hold one training sequence of {need} "
            f"rows; set replay.capacity >= {need}"
        )
    if need and cfg.replay.capacity // envs < need:
        raise UserError(
            f"replay.capacity={cfg.replay.capacity} split over run.num_envs={envs} env streams "
            f"leaves {cfg.replay.capacity // envs} rows each, fewer than one training sequence "
            f"of {need}; set replay.capacity >= {need * envs}"
        )
    if cfg.env.obs not in OBS_KINDS:
        raise UserError(f"env.obs must be one of {', '.join(OBS_KINDS)}, got '{cfg.env.obs}'")
    if cfg.env.image_size not in (32, 64, 96, 128):
        raise UserError(f"env.image_size must be 32, 64, 96 or 128, got {cfg.env.image_size}")
    _, _, backbone_key = agent_parts(cfg.agent)
    if backbone_key is not None:
        from reverie.sequence import BACKBONES

        name = OmegaConf.select(cfg, f"{cfg.agent}.{backbone_key}")
        if name not in BACKBONES:
            raise UserError(
                f"unknown backbone {str(name)!r}{suggest(str(name), BACKBONES)}; "
                f"choose one of: {', '.join(BACKBONES)}"
            )
    check = agent_hook(cfg.agent, "validate_config")
    if check is not None:  # the agent's own checks, which may read the run section too
        try:
            check(cfg[cfg.agent], cfg)
        except ValueError as e:
            raise UserError(str(e).splitlines()[0]) from None
    try:  # the checks of its config dataclasses' own __post_init__ (e.g. SAC's), as building
        to_object(cfg, cfg.agent)  # the agent would run them
    except ValueError as e:  # named by the section that refuses it (mbpo.sac: "SAC gamma ...")
        section = _refusing_section(cfg[cfg.agent], str(cfg.agent))
        raise UserError(_keyed(str(e).splitlines()[0], section,
                               OmegaConf.select(cfg, section))) from None


def _keyed(message: str, section: str, node: Any) -> str:
    """A dataclass check's message in the words of the config: "SAC gamma must be ..." of
    section mbpo.sac is "mbpo.sac.gamma must be ..."; a message that does not start with one
    of the section's keys after its label is "bad mbpo.sac config: <message>"."""
    label, _, rest = message.partition(" ")
    key, _, tail = rest.partition(" ")
    if label and tail and isinstance(node, DictConfig) and key in node:
        return f"{section}.{key} {tail}"
    return f"bad {section} config: {message}"


def _refusing_section(node: DictConfig, path: str) -> str:
    """The dotted path of the innermost dataclass section of `node` whose own checks raise
    ValueError (`path` itself where none of its subsections does)."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and is_dataclass(OmegaConf.get_type(child)):
            try:
                OmegaConf.to_object(child)
            except ValueError:
                return _refusing_section(child, f"{path}.{key}")
    return path


def uses_replay(agent: str) -> bool:
    """Whether an agent trains from the driver's sequence replay (most do; on-policy agents
    keep their own rollouts)."""
    _, agent_cls, _ = agent_parts(agent)
    return bool(getattr(agent_cls, "uses_replay", True))


def replay_in_memory(cfg: DictConfig, uses_replay: bool) -> bool:
    """Whether the run's replay dies with its process: an agent with one (`uses_replay`) and
    replay.on_disk=false. Such a run cannot be resumed to train on (`saving.resume_refused`)."""
    return uses_replay and not cfg.replay.on_disk


def rows_per_sample(cfg: DictConfig) -> int:
    """Consecutive replay rows one training sample needs (its sequence or context); 0 for
    agents without a replay."""
    if not uses_replay(cfg.agent):
        return 0
    section = cfg[cfg.agent]
    return max(int(section.get("seq_len", 1)), int(section.get("context", 1)))


def run_env_steps(run: DictConfig) -> int:
    """The env steps a run takes: run.steps rounded up to whole vector steps (all
    run.num_envs envs step together)."""
    envs = int(run.get("num_envs", 1))
    return -(-int(run.steps) // envs) * envs


def backbone_of(cfg: DictConfig) -> str | None:
    """The backbone the run's agent uses, or None for an agent without one."""
    _, _, key = agent_parts(cfg.agent)
    return OmegaConf.select(cfg, f"{cfg.agent}.{key}", default=None) if key else None


def run_title(cfg: DictConfig) -> str:
    """'CartPole-v1 · imagine (mamba2)': the env, the agent, its backbone, and the settings
    that make another algorithm of it where they are not its default (`REPORT_KEYS`:
    'Pendulum-v1 · mbpo (mode=coplanner)'), so a comparison's curves say which is which."""
    schema = _schema(cfg.agent)
    parts = [backbone_of(cfg)] + [
        f"{key.rsplit('.', 1)[-1]}={value}"
        for key in agent_hook(cfg.agent, "REPORT_KEYS", ())
        if (value := OmegaConf.select(cfg, key, default=None))
        != OmegaConf.select(schema, key, default=None)]
    shown = ", ".join(str(p) for p in parts if p)
    return f"{cfg.env.id} · {cfg.agent}" + (f" ({shown})" if shown else "")


def training_notes(cfg: DictConfig) -> list[str]:
    """Legitimate settings under which a run trains nothing: said, not silently done."""
    run, need, notes = cfg.run, rows_per_sample(cfg), []
    if run.steps <= run.prefill:
        notes.append(f"run.steps={run.steps} <= run.prefill={run.prefill}: this run only "
                     "collects random data and does no training; raise --steps or lower "
                     "run.prefill")
    envs = int(run.get("num_envs", 1))
    per_env = run_env_steps(run) // envs  # rows each env's stream of the replay gets
    if run.steps > run.prefill and need and per_env < need:
        where = "" if envs == 1 else f" per env ({envs} envs share run.steps)"
        notes.append(f"run.steps={run.steps} gives {per_env} rows{where}, shorter than one "
                     f"training sequence ({need} rows): no training will happen; raise --steps "
                     f"to at least {need * envs}")
    if run.steps % envs:
        notes.append(f"run.steps={run.steps} is not a multiple of run.num_envs={envs} (all envs "
                     f"step together): the run ends at {run_env_steps(run)} env steps")
    own = agent_hook(cfg.agent, "training_notes")
    return notes + (list(own(cfg)) if own is not None else [])  # the agent's own: warm-up...


def _same_value(cfg: DictConfig, key: str, item: str) -> bool:
    """Whether the override `item` (key=value) gives `key` the value it has in `cfg`."""
    absent = object()
    try:
        given = OmegaConf.select(OmegaConf.from_dotlist([item]), key)
        have = OmegaConf.select(cfg, key, default=absent, throw_on_missing=False)
    except (OmegaConfBaseException, yaml.YAMLError, ValueError):
        return False
    if have is absent:  # an unknown key said with null is not "the same"
        return False
    given, have = (OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
                   for v in (given, have))
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    same_type = type(given) is type(have) or (number(given) and number(have))
    return same_type and given == have


def _check_known(item: str, agent: str) -> None:
    """Refuse `item` (key=value) whose key the agent's schema does not have, naming the
    closest key (its value is checked elsewhere)."""
    schema = _schema(agent)
    key, _, value = item.partition("=")
    _check_override_key(key.strip(), schema, agent, value)  # another agent's option, a section
    try:
        OmegaConf.merge(schema, OmegaConf.from_dotlist([item]))
    except (ConfigKeyError, ConfigAttributeError) as e:
        raise _friendly(e, schema) from None
    except (OmegaConfBaseException, yaml.YAMLError, ValueError):
        pass


def apply_resume_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """`--set`s given with --resume: only RESUME_KEYS may change; the result is validated."""
    overrides = _parse_dotlist(listed_overrides(overrides))
    for item in list(overrides):
        key = item.split("=", 1)[0].strip()
        _check_used(key, cfg.agent)
        if key not in RESUME_KEYS and _same_value(cfg, key, item):
            overrides.remove(item)  # the run's own value, said again: nothing changes
        elif key not in RESUME_KEYS:
            _check_known(item, cfg.agent)  # a misspelt key is said as such, not as "cannot change"
            unread = unread_keys(cfg.agent)  # an mbpo run has no replay to grow
            can = [k for k in RESUME_KEYS if k.split(".")[0] not in unread and k not in unread]
            raise UserError(
                f"--set {key} cannot change when resuming (the checkpoint was trained with the "
                f"run's value); keys that can: {', '.join(can)}; or start a new run"
            )
    schema = _schema(cfg.agent)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(_as_text(overrides, schema)))
    except OmegaConfBaseException as e:
        raise _friendly(e, schema) from None
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse an override value ({type(e).__name__})") from None
    return _validated(_resolve(cfg, schema))


def to_object(cfg: DictConfig, section: str) -> Any:
    """A config section as its dataclass instance."""
    return OmegaConf.to_object(cfg[section])


def config_yaml(cfg: DictConfig) -> str:
    """The config as a run saves and shows it: without the keys its agent never reads (a
    reader would take them for settings of the run); loading fills them back with defaults."""
    data = OmegaConf.to_container(cfg)
    for key in unread_keys(cfg.agent):
        *parents, leaf = key.split(".")
        node = data
        for name in parents:
            node = node[name]
        node.pop(leaf, None)
    return OmegaConf.to_yaml(OmegaConf.create(data))


def save_config(cfg: DictConfig, path: Path) -> None:
    from reverie.run.checkpoint import atomic_write_bytes

    atomic_write_bytes(Path(path), config_yaml(cfg).encode())


def load_run_config(run_dir: Path) -> DictConfig:
    """A run's config.yaml, type-checked and validated exactly as a new config is."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise UserError(f"no run at '{run_dir}' (missing config.yaml); check the path")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); restore it") from None
    return parse_run_config(text, str(path))


def checked_config(cfg: Any) -> DictConfig:
    """A config handed to the library (`Trainer(cfg, out)`), possibly edited after
    `build_config` (`cfg.run.eval_every = 0`), checked as its saved config.yaml will be when
    the run is resumed, evaluated or reported: a setting the command line refuses is
    refused here too, before the run folder holds anything."""
    if not isinstance(cfg, DictConfig):
        raise UserError(f"a config from reverie.config.build_config (or load_run_config) is "
                        f"needed, got {type(cfg).__name__}")
    return parse_run_config(config_yaml(cfg), "the config")


def parse_run_config(text: str, where: str) -> DictConfig:
    """Parse a saved config (a run's config.yaml, or the copy inside a checkpoint)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{where} is not valid YAML{at}; fix that line by hand (the "
                        "checkpoints and replay are untouched)") from None
    if not isinstance(data, dict):
        raise UserError(f"{where} is not a reverie config; point at a run folder")
    agent = data.get("agent")
    if not isinstance(agent, str):
        raise UserError(f"{where}: agent must be a name ({', '.join(AGENTS)}), got {agent!r}"
                        if agent is not None else
                        f"{where} is incomplete (no agent); restore it from a copy (its run's "
                        "checkpoints keep one, `config` in every checkpoint file)")
    # reverie writes every section: a file without one was cut (a copy that stopped short),
    # and the schema's defaults would fill it in silently
    missing = [k for k in ("env", "run", agent) if k not in data and agent in AGENTS]
    if missing:
        raise UserError(f"{where} is incomplete (no {', '.join(missing)}); restore it from a "
                        "copy (its run's checkpoints keep one, `config` in every checkpoint "
                        "file)")
    schema = _schema(agent)
    try:
        cfg = OmegaConf.merge(schema, data)
    except OmegaConfBaseException as e:
        raise UserError(f"{where}: {_friendly(e, schema)}") from None
    except (ValueError, TypeError) as e:
        raise UserError(f"{where}: bad config ({str(e).splitlines()[0]})") from None
    try:
        cfg = _resolve(cfg, schema)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return _validated(cfg, f"{where}: ")
