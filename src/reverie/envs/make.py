"""`make_env(spec)`: every environment reverie trains on, behind one observation convention.

Observations are dicts of arrays: image keys hold uint8 [64, 64, 3], vector keys float32 [D]
(a plain Box env gives {"vector": ...}, an image env {"image": ...}; Discrete, MultiDiscrete
and Tuple observations are flattened to one-hot / concatenated vectors, as POPGym's
baselines do). Actions are Discrete (int), 1-D MultiDiscrete (an int64 vector, one entry
per component; POPGym's Battleship and MineSweeper) or a 1-D Box rescaled to [-1, 1].
Spec strings:

    CartPole-v1                 any Gymnasium id
    ALE/Pong-v5                 Atari with the Atari100k protocol (see envs/atari.py)
    dmc:walker-walk             DeepMind Control, proprioceptive
    minatar:breakout            MinAtar (10x10xC binary planes, flattened)
    popgym-RepeatPreviousEasy-v0  POPGym: popgym-<Name><Easy|Medium|Hard>-v0 (`popgym_ids()`)
"""

from __future__ import annotations

import importlib
import os
import warnings

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from reverie.envs.wrappers import DictObservation, PreviousReward, make_obs_spec
from reverie.errors import UserError, suggest

MINATAR_GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
POPGYM_DIFFICULTIES = ("Easy", "Medium", "Hard")
# POPGym registers these two only when the optional `mazelib` package is installed
POPGYM_MAZES = ("LabyrinthEscape", "LabyrinthExplore")


def _require(module: str, extra: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"this environment needs the '{extra}' extra: pip install 'reverie[{extra}]'"
        ) from None


def _make_atari(env_id: str, max_episode_frames: int = 108_000, noop_max: int = 30) -> gym.Env:
    _require("ale_py", "atari")
    import ale_py

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner on stderr
    gym.register_envs(ale_py)
    # Atari100k protocol: frame skip 4 with a max-pool of the last two frames, no sticky
    # actions, up to 30 no-op starts, 64x64 RGB, minimal action set.
    env = gym.make(
        env_id,
        frameskip=1,
        repeat_action_probability=0.0,
        full_action_space=False,
        max_num_frames_per_episode=max_episode_frames,
    )
    from reverie.envs.atari import Atari100k

    return Atari100k(env, noop_max=noop_max)


def _make_minatar(game: str, render: bool = False) -> gym.Env:
    _require("minatar", "minatar")
    if game not in MINATAR_GAMES:
        raise UserError(
            f"unknown MinAtar game '{game}'{suggest(game, MINATAR_GAMES)}; "
            f"choose one of: {', '.join(MINATAR_GAMES)}"
        )
    import logging

    root = logging.getLogger()  # minatar.gym logs a warning where seaborn cannot be imported
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        from minatar.gym import BaseEnv
    finally:
        root.setLevel(level)  # the user's logging as it was

    # MinAtar draws its frames itself (rgb_array: the 10x10 grid, a colour per object channel)
    env = BaseEnv(game, render_mode="rgb_array" if render else None,
                  use_minimal_action_set=True)
    return gym.wrappers.TimeLimit(FreshStickyAction(env), max_episode_steps=10_000)


class FreshStickyAction(gym.Wrapper):
    """MinAtar's sticky actions (p = 0.1) repeat the previous action, and its `reset` keeps the
    previous episode's last one: the start of an episode depended on the episode before, so an
    env rebuilt from the episode's seed and actions (a resume) went another way. Every episode
    starts as a fresh env's first one does (previous action 0)."""

    def reset(self, **kwargs):
        self.env.unwrapped.game.last_action = 0
        return self.env.reset(**kwargs)


def _make_dmc(name: str) -> gym.Env:
    _require("dm_control", "dmc")
    from reverie.envs.dmc import DMCEnv

    return DMCEnv(name)


def popgym_ids() -> list[str]:
    """Every registered `popgym-<Name><Easy|Medium|Hard>-v0` id (needs the popgym extra)."""
    _require("popgym", "popgym")
    import popgym  # noqa: F401  (registers the popgym-* ids)

    return sorted(k for k in gym.registry
                  if k.startswith("popgym-") and k[:-3].endswith(POPGYM_DIFFICULTIES))


def _check_popgym_id(env_id: str) -> None:
    ids = popgym_ids()
    if env_id in ids:
        return
    if any(env_id.startswith(f"popgym-{maze}") for maze in POPGYM_MAZES):
        raise UserError(f"'{env_id}' needs the mazelib package, which popgym leaves optional: "
                        "pip install mazelib")
    names = sorted({i[len("popgym-"):-3].removesuffix(d) for i in ids
                    for d in POPGYM_DIFFICULTIES if i[:-3].endswith(d)})
    raise UserError(
        f"unknown POPGym environment '{env_id}'{suggest(env_id, ids)}; use "
        f"popgym-<Name><Easy|Medium|Hard>-v0 with Name one of: {', '.join(names)}"
    )


def _entry_point(env_id: str):
    """A registered env's entry point ("module:Class" or a callable); None for an unknown
    id (gym.make reports those)."""
    try:
        return gym.spec(env_id).entry_point
    except Exception:  # noqa: BLE001 - unknown ids get their own error from gym.make
        return None


def _renders(env_id: str) -> bool:
    """Whether a registered env declares rgb_array rendering (POPGym's envs take no
    `render_mode` at all and fail when given one)."""
    entry = _entry_point(env_id)
    if entry is None:
        return True
    try:
        creator = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) \
            else entry
    except Exception:  # noqa: BLE001 - an unloadable module is reported by gym.make below
        return True
    return "rgb_array" in getattr(creator, "metadata", {}).get("render_modes", [])


def _extra_of(env_id: str) -> str | None:
    """reverie's extra that installs what a registered Gymnasium env needs, if it has one."""
    return "mujoco" if ".mujoco" in str(_entry_point(env_id)) else None


def _make_gym(env_id: str, render: bool = False, noop_max: int = 30) -> gym.Env:
    if env_id.startswith("popgym-"):
        _check_popgym_id(env_id)
    # Gymnasium warns before it refuses an id (ALE/Breakout-v4: "out of date ..." and then
    # DeprecatedEnv): its warnings are shown only for an env it makes, so that a refusal is
    # reverie's one line
    with warnings.catch_warnings(record=True) as caught:
        env = _make_registered(env_id, render, noop_max)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return env


def _make_registered(env_id: str, render: bool, noop_max: int) -> gym.Env:
    try:
        if env_id.startswith("ALE/") or env_id.endswith("NoFrameskip-v4"):
            return _make_atari(env_id, noop_max=noop_max)
        kwargs = {"render_mode": "rgb_array"} if render and _renders(env_id) else {}
        if render and _extra_of(env_id) == "mujoco":
            # headless rendering for `reverie watch`, as for DMC: MuJoCo's default (GLFW)
            # needs a display
            os.environ.setdefault("MUJOCO_GL", "egl")
        if env_id.startswith("popgym-"):
            # the passive checker warns that popgym's reset and step share one info dict
            kwargs["disable_env_checker"] = True
        return gym.make(env_id, **kwargs)
    except gym.error.DependencyNotInstalled as e:
        first = str(e).splitlines()[0].rstrip(".") if str(e) else type(e).__name__
        extra = _extra_of(env_id)
        fix = f"; pip install 'reverie[{extra}]'" if extra else ""
        raise UserError(f"env '{env_id}' needs a package that is not installed: {first}{fix}") \
            from None
    except gym.error.Error as e:
        ids = [k for k in gym.registry if not k.startswith("popgym-")]
        hint = suggest(env_id, ids)
        raise UserError(
            f"unknown environment '{env_id}'{hint}: use a Gymnasium id (e.g. CartPole-v1), "
            "ALE/<Game>-v5, dmc:<domain>-<task>, minatar:<game> or "
            f"popgym-<Name><Easy|Medium|Hard>-v0 "
            f"({type(e).__name__})"
        ) from None


def make_env(spec: str, image_size: int = 64, render: bool = False,
             noop_max: int = 30, prev_reward: bool = False) -> gym.Env:
    """Build the environment named by `spec` with dict observations and a checked action space.

    render=True asks Gymnasium envs for rgb_array frames (`env.render()`), for `reverie watch`.
    noop_max: Atari's random no-op starts, 1..noop_max (0: none, as Drama evaluates).
    prev_reward: add the previous reward to the observation (`PreviousReward`).
    """
    if not isinstance(spec, str) or not spec:
        raise UserError("env must be a non-empty string such as 'CartPole-v1'")
    if spec.startswith("minatar:"):
        env = _make_minatar(spec.split(":", 1)[1], render)
    elif spec.startswith("dmc:"):
        env = _make_dmc(spec.split(":", 1)[1])
    else:
        env = _make_gym(spec, render, noop_max)
    act = env.action_space
    if isinstance(act, spaces.Box):
        if act.shape is None or len(act.shape) != 1:
            raise UserError(f"env '{spec}' has a {act} action space; reverie supports 1-D Box")
        if not (np.all(np.isfinite(act.low)) and np.all(np.isfinite(act.high))):
            raise UserError(f"env '{spec}' has an unbounded Box action space; bound it first")
        if not (np.all(act.low == -1.0) and np.all(act.high == 1.0)):
            one = np.ones(act.shape, dtype=np.float32)
            env = gym.wrappers.RescaleAction(env, -one, one)
    elif isinstance(act, spaces.MultiDiscrete):
        if len(act.nvec.shape) != 1:
            raise UserError(f"env '{spec}' has a {act.nvec.ndim}-D MultiDiscrete action space; "
                            "reverie supports 1-D MultiDiscrete (flatten it with a wrapper)")
    elif not isinstance(act, spaces.Discrete):
        raise UserError(
            f"env '{spec}' has a {type(act).__name__} action space; reverie supports "
            "Discrete, 1-D MultiDiscrete and 1-D Box actions"
        )
    env = DictObservation(env, image_size=image_size)
    return PreviousReward(env) if prev_reward else env


__all__ = ["make_env", "make_obs_spec", "popgym_ids"]
