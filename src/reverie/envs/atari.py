"""The Atari100k protocol (Kaiser et al. 2020, as used by DreamerV3, STORM and Drama): frame
skip 4 with a max-pool over the last two frames, no sticky actions, up to 30 no-op starts,
64x64 RGB observations.
`info["life_loss"]` says that a step lost a life without ending the game (Drama and STORM
store such a step as terminal: `env.life_loss_terminal`)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image


class Atari100k(gym.Wrapper):
    """Wrap an ALE env created with frameskip=1 and repeat_action_probability=0."""

    def __init__(self, env: gym.Env, frame_skip: int = 4, noop_max: int = 30,
                 size: int = 64) -> None:
        super().__init__(env)
        self.frame_skip = frame_skip
        self.noop_max = noop_max
        self.size = size
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self._frames = np.zeros((2, *env.observation_space.shape), np.uint8)
        self._lives = 0

    def lives(self) -> int:
        return int(self.env.unwrapped.ale.lives())

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        # Box (area) filtering, like cv2.INTER_AREA used by DreamerV3/STORM.
        img = Image.fromarray(frame).resize((self.size, self.size), Image.Resampling.BOX)
        return np.array(img, np.uint8)  # writable (torch warns on read-only arrays)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        noops = (int(self.env.unwrapped.np_random.integers(1, self.noop_max + 1))
                 if self.noop_max > 0 else 0)
        for _ in range(noops):
            obs, _, term, trunc, info = self.env.step(0)
            if term or trunc:
                obs, info = self.env.reset()
        self._frames[:] = obs
        self._lives = self.lives()
        return self._resize(obs), {**info, "life_loss": False}

    def step(self, action):
        total = 0.0
        term = trunc = False
        info = {}
        for i in range(self.frame_skip):
            obs, reward, term, trunc, info = self.env.step(action)
            total += float(reward)
            if i >= self.frame_skip - 2:
                self._frames[i - (self.frame_skip - 2)] = obs
            if term or trunc:
                self._frames[:] = obs
                break
        # max over the last two frames removes Atari sprite flicker
        frame = self._frames.max(axis=0)
        lives = self.lives()
        info = {**info, "life_loss": bool(lives < self._lives and not term)}
        self._lives = lives
        return self._resize(frame), total, term, trunc, info
