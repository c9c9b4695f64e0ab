"""`reverie watch RUN`: a GIF of the agent acting, and for image envs a GIF of real frames next
to the world model's open-loop imagination of them (same actions, no observations after the
context), the standard way to see what a world model has learned."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from reverie.envs import image_keys
from reverie.run.policy import Policy, load


def upscale(frame: np.ndarray, factor: int) -> np.ndarray:
    return frame.repeat(factor, axis=0).repeat(factor, axis=1)


def vector_frame(vec: np.ndarray, size: int = 64) -> np.ndarray:
    """A bar chart of a vector observation (for envs that cannot render)."""
    img = np.full((size, size, 3), 255, np.uint8)
    v = np.tanh(np.asarray(vec, np.float32).reshape(-1)[: size // 2])
    width = max(1, size // max(1, len(v)))
    for i, x in enumerate(v):
        h = int(abs(x) * (size // 2 - 1))
        lo, hi = (size // 2 - h, size // 2) if x > 0 else (size // 2, size // 2 + h)
        img[lo:hi, i * width : (i + 1) * width - 1] = (40, 90, 200) if x > 0 else (200, 60, 40)
    return img


def rollout(policy: Policy, steps: int, seed: int = 0):
    """Run the greedy policy for up to `steps` env steps of one episode."""
    env = policy.make_env(render=True)
    obs, _ = env.reset(seed=seed)
    frames, observations, actions, state = [], [obs], [], None
    for _ in range(steps):
        action, state = policy.act(obs, state)
        frames.append(_frame(env, obs))
        actions.append(action)
        obs, _, term, trunc, _ = env.step(action)
        if term or trunc:
            break
        observations.append(obs)
    return frames, observations[: len(actions)], actions


def _frame(env, obs) -> np.ndarray:
    if "image" in obs:
        return obs["image"]
    try:
        frame = env.render()
        if isinstance(frame, np.ndarray) and frame.ndim == 3:
            return frame
    except Exception:  # noqa: BLE001 - envs without a render mode: draw the vector instead
        pass
    return vector_frame(next(iter(obs.values())))


@torch.no_grad()
def imagined_frames(policy: Policy, observations, actions, context: int = 8) -> np.ndarray:
    """Open-loop imagination: observe `context` real frames, then predict the rest from
    the recorded actions alone. Returns uint8 [T, H, W, 3] (the first `context` frames are
    reconstructions)."""
    world = policy.agent.world
    device = next(world.parameters()).device
    obs = {k: torch.as_tensor(np.stack([o[k] for o in observations]))[None].to(device)
           for k in observations[0]}
    act = torch.as_tensor(np.stack(actions))[None].to(device)
    T = act.shape[1]
    ctx = min(context, T)
    z, h, state = world.observe({k: v[:, :ctx] for k, v in obs.items()}, act[:, :ctx], None)
    images = [world.decode(z[0])["image"]]
    h_last = h[:, -1]
    for t in range(ctx, T):
        z_t = world.sample(world.prior(h_last))
        images.append(world.decode(z_t)["image"])
        h_last, state = world.imagine_step(z_t, act[:, t], state)
    out = torch.cat(images, 0)[:T]
    return (out.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def watch(run: str | Path, steps: int = 300, out: str | Path | None = None,
          fps: int = 15) -> list[Path]:
    policy = load(run)
    folder = Path(run) if Path(run).is_dir() else Path(run).parent.parent
    gif = Path(out) if out else folder / "watch.gif"
    frames, observations, actions = rollout(policy, steps)
    factor = max(1, 256 // max(frames[0].shape[0], 1))
    # imageio's pillow GIF writer takes the frame duration in milliseconds
    imageio.mimsave(gif, [upscale(f, factor) if factor > 1 else f for f in frames],
                    duration=1000 / fps, loop=0)
    written = [gif]
    if "image" in image_keys(policy.obs_spec) and hasattr(policy.agent, "world"):
        imagined = imagined_frames(policy, observations, actions)
        real = np.stack([o["image"] for o in observations])
        gap = np.full((real.shape[1], 2, 3), 255, np.uint8)
        pairs = [upscale(np.concatenate([r, gap, m], axis=1), 4) for r, m in zip(real, imagined)]
        side = gif.with_name(gif.stem + "-real-vs-imagined.gif")
        imageio.mimsave(side, pairs, duration=1000 / fps, loop=0)
        written.append(side)
    return written
