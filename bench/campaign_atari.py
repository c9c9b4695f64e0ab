"""Pixels: does the world model learn to predict Atari frames on this CPU? Its open-loop
prediction error over 16 imagined steps against copying the last observed frame, as it
trains (issue 13's campaign, part 3).

    python bench/campaign_atari.py                   # train in pieces, score after each
    python bench/campaign_atari.py --report-only     # JSON and plot from what was scored

One run of `reverie train --preset atari100k` on Pong with the overrides below (sized for
this CPU), created with its full budget
and continued with `reverie train --resume` after an interruption (bench/runlib.py: an
ordinary run folder under bench/runs/atari/, logs archived under bench/results/runs/atari/).
It keeps a checkpoint every `EVERY` env steps; each is scored with `reverie.eval.prediction`
(the same as `reverie eval --prediction`): windows of 8 observed + 16 imagined steps from
greedy episodes, mean squared error per pixel in [0, 1] at every imagined step, beside the
copy-the-last-frame baseline on the same windows, over all pixels and over the pixels that
moved since the last observed frame (on Pong only the ball and the paddles move, so the
baseline's all-pixel error is tiny). The finished run also writes `reverie
watch`'s real-vs-imagined GIF and a PNG strip of one window (real, imagined, difference),
committed under bench/results/atari/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import RUNS_ROOT, ensure_run, keep, progress, wall_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUN = RUNS_ROOT / "atari" / "pong-s0"
GAME = "ALE/Pong-v5"
STEPS = 20_000
EVERY = 2_500  # env steps between the checkpoints that are scored
WINDOWS = 16
# The atari100k preset (Drama's model: 16 x 128 sequences, d_model 512, one update per env
# step, lr 4e-5 for 100k updates) costs ~10 s per update here; this keeps its pixel pipeline,
# Mamba-2 world model and DFS replay at a size that trains in hours on 2 cores: 16 x 64
# sequences, d_model 256, one update every 4 env steps, a faster world-model learning rate
# for the shorter run, and a greedy evaluation every 5k steps.
OVERRIDES = ["imagine.seq_len=64", "imagine.world.d_model=256", "imagine.imag_batch=256",
             "run.train_ratio=256", "imagine.lr_world=1e-4", "imagine.warmup_steps=100",
             "run.eval_every=5000", "run.eval_episodes=3", f"run.checkpoint_every={EVERY}",
             f"run.keep_checkpoints={STEPS // EVERY + 1}", "run.log_every=500"]


def train_args(seed: int = 0) -> list[str]:
    args = ["--preset", "atari100k", "--env", GAME, "--seed", str(seed)]
    for item in OVERRIDES:
        args += ["--set", item]
    return args


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(env step, file) of the run's checkpoints after step 0."""
    from reverie.run.checkpoint import CheckpointStore

    store = CheckpointStore(run / "checkpoints")
    return [(e.step, run / "checkpoints" / e.file) for e in store.entries() if e.step > 0]


def score(checkpoint: Path, step: int) -> dict:
    """Prediction error of one checkpoint (module doc)."""
    from reverie.eval.prediction import prediction_error
    from reverie.run.policy import load

    t0 = time.time()
    # 4 windows from each of the first 400 steps of 4 greedy episodes (a full Pong episode
    # of act calls costs minutes on this CPU)
    err = prediction_error(load(checkpoint, device="cpu"), windows=WINDOWS, horizon=16, seed=0,
                           episode_steps=400)
    return {**err.as_dict(), "env_steps": step, "score_s": round(time.time() - t0, 1)}


def strip(run: Path, path: Path, context: int = 8, horizon: int = 16) -> None:
    """One window of a greedy episode: real frames, imagined frames, |difference|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reverie.eval.video import open_loop, rollout
    from reverie.run.policy import load

    policy = load(run, device="cpu")
    _, observations, actions, _ = rollout(policy, 200, seed=0)
    start = 64 if len(actions) >= 64 + context + horizon else 0
    obs = observations[start:start + context + horizon]
    act = actions[start:start + context + horizon]
    imagined = open_loop(policy, obs, act, context, horizon)["image"]
    real = np.stack([o["image"] for o in obs])
    shown = list(range(context - 2, context + horizon, 2))
    fig, axes = plt.subplots(3, len(shown), figsize=(1.3 * len(shown), 4.4))
    for j, t in enumerate(shown):
        diff = np.abs(real[t].astype(float) - imagined[t].astype(float)).mean(-1)
        for i, (img, cmap) in enumerate(((real[t], None), (imagined[t], None),
                                         (diff, "magma"))):
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=0, vmax=255 if cmap else None)
            ax.set_xticks([])
            ax.set_yticks([])
        k = t - context + 1
        axes[0, j].set_title("observed" if k <= 0 else f"+{k}", fontsize=8)
    for i, label in enumerate(("real", "imagined", "|difference|")):
        axes[i, 0].set_ylabel(label, fontsize=9)
    fig.suptitle(f"{GAME} at {progress(run):,} env steps: the world model observes "
                 f"{context} frames, then imagines {horizon} from the actions alone",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def as_curve(values: list[float | None]) -> np.ndarray:
    """Per-step errors with None (no pixel moved at that step) as NaN, a gap in the plot."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def plot(result: dict, path: Path) -> None:
    """Per imagined step, each scored checkpoint's error beside copy-the-last-frame's: over
    all pixels, and over the pixels that moved since the last observed frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    scored = result["scores"]
    cmap = plt.get_cmap("viridis")
    panels = (("model_mse", "copy_last_mse", "all pixels"),
              ("model_mse_moving", "copy_last_mse_moving",
               "pixels that moved since the last observed frame"))
    for ax, (model_key, copy_key, title) in zip(axes, panels):
        for i, s in enumerate(scored):
            if s.get(model_key) is None:  # scored before the moving-pixel metric existed
                continue
            values = as_curve(s[model_key])
            ax.plot(np.arange(1, len(values) + 1), values,
                    color=cmap(i / max(1, len(scored) - 1)), marker="o", ms=2,
                    label=f"world model at {s['env_steps']:,} env steps")
        if scored and scored[-1].get(copy_key) is not None:
            base = as_curve(scored[-1][copy_key])
            ax.plot(np.arange(1, len(base) + 1), base, "k--",
                    label="copy the last observed frame")
        ax.set_xlabel("imagined step (after 8 observed frames)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean squared error per pixel ([0, 1] units)")
    # below the panels: a dozen checkpoints' entries inside a panel covered its curves
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.035 * ((len(labels) + 3) // 4)))
    fig.suptitle(f"{GAME}: open-loop frame prediction, {WINDOWS} windows of greedy play",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    path = RESULTS / "campaign_atari.json"
    result = json.loads(path.read_text()) if path.exists() else {"scores": []}
    result.update({"benchmark": "campaign_atari", "game": GAME, "preset": "atari100k",
                   "overrides": OVERRIDES, "windows": WINDOWS, "threads": args.threads,
                   "target_steps": args.steps})
    done = {s["env_steps"] for s in result["scores"]}
    if not args.report_only:
        r = ensure_run(RUN, train_args(), args.steps, threads=args.threads)
        if r["status"] == "error":
            sys.exit(f"training failed: {r['error']}")
        here = (RUN / "checkpoints").exists()  # else finished in an earlier checkout
        for step, checkpoint in checkpoints(RUN) if here else []:
            if step not in done:
                scored = score(checkpoint, step)
                result["scores"] = sorted(result["scores"] + [scored],
                                          key=lambda s: s["env_steps"])
                done.add(step)
                path.write_text(json.dumps(result, indent=1) + "\n")
                print(json.dumps({k: v for k, v in scored.items() if "_mse" not in k}),
                      flush=True)
        if here and progress(RUN) >= args.steps:
            out = RESULTS / "atari"
            out.mkdir(parents=True, exist_ok=True)
            strip(RUN, out / "real-vs-imagined-frame.png")
            subprocess.run([sys.executable, "-m", "reverie", "watch", str(RUN), "--steps",
                            "96", "--out", str(RUN / "watch.gif")], check=True)
            shutil.copy2(RUN / "watch-real-vs-imagined.gif", out / "pong-real-vs-imagined.gif")
            keep(RUN)
    from reverie.eval.report import _n  # the report's plural
    from reverie.run.logger import read_jsonl
    from runlib import locate

    run = locate(RUN)
    if (run / "timing.jsonl").exists():
        result["wall_s"] = round(wall_seconds(read_jsonl(run / "timing.jsonl")), 1)
        result["evals"] = [[r["step"], r["eval/return"]] for r in
                           read_jsonl(run / "metrics.jsonl") if "eval/return" in r]
    if (run / "machine.jsonl").exists():  # what the run's processes ran with, not --threads
        used = sorted({r["threads"] for r in read_jsonl(run / "machine.jsonl")
                       if "threads" in r})
        result["threads"] = used[0] if len(used) == 1 else used
        result["threads_note"] = (
            " or ".join(_n(n, "torch thread") for n in used)
            + " (every training process, as the run's machine.jsonl records), with other "
            "work on the machine for part of it")
    path.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, RESULTS / "campaign_atari.png")
    print(json.dumps({k: v for k, v in result.items() if k != "scores"}, indent=1))


if __name__ == "__main__":
    main()
