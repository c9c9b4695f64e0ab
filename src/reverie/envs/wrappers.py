"""Observation conventions: every env is seen as a dict of uint8 images and float32 vectors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ObsSpec = dict[str, tuple[tuple[int, ...], str]]


def _is_image(space: spaces.Space) -> bool:
    return (
        isinstance(space, spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and space.shape[-1] in (1, 3)
    )


def resize_nearest(image: np.ndarray, size: int) -> np.ndarray:
    """[H, W, C] -> [size, size, C] by nearest-neighbour index sampling (no extra deps)."""
    h, w = image.shape[:2]
    if h == size and w == size:
        return image
    rows = (np.arange(size) * h // size).astype(np.int64)
    cols = (np.arange(size) * w // size).astype(np.int64)
    return image[rows][:, cols]


class DictObservation(gym.ObservationWrapper):
    """Map any supported observation space to {key: uint8 image | float32 vector}."""

    def __init__(self, env: gym.Env, image_size: int = 64) -> None:
        super().__init__(env)
        self.image_size = image_size
        src = env.observation_space
        parts = dict(src.spaces) if isinstance(src, spaces.Dict) else {None: src}
        self._parts: dict[str, tuple[str | None, spaces.Space, bool]] = {}
        out = {}
        for name, space in parts.items():
            image = _is_image(space)
            key = name if name is not None else ("image" if image else "vector")
            if image:
                c = space.shape[-1]
                out[key] = spaces.Box(0, 255, (image_size, image_size, 3 if c == 3 else c),
                                      np.uint8)
            else:
                # Discrete and MultiDiscrete become one-hot blocks, Tuple/Dict parts are
                # concatenated: the encoding POPGym's baselines (RLlib) feed their models
                try:
                    flat = spaces.flatten_space(space)
                except NotImplementedError:
                    flat = None
                if not isinstance(flat, spaces.Box):  # Graph, Sequence: variable size
                    from reverie.errors import UserError

                    raise UserError(
                        f"observation space {space} is not supported; wrap the env so it "
                        "returns Box, Discrete, MultiDiscrete, MultiBinary, Tuple or Dict "
                        "observations"
                    ) from None
                out[key] = spaces.Box(-np.inf, np.inf, (int(flat.shape[0]),), np.float32)
            self._parts[key] = (name, space, image)
        self.observation_space = spaces.Dict(out)

    def observation(self, observation):
        result = {}
        for key, (name, space, image) in self._parts.items():
            value = observation if name is None else observation[name]
            if image:
                result[key] = resize_nearest(np.asarray(value, np.uint8), self.image_size)
            else:
                result[key] = np.asarray(spaces.flatten(space, value), np.float32)
        return result


class PreviousReward(gym.Wrapper):
    """Adds the previous step's reward to the observation as `prev_reward` [1] (0 at an
    episode start), so a memory agent can condition on rewards (POPGym's previous-reward
    input) — the same for training, evaluation and `reverie.load(...).act`."""

    KEY = "prev_reward"

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        if self.KEY in env.observation_space.spaces:
            from reverie.errors import UserError

            raise UserError(f"the env already observes '{self.KEY}'; set env.prev_reward=false")
        self.observation_space = spaces.Dict({
            **env.observation_space.spaces,
            self.KEY: spaces.Box(-np.inf, np.inf, (1,), np.float32)})

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return {**obs, self.KEY: np.zeros(1, np.float32)}, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs = {**obs, self.KEY: np.array([reward], np.float32)}
        return obs, reward, terminated, truncated, info


def image_keys(spec: ObsSpec) -> list[str]:
    """The image observations of a spec made by `make_obs_spec` (uint8 [H, W, C])."""
    return [k for k, (shape, dtype) in spec.items() if len(shape) == 3 and dtype == "uint8"]


def main_key(spec: ObsSpec) -> str:
    """The observation a user means by "the observation" (scored by `reverie eval
    --prediction`, plotted under the plain name by `reverie watch`): the image where there
    is one, else the first key that is not an input reverie adds (`prev_reward`)."""
    if "image" in image_keys(spec):
        return "image"
    own = [k for k in spec if k != PreviousReward.KEY]
    return (own or list(spec))[0]


def make_obs_spec(space: spaces.Dict) -> ObsSpec:
    """key -> (shape, dtype name) for replay and the world model's encoders."""
    return {k: (tuple(int(s) for s in v.shape), np.dtype(v.dtype).name)
            for k, v in space.spaces.items()}


def vector_width(spec: ObsSpec, agent: str) -> int:
    """The summed width of a spec's observations when all are 1-D vectors (what a
    state-based agent such as mbpo or rppo flattens them to); ValueError naming the fix."""
    for key, (shape, _) in spec.items():
        if len(shape) != 1:
            what = "images" if key in image_keys(spec) else f"'{key}' of shape {tuple(shape)}"
            raise ValueError(f"{agent} takes 1-D vector observations, but the env gives {what}; "
                             "use a state-based env, flatten them with a Gymnasium "
                             "wrapper, or use the imagine agent (it learns from images)")
    return sum(int(shape[0]) for shape, _ in spec.values())
