"""How well a world model predicts what comes next: open-loop prediction error beside the
copy-the-last-frame baseline.

Windows of `context + horizon` steps are cut from real episodes (the run's greedy policy
acting). The model observes a window's first `context` steps, then predicts the next
`horizon` observations from the recorded actions alone (`video.open_loop`, as `reverie watch`
shows it). The error at imagined step k is the mean squared error per element between the
predicted and the real observation k steps after the context (images in [0, 1] pixel
units, vectors in observation units), averaged over windows. The baseline predicts every
future observation to be the last one observed: on slowly changing frames it is hard to
beat, and a model below it at every step has learned the dynamics, not just the background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reverie.envs import image_keys
from reverie.errors import UserError


@dataclass
class PredictionError:
    key: str  # the observation key scored
    context: int
    model: list[float]  # [horizon] mean squared error of the model at imagined step 1..H
    copy_last: list[float]  # [horizon] the same for "the last observed frame, repeated"
    windows: int  # windows averaged over

    def as_dict(self) -> dict:
        return {"key": self.key, "context": self.context, "windows": self.windows,
                "model_mse": self.model, "copy_last_mse": self.copy_last,
                "model_mse_mean": float(np.mean(self.model)),
                "copy_last_mse_mean": float(np.mean(self.copy_last)),
                "steps_model_better": int(sum(m < c for m, c in zip(self.model,
                                                                     self.copy_last)))}


def window_errors(real: np.ndarray, predicted: np.ndarray,
                  context: int) -> tuple[np.ndarray, np.ndarray]:
    """real, predicted: [context + horizon, ...] in the same units. Returns the model's and
    the copy-last baseline's mean squared error at each imagined step, each [horizon]."""
    real = np.asarray(real, np.float64)
    predicted = np.asarray(predicted, np.float64)
    if real.shape != predicted.shape or not 0 < context < len(real):
        raise ValueError(f"need equal shapes and 0 < context < T, got {real.shape}, "
                         f"{predicted.shape}, context {context}")
    future = real[context:].reshape(len(real) - context, -1)
    model = ((predicted[context:].reshape(len(future), -1) - future) ** 2).mean(1)
    copy_last = ((real[context - 1].reshape(1, -1) - future) ** 2).mean(1)
    return model, copy_last


def _scaled(x: np.ndarray, image: bool) -> np.ndarray:
    return np.asarray(x, np.float64) / 255.0 if image else np.asarray(x, np.float64)


def prediction_error(policy, windows: int = 16, context: int | None = None,
                     horizon: int = 16, key: str | None = None, seed: int = 0,
                     episode_steps: int = 1000, per_episode: int = 4) -> PredictionError:
    """Open-loop prediction error of `policy`'s world model over `windows` windows of
    `context + horizon` steps: up to `per_episode` windows from each greedy episode (seeds
    seed, seed + 1, ...; at most `episode_steps` steps each), spread evenly over it.
    context: the run's `imagine.context` by default; key: "image" if the env has images,
    else its first observation key. The model's samples are drawn from a generator seeded
    with `seed`, so a checkpoint scores the same every time."""
    import torch

    from reverie.eval.video import open_loop, rollout

    if not hasattr(policy.agent, "world"):
        raise UserError(f"agent '{policy.cfg.agent}' has no world model to score")
    images = image_keys(policy.obs_spec)
    key = key or ("image" if "image" in images else next(iter(policy.obs_spec)))
    if key not in policy.obs_spec:
        raise UserError(f"observation key '{key}' is not one of {sorted(policy.obs_spec)}")
    context = int(policy.cfg.imagine.context) if context is None else context
    span, image = context + horizon, key in images
    model_sum, copy_sum, n = np.zeros(horizon), np.zeros(horizon), 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for episode in range(4 * windows + 10):
            if n == windows:
                break
            _, observations, actions, _ = rollout(policy, episode_steps, seed=seed + episode,
                                                  render=False)
            fits = len(actions) // span
            take = min(per_episode, fits, windows - n)
            if take == 0:
                continue
            for start in np.linspace(0, len(actions) - span, take).round().astype(int):
                obs = observations[start:start + span]
                act = actions[start:start + span]
                predicted = open_loop(policy, obs, act, context, horizon)[key]
                real = np.stack([np.asarray(o[key]) for o in obs])
                m, c = window_errors(_scaled(real, image), _scaled(predicted, image), context)
                model_sum += m
                copy_sum += c
                n += 1
    if n == 0:
        raise UserError(f"no greedy episode lasted {span} steps (context {context} + horizon "
                        f"{horizon}); lower --prediction's horizon or the run's context")
    return PredictionError(key=key, context=context, model=(model_sum / n).tolist(),
                           copy_last=(copy_sum / n).tolist(), windows=n)
