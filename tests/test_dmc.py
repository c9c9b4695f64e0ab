"""DeepMind Control tasks (`dmc:<domain>-<task>`): spaces, seeding, time limit, a short run
with the dmc-proprio preset (continuous actions), and watch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dm_control", reason="needs the dmc extra (make test installs it)")

from reverie.cli import main  # noqa: E402
from reverie.config import build_config  # noqa: E402
from reverie.envs import make_env  # noqa: E402
from reverie.errors import UserError  # noqa: E402
from reverie.run.driver import Trainer  # noqa: E402
from tiny import TINY_MODEL  # noqa: E402

TINY = [*TINY_MODEL, "imagine.world.backbone_kwargs={}", "run.train_ratio=16",
        "run.prefill=100", "run.checkpoint_every=100", "run.eval_every=600",
        "run.eval_episodes=1", "run.progress=false", "run.threads=1"]


def test_spaces_seeding_and_time_limit():
    env = make_env("dmc:cartpole-swingup")
    assert env.action_space.shape == (1,)
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)
    assert env.observation_space["vector"].shape == (5,)  # position 3 + velocity 2
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    assert np.array_equal(a["vector"], b["vector"])
    assert not np.array_equal(a["vector"], c["vector"])
    steps, done = 0, False
    while not done:
        _, reward, term, trunc, _ = env.step(np.zeros(1, np.float32))
        assert not term and 0.0 <= reward <= 2.0  # action repeat 2 of rewards in [0, 1]
        steps, done = steps + 1, trunc
    assert steps == 500  # 1000 physics-control steps at action repeat 2, then truncation


def test_unknown_task_names_a_valid_one():
    with pytest.raises(UserError, match="unknown DMC task 'cartpole-flip'"):
        make_env("dmc:cartpole-flip")
    with pytest.raises(UserError, match="dmc:<domain>-<task>"):
        make_env("dmc:cartpole")
    with pytest.raises(UserError, match="did you mean 'dmc:walker-walk'"):
        make_env("dmc:walker-wlk")


def test_short_run_eval_and_watch(tmp_path, capsys):
    out = tmp_path / "dmc"
    cfg = build_config("dmc-proprio", TINY, {"env": "dmc:cartpole-swingup", "steps": 600,
                                              "backbone": "gru"})
    summary = Trainer(cfg, out).train()
    assert summary["env_steps"] == 600 and summary["grad_steps"] > 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("episode/return" in r for r in rows) and any("eval/return" in r for r in rows)
    assert main(["watch", str(out), "--steps", "10"]) == 0
    gif = Path(json.loads(capsys.readouterr().out)["gif"][0])
    assert gif.read_bytes()[:3] == b"GIF"


def test_dmc_small_is_the_cartpole_model_on_a_dmc_task():
    """`dmc-small` (base: cartpole) keeps the cartpole preset's model and cadence and takes the
    DMC run settings; a bundled preset's base chain resolves like a file's."""
    small = build_config("dmc-small", [], {})
    cart = build_config("cartpole", [], {})
    assert small.env.id == "dmc:cartpole-swingup" and small.run.steps == 20000
    assert (small.run.prefill, small.run.eval_every) == (1000, 2000)
    assert small.imagine == cart.imagine and small.run.train_ratio == cart.run.train_ratio


@pytest.mark.parametrize("backend", ["egll", "osmesa"])
def test_a_mujoco_gl_back_end_that_cannot_start_is_one_line(tmp_path, backend):
    """dm_control loads MUJOCO_GL's back-end as it is imported: a misspelt value, or osmesa
    on a machine without libOSMesa, ended every DMC command in a traceback (exit 1)."""
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "reverie", "train", "--preset", "dmc-proprio", "--env",
         "dmc:reacher-easy", "--steps", "10", "--no-progress", "--out", str(tmp_path / "r")],
        env={**os.environ, "MUJOCO_GL": backend}, capture_output=True, text=True, timeout=300)
    if proc.returncode == 0:
        pytest.skip(f"MUJOCO_GL={backend} starts on this machine")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert err[0].startswith(f"reverie: error: dm_control cannot start with MUJOCO_GL={backend}")
    assert "unset MUJOCO_GL" in err[0]
