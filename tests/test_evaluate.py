"""Evaluation runs its episodes side by side in one batch: the same episodes (seeds), the
same returns and the same order as one episode at a time."""

import gymnasium as gym
import numpy as np

from reverie.envs import make_env
from reverie.run.collector import episode_seed
from reverie.run.evaluation import evaluate


class CountingAgent:
    """A greedy policy with memory: push the pole's way, but every 7th step of an episode
    (its own counter, reset by `first`) push the other way. Rows are independent."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[bool]]] = []

    def initial_state(self, n: int) -> np.ndarray:
        return np.full(n, -1000)  # a state that only `first` may clear

    def act(self, obs, first, state, explore):
        assert explore is False
        self.calls.append((len(first), list(first)))
        count = np.where(first, 0, state + 1)
        x = obs["obs"] if "obs" in obs else next(iter(obs.values()))
        push = (x[:, 2] > 0).astype(np.int64)
        action = np.where(count % 7 == 6, 1 - push, push)
        return action, count


def one_by_one(episodes: int, seed: int, round_: int) -> list[float]:
    """The reference: each episode alone in plain Gymnasium CartPole, the same policy."""
    out = []
    for i in range(episodes):
        env = gym.make("CartPole-v1")
        x, _ = env.reset(seed=episode_seed(seed, round_ * 1000 + i, stream=1))
        total, count, done = 0.0, 0, False
        while not done:
            push = int(x[2] > 0)
            x, r, term, trunc, _ = env.step(1 - push if count % 7 == 6 else push)
            total, count, done = total + r, count + 1, term or trunc
        out.append(total)
    return out


def test_parallel_episodes_give_the_returns_of_one_at_a_time_in_order():
    want = one_by_one(7, seed=3, round_=2)
    assert len(set(want)) > 3  # different episodes: an order mix-up would show
    for parallel in (1, 3, 7, 16):
        agent = CountingAgent()
        got = evaluate(agent, lambda: make_env("CartPole-v1"), 7, seed=3, round_=2,
                       parallel=parallel)
        assert got == want, parallel
        width = min(parallel, 7)
        # one batched call per step of a wave: `first` only on each wave's first call
        assert agent.calls[0] == (width, [True] * width)
        assert all(not any(f) for n, f in agent.calls[1:] if n == width and f != [True] * n)
        waves = sum(all(f) for _, f in agent.calls)
        assert waves == -(-7 // width)


def test_no_episodes_builds_nothing_and_returns_nothing():
    built = []
    assert evaluate(CountingAgent(), lambda: built.append(1), 0, seed=0) == []
    assert built == []


def test_evaluation_env_takes_the_runs_no_op_setting_and_training_env_the_default():
    """One builder for a run's envs: `reverie eval` evaluates as the run's own evaluations
    did (run.eval_noop_max), not with the training env's 30 no-op starts."""
    from reverie.config import build_config
    from reverie.envs.atari import Atari100k
    from reverie.run.collector import env_of

    def noops(env) -> int:
        while not isinstance(env, Atari100k):
            env = env.env
        return env.noop_max

    cfg = build_config("atari100k", ["env.id=ALE/Pong-v5", "run.eval_noop_max=0"])
    assert noops(env_of(cfg, evaluation=True)) == 0
    assert noops(env_of(cfg)) == 30


def test_reverie_eval_says_its_progress_during_a_long_evaluation(tmp_path, monkeypatch,
                                                                 capsys):
    """`reverie eval` printed nothing until its episodes ended (minutes for an Atari agent
    that never fires): a line every EVAL_PROGRESS_S on stderr, the JSON on stdout as before."""
    import json

    from reverie import cli

    finished_run = tmp_path / "run"
    assert cli.main(["train", "--preset", "random", "--no-progress", "--steps", "100",
                     "--set", "run.eval_episodes=0", "--out", str(finished_run)]) == 0
    clock = iter(range(0, 10**6, 11))  # 11 s per reading: every step is due a line
    monkeypatch.setattr(cli.time, "monotonic", lambda: float(next(clock)))
    assert cli.main(["eval", str(finished_run), "--episodes", "2"]) == 0
    out, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if x.startswith("reverie: evaluating: ")]
    steps = [int(x.split()[2].replace(",", "")) for x in lines]
    assert len(lines) >= 10 and steps == sorted(steps) and steps[0] >= 1
    assert lines[-1].endswith("2 of 2 episodes ended")
    assert json.loads(out.strip().splitlines()[-1])["episodes"] == 2
