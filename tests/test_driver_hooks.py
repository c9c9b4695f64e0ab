"""The driver, generically: several envs, truncation flags and final observations, an agent's
own update cadence and rollouts (`observe`), checkpoints at any step with exact resume."""

from __future__ import annotations

import json
from functools import partial
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
    replay = Replay.open(tmp_path / "run" / "replay", trainer.replay.capacity,
                         {**trainer.obs_spec, "action": ((1,), "float32")})
    trunc, term, first = (np.asarray(replay.data[k][:400]) for k in
                          ("truncated", "terminal", "first"))
    assert np.flatnonzero(trunc).tolist() == [199, 399]  # Pendulum's 200-step time limit
    assert not term.any() and np.flatnonzero(first).tolist() == [0, 200]


def test_collector_gives_the_final_observation_not_the_reset_one():
    envs = Collector(lambda: make_env("Pendulum-v1"), 2, 3, "Pendulum-v1")
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
    # both ended on one step: they start the run's episodes 2 and 3, in env order
    assert envs.episode.tolist() == [2, 3] and envs.started == 4
    for i in range(2):
        start, _ = ref.reset(seed=episode_seed(3, 2 + i))
        assert np.array_equal(envs.obs["vector"][i], start["vector"])


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
    assert metrics(part) == metrics(full)  # no evaluations (run.eval_episodes=0)


def same_transitions(a, b) -> bool:
    def same(x, y):
        return (all(np.array_equal(x[k], y[k]) for k in x) and x.keys() == y.keys()
                if isinstance(x, dict) else np.array_equal(x, y) and x.dtype == y.dtype)
    return len(a) == len(b) and all(same(x, y) for s, t in zip(a, b) for x, y in zip(s, t))


@pytest.mark.parametrize("first, then", [("sync", "async"), ("async", "sync")])
def test_async_vector_env_gives_the_sync_data_and_resumes_across_modes(recorder, tmp_path,
                                                                         first, then):
    extra = ["run.checkpoint_every=45", "run.log_every=30"]
    sync = Trainer(recorder_config(300, 2, extra), tmp_path / "sync")
    sync.train()
    part = tmp_path / "part"
    half = Trainer(recorder_config(150, 2, [*extra, f"run.vector={first}"]), part)
    half.train()  # ends mid-episode
    assert same_transitions(half.agent.transitions, sync.agent.transitions[:75])
    assert half.envs.venv.closed  # the run's end closed the envs (and async's workers)
    cfg = config.load_run_config(part)
    cfg.run.steps, cfg.run.vector = 300, then  # async: replayed inside the workers
    resumed = Trainer(cfg, part, resume=True)
    assert type(resumed.envs.venv).__name__ == {"sync": "SyncVectorEnv",
                                                "async": "AsyncVectorEnv"}[then]
    assert not resumed.envs.first.all()
    resumed.train()
    assert metrics(part) == metrics(sync.out)
    assert same_transitions(resumed.agent.transitions, sync.agent.transitions[-75:])


def test_async_life_loss_matches_sync_over_several_envs():
    def make():
        return make_env("ALE/Breakout-v5")

    sync = Collector(make, 2, 5, "ALE/Breakout-v5", life_loss_terminal=True)
    workers = Collector(make, 2, 5, "ALE/Breakout-v5", life_loss_terminal=True, vector="async")
    try:
        sync.start()
        workers.start()
        rng, lost = np.random.default_rng(0), 0
        for _ in range(300):
            action = rng.integers(0, 4, 2)
            (t, fs), (u, fw) = sync.step(action), workers.step(action)
            assert same_transitions([t], [u]) and fs == fw
            lost += int((t.terminated & ~sync.first).sum())  # terminal, and the episode goes on
        assert lost >= 1
    finally:
        sync.close()
        workers.close()


def test_a_failed_run_closes_its_envs_and_frees_the_folder(recorder, tmp_path, monkeypatch):
    from recording_agent import RecordingAgent

    def fail(self, replay):
        raise RuntimeError("boom")

    monkeypatch.setattr(RecordingAgent, "update", fail)
    trainer = Trainer(recorder_config(300, 2, ["run.vector=async"]), tmp_path / "run")
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert trainer.envs.venv.closed and trainer._lock is None


def test_async_workers_build_envs_without_torch(tmp_path):
    """The builder a worker unpickles holds plain values: no agent module, no torch."""
    import pickle
    import subprocess
    import sys

    from reverie.envs.vector import env_maker, worker_env

    cfg = build_config("random", [], {})
    path = tmp_path / "builder.pkl"
    path.write_bytes(pickle.dumps(partial(worker_env, env_maker(cfg), 0, -1)))
    code = ("import pickle, sys; from pathlib import Path; "
            f"pickle.loads(Path({str(path)!r}).read_bytes()); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_replay_agents_store_each_env_in_its_own_stream(tmp_path):
    cfg = build_config("random", [*QUIET, "run.num_envs=3", "run.checkpoint_every=1000"],
                       {"steps": 240})
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.train()
    replay = trainer.replay
    assert replay.streams == 3 and replay.sizes.tolist() == [80, 80, 80]
    # stream 1 holds env 1's steps in order: replay its first episode by hand
    env, data = make_env("CartPole-v1"), replay.data
    obs, _ = env.reset(seed=episode_seed(0, 1))  # env 1 starts the run's episode 1
    for k in range(replay.segment, 2 * replay.segment):
        assert data["first"][k] == (k == replay.segment)
        assert np.array_equal(data["vector"][k], obs["vector"])
        obs, reward, term, trunc, _ = env.step(int(data["action"][k]))
        assert data["reward"][k] == reward and data["terminal"][k] == term
        if term or trunc:
            break
    else:
        raise AssertionError("no episode of env 1 ended in 80 steps")


def test_world_model_agent_trains_on_several_envs_and_resumes_exactly(tmp_path):
    from tiny import TINY_MODEL

    extra = [*TINY_MODEL, *QUIET, "run.num_envs=2", "run.prefill=100", "run.train_ratio=16",
             "run.checkpoint_every=100", "run.log_every=75", "run.threads=1"]
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(build_config("cartpole", extra, {"steps": 400}), full).train()
    rows = [json.loads(x) for x in metrics(full).splitlines()]
    assert any("wm/loss" in row for row in rows)
    Trainer(build_config("cartpole", extra, {"steps": 200}), part).train()
    # a resume built and dropped leaves the run as it was: building one cut the logs (this
    # finished run's tail row), grew the replay and wrote the raised budget before train()
    before = folder_bytes(part)
    assert any('"window": "tail"' in line for line in metrics(part).splitlines())
    Trainer.resume(part, steps=400).release()
    assert folder_bytes(part) == before
    cfg = config.load_run_config(part)
    cfg.run.steps = 400
    Trainer(cfg, part, resume=True).train()  # the replay grows from 200 to 400 rows
    assert metrics(part) == metrics(full)


def folder_bytes(run: Path) -> dict[str, bytes]:
    """Every file of a run folder but its lock, by relative path."""
    return {str(f.relative_to(run)): f.read_bytes() for f in sorted(run.rglob("*"))
            if f.is_file() and f.name != ".lock"}


def test_every_env_stream_keeps_all_its_steps(tmp_path):
    """10 steps over 4 envs run 12 (all envs step together): each stream's 3 rows fit."""
    cfg = build_config("random", [*QUIET, "run.num_envs=4", "run.checkpoint_every=1000"],
                       {"steps": 10})
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.train()
    assert trainer.replay.capacity == 12 and trainer.replay.sizes.tolist() == [3, 3, 3, 3]
    assert trainer.replay.totals.tolist() == [3, 3, 3, 3]  # nothing overwritten


def test_a_vector_run_too_short_per_env_says_it_trains_nothing():
    cfg = build_config("cartpole", ["run.num_envs=16", "run.prefill=100"], {"steps": 1000})
    notes = config.training_notes(cfg)  # 63 rows per env stream, sequences of 32: fine
    assert not any("training sequence" in n for n in notes)
    cfg = build_config("cartpole", ["run.num_envs=16", "run.prefill=100",
                                    "imagine.seq_len=64"], {"steps": 1000})
    assert ("run.steps=1000 gives 63 rows per env (16 envs share run.steps), shorter than one "
            "training sequence (64 rows): no training will happen; raise --steps to at least "
            "1024") in config.training_notes(cfg)


def test_a_replay_too_small_for_its_streams_names_the_fix():
    fix = "leaves 10 rows each, fewer than one training sequence of 32; set replay.capacity >= 128"
    with pytest.raises(UserError, match=fix):
        build_config("cartpole", ["run.num_envs=4", "replay.capacity=40"])


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


def test_bad_vector_mode(tmp_path, capsys):
    assert main(["train", "--set", "run.vector=asnyc", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "run.vector must be sync or async" in err and "did you mean 'async'" in err
    assert not (tmp_path / "r").exists()


def test_life_loss_is_terminal_but_not_an_episode_start():
    envs = Collector(lambda: make_env("ALE/Breakout-v5"), 1, 0, "ALE/Breakout-v5",
                     life_loss_terminal=True)
    plain = Collector(lambda: make_env("ALE/Breakout-v5"), 1, 0, "ALE/Breakout-v5")
    envs.start()
    plain.start()
    losses = 0
    for step in range(400):
        action = np.array([1 if step % 20 == 0 else 3])  # fire now and then, move right
        lives = envs.venv.envs[0].unwrapped.ale.lives()
        t, finished = envs.step(action)
        p, _ = plain.step(action)
        assert np.array_equal(t.next_obs["image"], p.next_obs["image"])  # same game
        lost = envs.venv.envs[0].unwrapped.ale.lives() < lives and not finished
        assert bool(t.terminated[0]) == (lost or bool(p.terminated[0]))
        if lost:
            losses += 1
            assert not envs.first[0]  # the episode goes on: memory is not reset
        if finished:
            break
    assert losses >= 1


def test_life_loss_terminal_needs_lives(tmp_path, capsys):
    assert main(["train", "--preset", "random", "--set", "env.life_loss_terminal=true",
                 "--out", str(tmp_path / "r")]) == 2
    assert "life_loss_terminal" in capsys.readouterr().err


TINY_PPO = ["run.num_envs=4", "rppo.rollout_length=32", "rppo.seq_len=16", "rppo.epochs=2",
            "rppo.num_minibatches=2", "rppo.d_model=16", "rppo.hidden=16",
            "run.progress=false", "run.eval_every=256", "run.eval_episodes=2",
            "run.log_every=128", "run.checkpoint_every=96"]


def without_final_eval(text: str, step: int) -> list[str]:
    """metrics.jsonl lines less the one final evaluation of a first part that ended at
    `step`, between two evaluations (asserted to be there, marked as the end's)."""
    lines = text.splitlines()
    kept = [x for x in lines if not x.startswith(f'{{"step": {step}, "eval": "end", '
                                                 '"eval/return"')]
    assert len(kept) == len(lines) - 1
    return kept


@pytest.mark.parametrize("backbone", ["ffm", "gru"])
def test_rppo_through_the_driver_resumes_exactly(tmp_path, backbone):
    def config(steps):
        return build_config("popgym-ppo", TINY_PPO, {"steps": steps, "backbone": backbone})

    full = tmp_path / "full"
    Trainer(config(512), full).train()
    rows = [json.loads(x) for x in metrics(full).splitlines()]
    assert any("ppo/policy_loss" in r for r in rows) and any("eval/return" in r for r in rows)
    part = tmp_path / "part"
    Trainer(config(224), part).train()  # stops inside a rollout (224 = 7 x 32)
    cfg = config(512)
    resumed = Trainer(cfg, part, resume=True)
    assert resumed.resumed_from == 224
    resumed.train()
    assert without_final_eval(metrics(part), 224) == metrics(full).splitlines()


def test_rppo_refuses_random_prefill(tmp_path, capsys):
    assert main(["train", "--preset", "popgym-ppo", "--set", "run.prefill=100",
                 "--out", str(tmp_path / "r")]) == 2
    assert "run.prefill=0" in capsys.readouterr().err


def test_a_finished_trainer_releases_its_run_for_a_resume_in_the_same_process(tmp_path):
    cfg = build_config("random", QUIET, {"steps": 50})
    Trainer(cfg, tmp_path / "run").train()
    cfg = config.load_run_config(tmp_path / "run")
    cfg.run.steps = 80
    assert Trainer(cfg, tmp_path / "run", resume=True).train()["env_steps"] == 80


def test_a_trainer_in_python_leaves_the_process_as_it_found_it(tmp_path):
    """From a walk-through of reverie as a library: run.threads stayed set after a run (a
    later run with run.threads=0, all cores, and the caller's torch ran on 1 thread); a
    second train() of one Trainer failed on a closed log file; a Trainer built and never
    trained was blamed on "another reverie process"; one string of overrides was read
    letter by letter."""
    import torch

    from reverie.errors import Busy

    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    trainer = Trainer(build_config("random", [*QUIET, f"run.threads={other}"], {"steps": 50}),
                      tmp_path / "run")
    assert torch.get_num_threads() == other  # the run's own setting while it trains
    trainer.train()
    assert torch.get_num_threads() == before
    with pytest.raises(UserError, match="already trained .* Trainer.resume"):
        trainer.train()
    held = Trainer.resume(tmp_path / "run", steps=80)
    with pytest.raises(Busy, match="held by a Trainer in this process .* release"):
        Trainer.resume(tmp_path / "run", steps=80)
    held.release()
    with pytest.raises(UserError, match="has released .* build a new one"):
        held.train()  # it would write the folder without its lock
    dropped = Trainer.resume(tmp_path / "run", overrides=[f"run.threads={other}"])
    assert torch.get_num_threads() == other
    del dropped  # a notebook cell run again: the folder and the thread count come back
    Trainer.resume(tmp_path / "run").release()
    assert torch.get_num_threads() == before
    assert Trainer.resume(tmp_path / "run", steps=80).train()["env_steps"] == 80
    with pytest.raises(UserError, match=r"a list of 'key=value' strings, e\.g\. \['run"):
        build_config("random", "run.steps=100")
    with pytest.raises(UserError, match="a list of 'key=value' strings"):
        Trainer.resume(tmp_path / "run", overrides="run.eval_every=10")


def test_a_reset_mask_must_have_the_states_batch():
    """A [1] mask broadcast and reset every row of the state in silence."""
    import torch

    from reverie.sequence import make_backbone

    m = make_backbone("gru", d_model=8, n_layers=1)
    state = m.initial_state(3)
    with pytest.raises(ValueError, match=r"mask of shape \[B\] = \(3,\)"):
        m.reset_state(state, torch.tensor([True]))
    out = m.reset_state([{k: v + 1 for k, v in layer.items()} for layer in state],
                        [True, False, False])  # a list is a mask too
    assert all(v[0].abs().sum() == 0 and v[1:].abs().sum() > 0
               for layer in out for v in layer.values())


def test_atari_evaluation_without_noop_starts():
    """run.eval_noop_max=0 (Drama's evaluation): an episode starts at the game's first frame;
    the Atari100k protocol plays 1..30 random no-ops first."""
    def frames_after_reset(noop_max: int, seed: int) -> int:
        env = make_env("ALE/Breakout-v5", noop_max=noop_max)
        env.reset(seed=seed)
        return int(env.unwrapped.ale.getEpisodeFrameNumber())

    assert [frames_after_reset(0, s) for s in range(4)] == [0, 0, 0, 0]
    noops = [frames_after_reset(30, s) for s in range(8)]
    assert min(noops) >= 1 and max(noops) <= 30 and len(set(noops)) > 1


def test_eval_noop_max_is_validated(tmp_path, capsys):
    assert main(["train", "--set", "run.eval_noop_max=-1", "--out", str(tmp_path / "r")]) == 2
    assert "run.eval_noop_max" in capsys.readouterr().err


def test_rppo_rollback_keeps_the_rollout_collected_since(tmp_path, monkeypatch):
    """A non-finite loss rolls the agent back to a checkpoint taken inside a rollout (96 of
    4 x 32 = 128 env steps); the envs go on, so the next rollout starts afresh at the
    rollback (the next update 128 env steps later), not from the checkpoint's 24 old steps
    joined to 8 new ones (an update at 160)."""
    from reverie.agents.rppo import RPPOAgent

    real_update, at = RPPOAgent.update, []

    def flaky(self, replay=None):
        at.append(trainer.count.env_steps)
        metrics = real_update(self, replay)
        if len(at) == 1:
            metrics["ppo/policy_loss"] = float("nan")
        return metrics

    monkeypatch.setattr(RPPOAgent, "update", flaky)
    trainer = Trainer(build_config("popgym-ppo", TINY_PPO, {"steps": 384, "backbone": "gru"}),
                      tmp_path / "run")
    trainer.train()
    rows = [json.loads(x) for x in metrics(tmp_path / "run").splitlines()]
    assert [r["nan/rollback"] for r in rows if "nan/rollback" in r] == [1]
    assert at == [128, 256, 384]


HISTORY_FREE_ENVS = ["CartPole-v1", "Pendulum-v1", "minatar:breakout", "minatar:asterix",
                     "minatar:freeway", "minatar:seaquest", "minatar:space_invaders",
                     "popgym-RepeatPreviousEasy-v0", "popgym-CountRecallEasy-v0",
                     "popgym-NoisyPositionOnlyPendulumEasy-v0", "dmc:cartpole-swingup",
                     "ALE/Pong-v5"]


@pytest.mark.parametrize("spec", HISTORY_FREE_ENVS)
def test_episodes_depend_only_on_their_seed_and_actions(spec):
    """A resume rebuilds each env from its episode's seed and actions, so an episode must not
    depend on the episodes the env ran before (MinAtar's sticky action carried the previous
    episode's last action into the next: ~1 in 4 episodes went another way)."""
    from reverie.envs.actions import random_actions

    def trajectory(env, seed, actions):
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for a in actions:
            obs, reward, term, trunc, _ = env.step(a)
            out += [obs, reward]
            if term or trunc:
                break
        return out

    def same(a, b):
        return len(a) == len(b) and all(
            all(np.array_equal(x[k], y[k]) for k in x) if isinstance(x, dict) else x == y
            for x, y in zip(a, b))

    rng, used = np.random.default_rng(0), make_env(spec)
    slow = spec.startswith(("dmc:", "ALE/"))  # slow to build: fewer fresh envs
    for k in range(4 if slow else 30):
        trajectory(used, 100 + k, random_actions(used.action_space, 40, rng))  # history
        actions = random_actions(used.action_space, 40, rng)
        assert same(trajectory(used, episode_seed(0, k), actions),
                    trajectory(make_env(spec), episode_seed(0, k), actions)), k


def test_a_dead_async_worker_is_one_error_and_close_ends_the_rest():
    from reverie.run.collector import EnvWorkerDied

    envs = Collector(partial(make_env, "CartPole-v1"), 2, 0, "CartPole-v1", vector="async")
    envs.start()
    envs.step(np.array([0, 1]))
    envs.venv.processes[0].kill()
    envs.venv.processes[0].join()
    with pytest.raises(EnvWorkerDied, match="env worker process 0 of run.vector=async died"):
        for _ in range(3):  # the pipe may take a step to report it
            envs.step(np.array([0, 1]))
    envs.close()
    assert envs.venv.closed and not any(p.is_alive() for p in envs.venv.processes)


def raising_env(spec: str):
    """CartPole whose step raises the EOFError a simulator's closed socket would."""
    env = make_env(spec)

    def step(action):
        raise EOFError("simulator socket closed")

    env.step = step
    return env


KILLED_DRIVER = """
import os, signal
from functools import partial
from reverie.envs import make_env
from reverie.envs.vector import vector_env

if __name__ == "__main__":
    envs = vector_env(partial(make_env, "CartPole-v1"), 2, "async")
    envs.reset(seed=0)
    print("stepped", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_workers_of_a_killed_driver_exit_without_tracebacks(tmp_path):
    """kill -9 of a run.vector=async driver: each worker finds its pipe closed and exits
    quietly (gymnasium's worker printed an EOFError and a BrokenPipeError traceback each).
    The workers share the driver's stderr, so it closes once they are all gone."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "driver.py"
    script.write_text(KILLED_DRIVER)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == -signal.SIGKILL and out.stdout == "stepped\n", out
    assert "Traceback" not in out.stderr and "Error" not in out.stderr, out.stderr


def test_gymnasium_s_async_worker_takes_its_pipe_third():
    """quiet_worker wraps the third argument of gymnasium's private worker: a gymnasium that
    moves it must fail here, not in silence."""
    import inspect

    from gymnasium.vector.async_vector_env import _async_worker

    assert list(inspect.signature(_async_worker).parameters)[:3] == ["index", "env_fn", "pipe"]


@pytest.mark.filterwarnings("ignore:.*ERROR:UserWarning")  # gymnasium's report of it
def test_an_async_env_s_own_eof_error_is_its_own_not_a_dead_worker():
    """An env raising EOFError in a worker (a simulator's socket): gymnasium reports it and the
    worker ends with exit code 0; it was called a killed worker (EnvWorkerDied)."""
    envs = Collector(partial(raising_env, "CartPole-v1"), 2, 0, "CartPole-v1", vector="async")
    envs.start()
    try:
        with pytest.raises(EOFError, match="simulator socket closed"):
            for _ in range(3):
                envs.step(np.array([0, 1]))
    finally:
        envs.close()


def test_the_driver_pipe_turns_only_a_closed_pipe_into_a_quiet_exit():
    from reverie.envs.vector import _DriverPipe

    class Pipe:
        closed = False

        def __init__(self, error):
            self.error = error

        def recv(self):
            raise self.error

        def send(self, obj):
            raise self.error

    quiet = [("recv", EOFError()), ("recv", ConnectionResetError()),
             ("send", BrokenPipeError()), ("send", ConnectionResetError())]
    for method, error in quiet:
        with pytest.raises(SystemExit) as e:
            getattr(_DriverPipe(Pipe(error)), method)(*([1] if method == "send" else []))
        assert e.value.code == 0, (method, error)
    with pytest.raises(ValueError, match="pickling failed"):  # not a closed pipe: as it is
        _DriverPipe(Pipe(ValueError("pickling failed"))).send(1)
    assert _DriverPipe(Pipe(None)).closed is False  # the rest is the pipe's own


def test_a_dead_worker_ends_the_run_with_one_line_naming_resume(recorder, tmp_path, monkeypatch):
    from reverie.run.collector import EnvWorkerDied

    def die(self, action):
        raise EnvWorkerDied("env worker process 1 of run.vector=async died (killed)")

    monkeypatch.setattr(Collector, "step", die)
    trainer = Trainer(recorder_config(100, 2, []), tmp_path / "run")
    with pytest.raises(UserError) as e:
        trainer.train()
    assert type(e.value) is UserError and "\n" not in str(e.value)
    assert f"continue with `reverie train --resume {trainer.out}` (from the checkpoint at " \
           "step 0)" in str(e.value)


def test_a_sync_envs_own_pipe_error_is_not_a_dead_worker():
    def make():
        env = make_env("CartPole-v1")
        env.step = lambda a: (_ for _ in ()).throw(EOFError("simulator socket closed"))
        return env

    envs = Collector(make, 1, 0, "CartPole-v1")
    envs.start()
    with pytest.raises(EOFError, match="simulator socket closed"):
        envs.step(np.array([0]))


def test_vector_mode_in_any_letter_case():
    assert build_config("random", ["run.vector=ASYNC"]).run.vector == "async"
    # a dict-valued option is not a section: it may be set whole
    cfg = build_config("cartpole", ["imagine.world.backbone_kwargs={d_state: 8}"])
    assert cfg.imagine.world.backbone_kwargs.d_state == 8


def test_an_evaluation_from_outside_leaves_the_runs_own_as_they_were(tmp_path):
    """From a walk-through: `trainer.evaluate()` before train() moved the run's evaluation
    round, so its own evaluations (and best.pt) differed from a run never evaluated from
    outside; and a config edited after build_config (run.eval_every = 0) reached the run
    loop (a ZeroDivisionError traceback, after config.yaml was written)."""
    from tiny import TINY_MODEL

    extra = [*TINY_MODEL, "run.progress=false", "run.prefill=100", "run.train_ratio=16",
             "run.eval_every=100", "run.eval_episodes=2", "run.threads=1"]
    Trainer(build_config("cartpole", extra, {"steps": 200}), tmp_path / "plain").train()
    probed = Trainer(build_config("cartpole", extra, {"steps": 200}), tmp_path / "probed")
    first = probed.evaluate(3)
    assert probed.evaluate(3) == first and len(first) == 3  # the same episodes again
    probed.train()
    assert metrics(tmp_path / "probed") == metrics(tmp_path / "plain")
    with pytest.raises(UserError, match="episodes must be >= 0"):
        Trainer.resume(tmp_path / "plain").evaluate(-1)
    cfg = build_config("cartpole", extra, {"steps": 200})
    cfg.run.eval_every = 0
    with pytest.raises(UserError, match="the config: run.eval_every must be positive"):
        Trainer(cfg, tmp_path / "edited")
    assert not (tmp_path / "edited").exists()


def test_a_resume_with_steps_below_the_budget_says_so(tmp_path, capsys):
    """From a walk-through: a run stopped at 200 of 600 steps, resumed with --steps 150, was
    called "already complete"; with --steps 300 its budget fell from 600 to 300 in silence
    (a Stable-Baselines3 user reads --steps as steps to add)."""
    cfg = build_config("random", [*QUIET, "run.checkpoint_every=100"], {"steps": 200})
    Trainer(cfg, tmp_path / "run").train()
    cfg.run.steps = 600  # as a run of 600 steps stopped after its checkpoint at 200
    config.save_config(cfg, tmp_path / "run" / "config.yaml")
    capsys.readouterr()
    assert Trainer.resume(tmp_path / "run", steps=150).train()["env_steps"] == 200
    err = capsys.readouterr().err
    assert "--steps 150 is not above the 200 env steps this run has trained" in err
    assert "budget of 600" in err and "already complete" not in err
    assert config.load_run_config(tmp_path / "run").run.steps == 600
    assert Trainer.resume(tmp_path / "run", steps=300).train()["env_steps"] == 300
    assert "run.steps lowered from 600 to 300" in capsys.readouterr().err
