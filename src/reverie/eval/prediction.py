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
Where little of the frame moves (Pong: the ball and the paddles), the baseline's error is
tiny; the same errors over only the elements that changed since the last observed frame
(`*_moving`, pooled over windows) show whether the model predicts the motion itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reverie.envs import image_keys, main_key
from reverie.errors import UserError

HORIZON = 16  # imagined steps per window unless told (also `reverie eval --horizon`)


@dataclass
class PredictionError:
    key: str  # the observation key scored
    context: int
    model: list[float]  # [horizon] mean squared error of the model at imagined step 1..H
    copy_last: list[float]  # [horizon] the same for "the last observed frame, repeated"
    windows: int  # windows averaged over
    # [horizon] the same over only the elements that differ from the last observed frame
    # (pooled over windows; None at a step where nothing changed in any window)
    model_moving: list[float | None] | None = None
    copy_last_moving: list[float | None] | None = None

    def as_dict(self) -> dict:
        return {"key": self.key, "context": self.context, "windows": self.windows,
                "model_mse": self.model, "copy_last_mse": self.copy_last,
                "model_mse_moving": self.model_moving,
                "copy_last_mse_moving": self.copy_last_moving,
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


def moving_errors(real: np.ndarray, predicted: np.ndarray,
                  context: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The squared errors of `window_errors` summed over only the elements of each imagined
    step that differ from the last observed one: (model [horizon], copy-last [horizon],
    number of such elements [horizon]), to be pooled over windows."""
    real = np.asarray(real, np.float64)
    predicted = np.asarray(predicted, np.float64)
    future = real[context:].reshape(len(real) - context, -1)
    last = real[context - 1].reshape(1, -1)
    moving = future != last
    model = np.where(moving, (predicted[context:].reshape(len(future), -1) - future) ** 2, 0.0)
    copy_last = np.where(moving, (last - future) ** 2, 0.0)
    return model.sum(1), copy_last.sum(1), moving.sum(1)


def _scaled(x: np.ndarray, image: bool) -> np.ndarray:
    return np.asarray(x, np.float64) / 255.0 if image else np.asarray(x, np.float64)


EPISODE_STEPS = 1000  # the longest greedy episode played for windows


def check_window(policy, context: int | None, horizon: int,
                 episode_steps: int = EPISODE_STEPS) -> None:
    """Refuse a window (context + horizon steps) longer than any episode can be: the env's
    time limit where it has one, and the episodes' cap `episode_steps`."""
    from reverie.envs.vector import env_of

    context = int(policy.cfg.imagine.context) if context is None else context
    env = env_of(policy.cfg)
    limit = getattr(env.spec, "max_episode_steps", None)  # spec None: no limit known
    env.close()
    longest = min(x for x in (limit, episode_steps) if x)
    if context + horizon > longest:
        raise UserError(f"a --prediction window of {context + horizon} steps (context "
                        f"{context} + horizon {horizon}) is longer than any episode here can "
                        f"be ({longest} steps); lower --horizon or --context")


def prediction_error(policy, windows: int = 16, context: int | None = None,
                     horizon: int = HORIZON, key: str | None = None, seed: int = 0,
                     episode_steps: int = EPISODE_STEPS,
                     per_episode: int = 4) -> PredictionError:
    """Open-loop prediction error of `policy`'s world model over `windows` windows of
    `context + horizon` steps: up to `per_episode` windows from each greedy episode (seeds
    seed, seed + 1, ...; at most `episode_steps` steps each), spread evenly over it.
    context: the run's `imagine.context` by default; key: `envs.main_key` by default (the
    image, else the env's own first observation key, not prev_reward). The model's samples
    are drawn from a generator seeded with `seed`, so a checkpoint scores the same every
    time."""
    import torch

    from reverie.eval.video import open_loop, rollout

    if not hasattr(policy.agent, "world"):
        raise UserError(f"agent '{policy.cfg.agent}' has no world model to score")
    images = image_keys(policy.obs_spec)
    key = key or main_key(policy.obs_spec)
    if key not in policy.obs_spec:
        raise UserError(f"observation key '{key}' is not one of {sorted(policy.obs_spec)}")
    context = int(policy.cfg.imagine.context) if context is None else context
    span, image = context + horizon, key in images
    model_sum, copy_sum, n = np.zeros(horizon), np.zeros(horizon), 0
    moving_model, moving_copy, moving_n = np.zeros(horizon), np.zeros(horizon), np.zeros(horizon)
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
                real, predicted = _scaled(real, image), _scaled(predicted, image)
                m, c = window_errors(real, predicted, context)
                model_sum += m
                copy_sum += c
                m, c, k = moving_errors(real, predicted, context)
                moving_model += m
                moving_copy += c
                moving_n += k
                n += 1
    if n == 0:
        raise UserError(f"no greedy episode lasted {span} steps (context {context} + horizon "
                        f"{horizon}); lower --horizon or --context")
    def pooled(sums: np.ndarray) -> list[float | None]:
        return [float(x / k) if k else None for x, k in zip(sums, moving_n)]

    return PredictionError(key=key, context=context, model=(model_sum / n).tolist(),
                           copy_last=(copy_sum / n).tolist(), windows=n,
                           model_moving=pooled(moving_model),
                           copy_last_moving=pooled(moving_copy))
