"""`reverie watch RUN`: a GIF of the agent acting (the env's real frames), and the world
model's open-loop imagination next to the real episode (same actions, no observations after
the context) — a GIF for image envs, a plot per dimension for vector envs: the standard way
to see what a world model has learned."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from reverie.envs import image_keys, main_key
from reverie.errors import UserError
from reverie.run.folder import check_out_parent
from reverie.run.policy import Policy, load


def upscale(frame: np.ndarray, factor: int) -> np.ndarray:
    return frame.repeat(factor, axis=0).repeat(factor, axis=1)


class CannotRender(Exception):
    """The env has no frames to show (no rgb_array render mode, or its renderer failed)."""


def rollout(policy: Policy, steps: int, seed: int = 0, render: bool = True):
    """Run the greedy policy for up to `steps` env steps of one episode.

    Returns (frames or None, observations, actions, note): frames is None when the env
    cannot render (note says why) or when `render` is False; else one frame per action, and
    the state after the last one (the pole down, the game over) as the film's last frame."""
    env = policy.make_env(render=render)
    obs, _ = env.reset(seed=seed)
    frames: list[np.ndarray] | None = [] if render else None
    note = None if render else "not asked to render"
    observations, actions, state = [obs], [], None
    for _ in range(steps):
        action, state = policy.act(obs, state)
        if frames is not None:
            try:
                frames.append(_frame(env, obs))
            except CannotRender as e:
                frames, note = None, str(e)
        actions.append(action)
        obs, _, term, trunc, _ = env.step(action)
        if term or trunc:
            break
        observations.append(obs)
    if frames:
        try:
            frames.append(_frame(env, obs))
        except CannotRender:  # rendered before, not after the end: the film stops a frame early
            pass
    return frames, observations[: len(actions)], actions, note


def _frame(env, obs) -> np.ndarray:
    if "image" in obs:
        return obs["image"]
    if getattr(env.unwrapped, "render_mode", None) != "rgb_array" and \
            getattr(env, "render_mode", None) != "rgb_array":
        raise CannotRender("it has no rgb_array render mode")
    try:
        frame = env.render()
    except UserError as e:  # reverie's own envs say what to install or set
        raise CannotRender(str(e)) from None
    except Exception as e:  # noqa: BLE001 - a renderer that fails: say why, draw nothing
        first = str(e).splitlines()[0] if str(e) else ""
        raise CannotRender(f"its renderer failed ({type(e).__name__}: {first})") from None
    if not (isinstance(frame, np.ndarray) and frame.ndim == 3):
        raise CannotRender("its render() returned no RGB frame")
    if frame.dtype.kind == "f":  # colours in [0, 1] (MinAtar's)
        frame = (np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8)
    return frame


@torch.no_grad()
def open_loop(policy: Policy, observations, actions, context: int = 8,
              horizon: int | None = None) -> dict[str, np.ndarray]:
    """The world model's open-loop imagination of an episode: observe the first `context`
    steps, then predict `horizon` more (all the rest if None) from the recorded actions
    alone. Returns per observation key [T, ...]: images uint8 (the first `context` frames
    are reconstructions), vectors in observation units (the first `context` rows are
    reconstructions)."""
    world = policy.agent.world
    device = next(world.parameters()).device
    obs = {k: torch.as_tensor(np.stack([o[k] for o in observations]))[None].to(device)
           for k in observations[0]}
    act = torch.as_tensor(np.stack(actions))[None].to(device)
    T = act.shape[1] if horizon is None else min(act.shape[1], context + horizon)
    ctx = min(context, T)
    z, h, state = world.observe({k: v[:, :ctx] for k, v in obs.items()}, act[:, :ctx], None)
    decoded = [world.decode(z[0])]
    h_last = h[:, -1]
    for t in range(ctx, T):
        z_t = world.sample(world.prior(h_last))
        decoded.append(world.decode(z_t))
        h_last, state = world.imagine_step(z_t, act[:, t], state)
    out = {}
    for k in decoded[0]:
        v = torch.cat([d[k] for d in decoded], 0)[:T]
        out[k] = ((v.clamp(0, 1) * 255).round().to(torch.uint8) if k in image_keys(
            policy.obs_spec) else v.float()).cpu().numpy()
    return out


CAPTION_PX = 14  # the caption strip above a real-vs-imagined frame


def captioned(pair: np.ndarray, t: int, context: int) -> np.ndarray:
    """A real | model frame pair with a strip above it saying which is which and whether
    step `t` was observed by the model (its frame a reconstruction) or imagined from actions
    alone (and how far ahead): without it the two halves and the switch read alike."""
    from PIL import Image, ImageDraw

    width = pair.shape[1]
    strip = Image.new("RGB", (width, CAPTION_PX), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    # the longest caption that fits its half (small frames, env.image_size=32, cut it)
    fits = [f"reconstructed (observed, t={t})", f"observed t={t}"] if t < context else \
        [f"imagined (t={t}, {t - context + 1} ahead)", f"imagined t={t} (+{t - context + 1})"]
    model = next((c for c in fits if draw.textlength(c) + 6 <= width - width // 2), fits[-1])
    draw.text((3, 1), "real", fill=(0, 0, 0))
    # imagined frames in red, so the switch from observing to imagining is seen at a glance
    draw.text((width // 2 + 3, 1), model, fill=(0, 0, 0) if t < context else (200, 0, 0))
    return np.concatenate([np.asarray(strip), pair], axis=0)


def shown_dims(real: np.ndarray, max_dims: int) -> np.ndarray:
    """Which of real's [T, D] dimensions get a panel: all up to `max_dims`; beyond that
    (MinAtar's 400 flattened cells) the `max_dims` that vary most over the episode, in their
    order, and none that does not vary, since a panel of a cell that stays 0 shows nothing."""
    if real.shape[1] <= max_dims:
        return np.arange(real.shape[1])
    # cells that never change are left out even when fewer than max_dims change (at least one
    # panel is drawn); "change" is exact, since a constant's std is not always 0 in floats
    moves = (real != real[:1]).any(0)
    spread = np.where(moves, real.std(0), -1.0)
    top = np.argsort(-spread, kind="stable")[:max(1, min(max_dims, int(moves.sum())))]
    return np.sort(top)


def vector_plot(real: np.ndarray, imagined: np.ndarray, context: int, path: Path,
                title: str, max_dims: int = 16) -> Path:
    """One panel per observation dimension: the real episode and the world model's open-loop
    prediction of it (same actions), with the end of the observed context marked."""
    from reverie.eval.plots import _plt

    plt = _plt()
    real = real.reshape(len(real), -1)
    imagined = imagined.reshape(len(imagined), -1)
    shown = shown_dims(real[: len(imagined)], max_dims)
    dims = len(shown)
    cols = min(4, dims)
    rows = -(-dims // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False)
    steps = np.arange(len(imagined))
    observed = min(context, len(steps))  # the model's context, or all of a shorter episode
    model = "imagined" if len(imagined) > context else "reconstructed"
    for i, ax in enumerate(axes.flat):
        if i >= dims:
            ax.axis("off")
            continue
        d = shown[i]
        ax.plot(steps, real[: len(steps), d], color="k", lw=1.4, label="real")
        ax.plot(steps, imagined[:, d], color="C1", ls="--", lw=1.4, label=model)
        ax.axvline(observed - 0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(f"dim {d}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    more = (f" ({dims} of {real.shape[1]} dims: those that vary most in the real episode)"
            if real.shape[1] > dims else "")
    if len(imagined) > context:
        what = "open-loop imagined observations"
    else:  # all of it within the context (an episode that short, or --steps): reconstructions
        what = (f"reconstructed observations (all {len(imagined)} steps are within the "
                f"model's {context} observed steps: nothing imagined)")
    # wrapped to the figure's width (under 6.6 px a character at 9 pt and 100 dpi): a long one
    # (MinAtar's dims note) was cut at both edges
    text = f"{title}: real vs {what}{more}; dotted line: end of the observed context"
    fig.suptitle(textwrap.fill(text, width=int(3.2 * cols * 100 / 6.6)), fontsize=9)
    fig.supxlabel("env step", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _folder_of(checkpoint: Path) -> Path:
    """Where the GIFs of a checkpoint file go: its run folder for one inside the run's
    checkpoints/, else the file's own folder (a checkpoint copied out of its run)."""
    from reverie.eval.runs import is_run_folder

    parent = checkpoint.parent
    if parent.name == "checkpoints" and is_run_folder(parent.parent):
        return parent.parent
    return parent


def watch(run: str | Path, steps: int = 300, out: str | Path | None = None,
          fps: int = 15, notes: list[str] | None = None, best: bool = False,
          seed: int = 0) -> list[Path]:
    """Write what there is to see of a run: a GIF of the agent acting in its env (real
    frames) for up to `steps` env steps of the episode of `seed`, and for a world-model agent
    its open-loop imagination beside the real episode (a GIF for images, a plot per
    dimension for vectors). Reasons for anything not written are appended to `notes`.
    `best`: the run's agent of its best evaluation (`load`)."""
    if out is not None:  # checked before the episode is played: a mistake costs nothing
        out = Path(out)
        if out.suffix.lower() != ".gif" or out.is_dir():
            raise UserError(f"--out must be a .gif file path, got '{out}' (the plots and the "
                            "real-vs-imagined GIF are written beside it)")
        check_out_parent(out)
    policy = load(run, best=best)
    notes = [] if notes is None else notes
    folder = Path(run) if Path(run).is_dir() else _folder_of(Path(run))
    # a checkpoint file's GIF is named after it, not over the run's own watch.gif
    name = (f"watch-{Path(run).stem}.gif" if Path(run).is_file() else
            "watch-best.gif" if best else "watch.gif")
    gif = out or folder / name
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame draws off-screen
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    frames, observations, actions, note = rollout(policy, steps, seed=seed)
    written = []
    if frames:
        factor = max(1, 256 // max(frames[0].shape[0], 1))
        # imageio's pillow GIF writer takes the frame duration in milliseconds
        imageio.mimsave(gif, [upscale(f, factor) if factor > 1 else f for f in frames],
                        duration=1000 / fps, loop=0)
        written.append(gif)
    else:
        notes.append(f"{policy.env_id} cannot render frames: {note}; no {gif.name} written")
    if not hasattr(policy.agent, "world"):
        notes.append(f"agent {policy.cfg.agent} has no latent world model: no real-vs-imagined "
                     "view (that is the imagine agent's)")
        return written
    context = int(policy.cfg.imagine.context)
    horizon = int(policy.cfg.imagine.horizon)
    has_image = "image" in image_keys(policy.obs_spec)
    # one open-loop pass: the whole episode for an image GIF (its vectors, if any, are
    # plotted over its first context + horizon steps), else context + horizon steps
    predicted = open_loop(policy, observations, actions, context,
                          None if has_image else horizon)
    if has_image:
        imagined = predicted["image"]
        real = np.stack([o["image"] for o in observations])
        gap = np.full((real.shape[1], 2, 3), 255, np.uint8)
        pairs = [captioned(upscale(np.concatenate([r, gap, m], axis=1), 4), t, context)
                 for t, (r, m) in enumerate(zip(real, imagined))]
        side = gif.with_name(gif.stem + "-real-vs-imagined.gif")
        imageio.mimsave(side, pairs, duration=1000 / fps, loop=0)
        written.append(side)
    vectors = [k for k in policy.obs_spec if k not in image_keys(policy.obs_spec)]
    if vectors and len(observations) <= context:
        if len(actions) >= steps:
            notes.append(f"--steps {steps} is within the world model's {context} observed "
                         "steps: its plot shows nothing imagined (--steps above "
                         f"{context + horizon} shows it all)")
        else:
            notes.append(f"the episode ended after {len(observations)} steps, within the world "
                         f"model's {context} observed steps: its plot shows nothing imagined "
                         "(another --seed films another episode)")
    for key in vectors:
        real = np.stack([np.asarray(o[key], np.float32) for o in observations])
        plain = len(vectors) == 1 or key == main_key(policy.obs_spec)
        name = f"{gif.stem}-real-vs-imagined" + ("" if plain else f"-{key}")
        written.append(vector_plot(real, predicted[key][:context + horizon], context,
                                   gif.with_name(name + ".png"), policy.env_id))
    return written
