"""DeepMind Control Suite tasks as Gymnasium envs with proprioceptive (vector) observations."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from reverie.errors import UserError, suggest


class DMCEnv(gym.Env):
    """`dmc:<domain>-<task>` (e.g. walker-walk), action repeat 2 as in DreamerV3's DMC setup."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, name: str, action_repeat: int = 2, render_size: int = 64) -> None:
        # headless rendering for `reverie watch`: MuJoCo's default (GLFW) needs a display
        users = "MUJOCO_GL" in os.environ
        os.environ.setdefault("MUJOCO_GL", "egl")
        try:
            from dm_control import suite
        except (AttributeError, ImportError, OSError, RuntimeError) as e:
            # dm_control loads the MUJOCO_GL back-end as it is imported (osmesa without
            # libOSMesa: an AttributeError deep inside PyOpenGL; a misspelt value: RuntimeError)
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            gl = os.environ.get("MUJOCO_GL")
            raise UserError(
                f"dm_control cannot start with MUJOCO_GL={gl} ({why}); unset MUJOCO_GL "
                "(reverie then uses egl), or set one that this machine has: egl, or osmesa "
                "where libOSMesa is installed" if users else
                f"dm_control cannot start ({why}) with MUJOCO_GL={gl}, which reverie sets "
                "for headless rendering: set MUJOCO_GL=osmesa where libOSMesa is installed, "
                "or reinstall the dmc extra (pip install 'reverie[dmc]')") from None

        if "-" not in name:
            raise UserError(
                f"dmc env must be dmc:<domain>-<task> (e.g. dmc:walker-walk), got '{name}'"
            )
        domain, task = name.split("-", 1)
        domain = {"cup": "ball_in_cup"}.get(domain, domain)
        try:
            self._env = suite.load(domain, task, task_kwargs={"random": 0})
        except (ValueError, KeyError, AttributeError):
            names = [f"{d}-{t}" for d, t in suite.ALL_TASKS]
            valid = ", ".join(f"{d}-{t}" for d, t in suite.BENCHMARKING[:8])
            hint = suggest(f"dmc:{name}", [f"dmc:{n}" for n in names]) or (
                f"; e.g. {valid} (all: dm_control.suite.ALL_TASKS)")
            raise UserError(f"unknown DMC task '{name}'{hint}") from None
        self.action_repeat = action_repeat
        self.render_size = render_size
        spec = self._env.action_spec()
        self.action_space = spaces.Box(spec.minimum.astype(np.float32),
                                       spec.maximum.astype(np.float32), dtype=np.float32)
        size = sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values())
        self.observation_space = spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self.render_mode = "rgb_array"

    def _obs(self, time_step) -> np.ndarray:
        return np.concatenate(
            [np.asarray(v, np.float32).reshape(-1) for v in time_step.observation.values()]
        )

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)
        return self._obs(self._env.reset()), {}

    def step(self, action):
        reward = 0.0
        for _ in range(self.action_repeat):
            ts = self._env.step(action)
            reward += float(ts.reward or 0.0)
            if ts.last():
                break
        # DMC episodes end by time limit only: a truncation, never a termination
        return self._obs(ts), reward, False, ts.last(), {}

    def render(self):
        try:
            return self._env.physics.render(self.render_size, self.render_size, camera_id=0)
        except Exception as e:  # noqa: BLE001 - any OpenGL back-end failure reads the same
            raise UserError(
                f"cannot render DMC frames with MUJOCO_GL={os.environ.get('MUJOCO_GL')} "
                f"({type(e).__name__}); set MUJOCO_GL=egl, or osmesa where libOSMesa is installed"
            ) from None
