"""The Atari100k preset end to end on CPU: a short Pong run, its GIFs, and what 100k steps cost.

Runs `reverie train --preset atari100k --env ALE/Pong-v5` for 1000 prefill steps plus a few
updates at full Drama scale (7.4M-parameter Mamba-2 world model, 1024 imagined rollouts),
then `reverie watch` (policy GIF and real-vs-imagined GIF), and writes
bench/results/atari_smoke.json with the measured seconds per update and the extrapolated
wall time of the full protocol (100k env steps at one update per env step).

    python bench/atari_smoke.py                    # ~5 min on 2 cores
    python bench/atari_smoke.py --from-run runs/atari-smoke   # summarise an existing run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def command(out: Path, updates: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "reverie", "train", "--preset", "atari100k",
            "--env", "ALE/Pong-v5", "--steps", str(1000 + updates), "--set", "run.prefill=1000",
            "--set", "run.eval_episodes=0", "--set", "run.log_every=4",
            "--set", f"run.threads={threads}", "--out", str(out), "--no-progress"]


def as_typed(cmd: list[str]) -> list[str]:
    """The command as a user types it in the repository: `reverie ...` instead of this
    interpreter's `python -m reverie`, paths inside the repository relative to it (the JSON
    is committed and must not carry this machine's paths)."""
    shown = ["reverie", *cmd[3:]] if cmd[1:3] == ["-m", "reverie"] else list(cmd)
    for i, arg in enumerate(shown):
        path = Path(arg)
        if path.is_absolute() and path.is_relative_to(ROOT):
            shown[i] = str(path.relative_to(ROOT))
    return shown


def summarise(run: Path, cmd: list[str] | None, watch_s: float | None) -> dict:
    rows = [json.loads(x) for x in (run / "timing.jsonl").read_text().splitlines()]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    grad = [r for r in metrics if "grad_steps" in r]
    first = next(r for r in rows if r["step"] >= 1000)
    last = rows[-1]
    steps = last["step"] - first["step"]
    per_update = (last["time/wall"] - first["time/wall"]) / max(steps, 1)
    full_hours = per_update * 100_000 / 3600
    gifs = sorted(p.name for p in run.glob("*.gif"))
    return {
        "benchmark": "atari_smoke",
        "command": None if cmd is None else as_typed(cmd),
        "env_steps": last["step"],
        "grad_steps": grad[-1]["grad_steps"] if grad else 0,
        "seconds_per_update": round(per_update, 2),
        "note": "seconds per update measured between the first and last logged step after "
                "the first update (excludes start-up); one update per env step as in the preset",
        "full_protocol_hours_extrapolated": round(full_hours, 1),
        "full_protocol_days_extrapolated": round(full_hours / 24, 1),
        "gifs": gifs,
        "watch_seconds": None if watch_s is None else round(watch_s, 1),
        "wm_loss_last": grad[-1].get("wm/loss") if grad else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "runs" / "atari-smoke"))
    p.add_argument("--from-run", default=None, help="summarise this existing run instead")
    args = p.parse_args()
    if args.from_run:
        run, cmd, watch_s = Path(args.from_run), None, None
    else:
        run = Path(args.out)
        cmd = command(run, args.updates, args.threads)
        load0 = os.getloadavg()[0]
        subprocess.run(cmd, check=True)
        load1 = os.getloadavg()[0]
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "reverie", "watch", str(run), "--steps", "64"],
                       check=True)
        watch_s = time.time() - t0
    result = summarise(run, cmd, watch_s)
    if cmd is not None:
        result["torch_threads"] = args.threads
        result["loadavg_1min"] = [round(load0, 2), round(load1, 2)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "atari_smoke.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
