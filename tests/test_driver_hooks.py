"""The driver, generically: several envs, truncation flags and final observations, an agent's
own update cadence and rollouts (`observe`), checkpoints at any step with exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reverie import config
from reverie.cli import main
from reverie.config import build_config
from reverie.envs import make_env
from reverie.errors import UserError
from reverie.replay import Replay
from reverie.run.collector import Collector, episode_seed
from reverie.run.driver import Trainer

RECORDER = ("recording_agent", "RecordingConfig", "RecordingAgent", None)
QUIET = ["run.progress=false", "run.eval_episodes=0", "run.prefill=0"]


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.setitem(config.AGENTS, "recorder", RECORDER)


def recorder_config(steps: int, num_envs: int, extra=()):
    return build_config(None, ["agent=recorder", f"run.num_envs={num_envs}",
                               "env.id=CartPole-v1", *QUIET, *extra], {"steps": steps})


def metrics(run: Path) -> str:
    return (run / "metrics.jsonl").read_text()


def test_vector_envs_hand_the_agent_every_transition(recorder, tmp_path):
    trainer = Trainer(recorder_config(240, 3, ["run.log_every=24"]), tmp_path / "run")
    trainer.train()
    ts = trainer.agent.transitions
    assert len(ts) == 80 and all(t.reward.shape == (3,) for t in ts)  # 240 steps / 3 envs
    assert trainer.count.grad_steps == 240 // 8  # the agent's own cadence
    # each env replays exactly the episodes its seeds say: rebuild env 1 by hand
    env = make_env("CartPole-v1")
    obs, _ = env.reset(seed=episode_seed(0, 1))  # env 1 starts the run's episode 1
    for t in ts:
        assert np.array_equal(t.obs["vector"][1], obs["vector"])
        obs, _, term, trunc, _ = env.step(t.action[1])
        assert np.array_equal(t.next_obs["vector"][1], obs["vector"])
        assert t.terminated[1] == term
        if term or trunc:
            break
    assert all(ts[0].first) and not any(ts[1].first)
    rows = [json.loads(x) for x in metrics(trainer.out).splitlines()]
    assert "replay_size" not in rows[0] and (trainer.out / "replay").exists() is False


def test_final_observation_and_truncation_reach_agent_and_replay(tmp_path):
    cfg = build_config("random", ["env.id=Pendulum-v1", *QUIET, "run.checkpoint_every=1000"],
                       {"steps": 400})
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.train()
    replay = Replay.open(tmp_path / "run" / "replay", int(cfg.replay.capacity),
                         {**trainer.obs_spec, "action": ((1,), "float32")})
    trunc, term, first = (np.asarray(replay.data[k][:400]) for k in
                          ("truncated", "terminal", "first"))
    assert np.flatnonzero(trunc).tolist() == [199, 399]  # Pendulum's 200-step time limit
    assert not term.any() and np.flatnonzero(first).tolist() == [0, 200]


def test_collector_gives_the_final_observation_not_the_reset_one():
    envs = Collector("Pendulum-v1", 64, 2, seed=3)
    envs.start()
    for _ in range(199):
        envs.step(np.zeros((2, 1), np.float32))
    t, finished = envs.step(np.zeros((2, 1), np.float32))
    assert t.truncated.all() and not t.terminated.any() and len(finished) == 2
    assert envs.first.all()
    assert not np.array_equal(t.next_obs["vector"], envs.obs["vector"])  # reset obs differs
    ref = make_env("Pendulum-v1")
    ref.reset(seed=episode_seed(3, 1))
    for _ in range(200):
        final, *_ = ref.step(np.zeros(1, np.float32))
    assert np.array_equal(t.next_obs["vector"][1], final["vector"])


@pytest.mark.parametrize("num_envs", [1, 3])
def test_checkpoint_mid_episode_resumes_exactly(recorder, tmp_path, num_envs):
    extra = ["run.checkpoint_every=45", "run.log_every=30"]
    full = tmp_path / "full"
    Trainer(recorder_config(300, num_envs, extra), full).train()
    part = tmp_path / "part"
    Trainer(recorder_config(150, num_envs, extra), part).train()  # ends mid-episode
    cfg = config.load_run_config(part)
    cfg.run.steps = 300
    resumed = Trainer(cfg, part, resume=True)
    assert resumed.resumed_from == 150 and not resumed.envs.first.all()
    resumed.train()
    assert metrics(part) == metrics(full)


def test_replay_agents_refuse_several_envs(tmp_path):
    with pytest.raises(UserError, match="run.num_envs=1"):
        Trainer(build_config("random", ["run.num_envs=2", *QUIET], {"steps": 10}),
                tmp_path / "run")


def test_multidiscrete_actions_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "bs"
    assert main(["train", "--preset", "random", "--env", "popgym-BattleshipEasy-v0",
                 "--steps", "60", "--no-progress", "--set", "run.eval_episodes=0",
                 "--out", str(out)]) == 0
    action = np.load(out / "replay" / "action.npy")
    assert action.dtype == np.int64 and action.shape[1:] == (2,)


def test_bad_num_envs(tmp_path, capsys):
    assert main(["train", "--set", "run.num_envs=0", "--out", str(tmp_path / "r")]) == 2
    assert "run.num_envs" in capsys.readouterr().err
