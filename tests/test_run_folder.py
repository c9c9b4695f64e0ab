"""A real (tiny) world-model run end to end: run folder, load/act, eval, watch, NaN guard,
full disk."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import reverie
from reverie.cli import main
from reverie.config import build_config
from reverie.envs import make_env
from reverie.errors import UserError
from reverie.run import checkpoint as ckpt_module
from reverie.run.checkpoint import CheckpointStore
from reverie.run.driver import Trainer
from tiny import TINY_MODEL

TINY = [*TINY_MODEL, "imagine.world.backbone_kwargs={}", "run.train_ratio=16",
        "run.prefill=100", "run.checkpoint_every=100", "run.eval_every=200",
        "run.eval_episodes=1", "run.progress=false", "run.threads=1"]


def tiny_config(steps: int = 300, backbone: str = "gru", extra: list[str] | None = None):
    return build_config("cartpole", TINY + (extra or []),
                        {"backbone": backbone, "steps": steps})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "run"
    summary = Trainer(tiny_config(), out).train()
    assert summary["env_steps"] == 300
    return out


def test_run_folder_contents(run):
    for name in ("config.yaml", "metrics.jsonl", "timing.jsonl", "curve.png"):
        assert (run / name).exists(), name
    assert list((run / "tb").iterdir()), "TensorBoard events"
    assert (run / "replay" / "vector.npy").exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "grad_steps" in r]
    assert logged[-1]["grad_steps"] > 0 and "wm/loss" in logged[-1]
    assert "imag/return" in logged[-1] and "train_ratio" in logged[-1]
    # replayed steps per env step after the prefill: the setting (16), not diluted by the
    # 100 random prefill steps (it read 16 x 200 / 300 = 10.7)
    assert logged[-1]["train_ratio"] == pytest.approx(16, rel=0.05)
    assert any("eval/return" in r for r in rows)
    timing = [json.loads(x) for x in (run / "timing.jsonl").read_text().splitlines()]
    assert timing[-1]["time/env_steps_per_s"] > 0


def test_the_readme_python_api_snippet_runs_as_written(run):
    """A user pastes it (their run folder for runs/demo): it plays one greedy episode."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in text.split("```")[1::2] if b.startswith("python")]
    (snippet,) = [b for b in blocks if "reverie.load(" in b]
    scope: dict = {}
    code = snippet.replace('"runs/demo"', repr(str(run)))
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    assert scope["done"] and scope["best"].step > 0


def test_load_and_act(run):
    policy = reverie.load(run)
    env = make_env("CartPole-v1")
    obs, _ = env.reset(seed=3)
    action, state = policy.act(obs)
    assert action in (0, 1)
    again, _ = policy.act(obs)  # state=None starts a fresh episode: same greedy action
    assert again == action
    action2, state = policy.act(obs["vector"], state)  # a bare array works for one key
    assert action2 in (0, 1)
    # a state that act did not return: one line, not the agent's ValueError/TypeError
    flat = torch.utils._pytree.tree_flatten(state)[0]
    for bad in ("x", (state, state), [flat[0]], torch.zeros(1),
                torch.utils._pytree.tree_map(lambda t: t[0] if t.dim() > 1 else t, state)):
        with pytest.raises(UserError, match=r"state is not one that act returned .*pass "
                           r"state=None at an episode's first step"):
            policy.act(obs, bad)
    for _ in range(3):  # the states act returns keep being taken
        action2, state = policy.act(obs, state)
    with pytest.raises(UserError, match="shape"):
        policy.act(np.zeros(5, np.float32))
    # a batch of observations, as a dict too, was torch's "mat1 and mat2 shapes cannot be
    # multiplied" from inside the network
    with pytest.raises(UserError, match=r"observation 'vector' has shape \(3, 4\), expected "
                       r"\(4,\) \(act takes one env's observation: call it per env\)"):
        policy.act({"vector": np.zeros((3, 4), np.float32)})
    with pytest.raises(UserError, match=r"missing keys \['vector'\]; make the env the way the "
                       r"run did with policy.make_env\(\)"):
        policy.act({"prev_reward": np.zeros(1, np.float32)})
    own, _ = policy.make_env().reset(seed=3)  # the run's own env: the same observations
    np.testing.assert_array_equal(own["vector"], obs["vector"])


def test_a_bf16_policy_takes_the_states_it_returns():
    """A run.precision=bf16 agent acts under autocast and returns bf16 states (Mamba-2's h):
    the state check took them for foreign ones (`reverie watch` of a bf16 run failed)."""
    from reverie.envs import make_obs_spec
    from reverie.run.agent import build_agent, select_device
    from reverie.run.collector import env_of
    from reverie.run.policy import Policy

    cfg = build_config("cartpole", ["run.precision=bf16", "run.compile=off"], {})
    env = env_of(cfg)
    spec = make_obs_spec(env.observation_space)
    policy = Policy(build_agent(cfg, spec, env.action_space, select_device("cpu")), cfg, spec,
                    cfg.env.id)
    obs, _ = env.reset(seed=0)
    _, state = policy.act(obs)
    assert any(t.dtype == torch.bfloat16 for t in torch.utils._pytree.tree_flatten(state)[0])
    for _ in range(3):
        action, state = policy.act(obs, state)
        assert action in (0, 1)


def test_load_a_checkpoint_file(run):
    entry = CheckpointStore(run / "checkpoints").entries()[0]
    policy = reverie.load(run / "checkpoints" / entry.file)
    action, _ = policy.act(make_env("CartPole-v1").reset(seed=0)[0])
    assert action in (0, 1)


def test_eval_and_watch_commands(run, capsys, tmp_path):
    assert main(["eval", str(run), "--episodes", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 2 and len(result["returns"]) == 2
    assert json.loads((run / "eval.json").read_text()) == result
    assert main(["watch", str(run), "--steps", "20"]) == 0
    written = json.loads(capsys.readouterr().out)
    gif = Path(written["gif"][0])
    assert gif.exists() and gif.read_bytes()[:3] == b"GIF"
    import imageio.v2 as imageio

    # the env's own frames (CartPole renders 600x400), not a drawing of the observation
    frame = imageio.mimread(gif)[0]
    assert frame.shape[:2] == (400, 600)
    # the world model's view of a vector env: a plot of real vs imagined per dimension
    plot = Path(written["plot"][0])
    assert plot.name == "watch-real-vs-imagined.png" and plot.read_bytes()[:4] == b"\x89PNG"
    # an episode no longer than the observed context: said, as nothing imagined is shown
    assert main(["watch", str(run), "--steps", "3", "--out", str(tmp_path / "short.gif")]) == 0
    assert "its plot shows nothing imagined" in capsys.readouterr().err
    # --seed films another episode (CartPole starts elsewhere)
    assert main(["watch", str(run), "--steps", "5", "--seed", "3", "--out",
                 str(tmp_path / "s3.gif")]) == 0
    assert main(["watch", str(run), "--steps", "5", "--out", str(tmp_path / "s0.gif")]) == 0
    capsys.readouterr()
    assert (tmp_path / "s3.gif").read_bytes() != (tmp_path / "s0.gif").read_bytes()
    # a checkpoint file's GIF and plot are named after it: the run's own watch.gif stays
    before = gif.read_bytes()
    ckpt = sorted((run / "checkpoints").glob("ckpt-*.pt"))[-1]
    assert main(["watch", str(ckpt), "--steps", "5"]) == 0
    names = sorted(Path(p).name for p in sum(json.loads(capsys.readouterr().out).values(), []))
    assert names == [f"watch-{ckpt.stem}-real-vs-imagined.png", f"watch-{ckpt.stem}.gif"]
    assert gif.read_bytes() == before
    # one copied out of its run: beside the file (was two folders up, outside its folder)
    lone = tmp_path / "out" / "kept" / "lone.pt"
    lone.parent.mkdir(parents=True)
    lone.write_bytes(ckpt.read_bytes())
    assert main(["watch", str(lone), "--steps", "5"]) == 0
    written = sum(json.loads(capsys.readouterr().out).values(), [])
    assert {Path(p).parent for p in written} == {lone.parent}


def test_plot_panels_go_to_the_dimensions_that_move():
    from reverie.eval.video import shown_dims

    real = np.zeros((20, 400), np.float32)
    real[:, [390, 7, 150]] = np.random.default_rng(0).normal(size=(20, 3))
    real[:, 42] = 1.0  # on throughout: no movement to show
    assert shown_dims(real, 3).tolist() == [7, 150, 390]
    assert shown_dims(real[:, :4], 16).tolist() == [0, 1, 2, 3]  # few dims: all, in order
    # fewer moving cells than panels: the still ones get none (the 16 panels held 13 of them)
    assert shown_dims(real, 16).tolist() == [7, 150, 390]
    assert shown_dims(np.ones((5, 400)), 16).tolist() == [0]  # nothing moves: one panel
    # a constant that floats do not hold exactly (its std is not 0) is still a still cell
    tenths = np.full((7, 40), np.float32(0.1))
    tenths[:, 3] = np.arange(7)
    assert tenths.std(0)[0] > 0 and shown_dims(tenths, 16).tolist() == [3]


def test_the_plot_of_steps_within_the_context_says_nothing_was_imagined(run, tmp_path,
                                                                       monkeypatch):
    """`reverie watch --steps 3` of a model observing 8 steps: its plot says all 3 steps are
    within the model's 8 observed steps (it said "the episode ended within the 3 observed
    steps"); a longer film's plot says imagined."""
    import matplotlib.axes
    import matplotlib.figure

    from reverie.eval import video

    titles: list[str] = []
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                        lambda self, t, **k: titles.append(" ".join(t.split())))
    labels: list[str] = []
    plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: labels.append(k.get("label")) or plot(self, *a, **k))
    context = int(reverie.load(run).cfg.imagine.context)
    video.watch(run, steps=3, out=tmp_path / "short.gif")
    video.watch(run, steps=context + 4, out=tmp_path / "long.gif")
    assert f"real vs reconstructed observations (all 3 steps are within the model's {context} " \
           "observed steps: nothing imagined)" in titles[0], titles
    assert "real vs open-loop imagined observations" in titles[1], titles
    # the legend too (it said "imagined" for reconstructions)
    assert "reconstructed" in labels and "imagined" in labels
    assert labels.index("imagined") > max(i for i, x in enumerate(labels) if x == "reconstructed")


def test_open_loop_vectors_follow_the_recorded_actions(run):
    """The plotted imagination is the model's: observe `context` steps, then predict from
    the actions alone — so the imagined part does not depend on the later observations."""
    from reverie.eval.video import open_loop, rollout

    policy = reverie.load(run)
    _, observations, actions, _ = rollout(policy, 20)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    a = open_loop(policy, observations, actions, context=4, horizon=6)["vector"]
    changed = [{"vector": o["vector"] + (100.0 if i >= 4 else 0.0)}
               for i, o in enumerate(observations)]
    torch.manual_seed(0)
    b = open_loop(policy, changed, actions, context=4, horizon=6)["vector"]
    assert a.shape == (10, 4) and np.array_equal(a, b)
    torch.manual_seed(0)
    c = open_loop(policy, [{"vector": o["vector"] + 100.0} for o in observations], actions,
                  context=4, horizon=6)["vector"]
    assert not np.array_equal(a, c)  # ...but it does depend on the observed context


def test_watch_says_when_an_env_cannot_render(tmp_path, capsys):
    out = tmp_path / "popgym"
    Trainer(tiny_config(steps=120, extra=["env.id=popgym-RepeatFirstEasy-v0",
                                          "run.eval_episodes=0"]), out).train()
    assert main(["watch", str(out), "--steps", "10"]) == 0
    captured = capsys.readouterr()
    written = json.loads(captured.out)
    assert written["gif"] == [] and len(written["plot"]) == 1
    assert captured.err.strip().splitlines() == [
        "reverie: note: popgym-RepeatFirstEasy-v0 cannot render frames: it has no rgb_array "
        "render mode; no watch.gif written"]
    assert not (out / "watch.gif").exists()


@pytest.mark.parametrize("game", ["breakout", "asterix", "freeway", "seaquest",
                                  "space_invaders"])
def test_minatar_frames_are_the_games_grid(game):
    """MinAtar's picture, as watch films it: each cell coloured by the last object channel
    that is on, black where none is: one colour per channel index, a different one for each."""
    pytest.importorskip("minatar")
    from reverie.eval.video import _frame

    env = make_env(f"minatar:{game}", render=True)
    obs, _ = env.reset(seed=1)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        state = env.unwrapped.game.state()
        n = state.shape[-1]
        index = np.amax(state * np.arange(1, n + 1).reshape(1, 1, -1), 2)  # MinAtar's rule
        frame = _frame(env, obs)
        assert frame.shape == (10, 10, 3) and frame.dtype == np.uint8
        assert (frame[index == 0] == 0).all()
        colours = {}
        for v in np.unique(index):
            cells = frame[index == v]
            assert (cells == cells[0]).all()  # one colour per channel index...
            colours[int(v)] = tuple(cells[0])
        assert len(set(colours.values())) == len(colours)  # ...a different one for each
        seen.update(colours)
        obs, _, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
        if term or trunc:
            obs, _ = env.reset(seed=2)
    assert len(seen) >= 3  # the background and at least two kinds of object were drawn


def test_watch_minatar_films_the_game(tmp_path, capsys):
    pytest.importorskip("minatar")
    out = tmp_path / "breakout"
    Trainer(tiny_config(steps=120, extra=["env.id=minatar:breakout",
                                          "run.eval_episodes=0"]), out).train()
    assert main(["watch", str(out), "--steps", "10"]) == 0
    written = json.loads(capsys.readouterr().out)
    import imageio.v2 as imageio

    frames = imageio.mimread(written["gif"][0])
    from reverie.eval.video import _frame

    env = make_env("minatar:breakout", render=True)
    obs, _ = env.reset(seed=0)  # watch films the episode of seed 0
    first = _frame(env, obs).repeat(25, 0).repeat(25, 1)
    assert np.array_equal(frames[0][..., :3], first)


def test_watch_image_env_writes_real_vs_imagined(tmp_path, capsys, monkeypatch):
    """Pong with the previous reward as a vector key: the real-vs-imagined GIF for the image
    and a plot for the vector, from one open-loop pass of the world model."""
    from reverie.eval import video

    extra = ["env.obs=image", "env.id=ALE/Pong-v5", "imagine.world.cnn_depth=4",
             "imagine.world.cnn_embed_channels=8", "run.eval_episodes=0", "run.prefill=60",
             "imagine.context=4", "env.prev_reward=true"]
    out = tmp_path / "pong"
    Trainer(tiny_config(steps=80, extra=extra), out).train()
    passes = []
    real_open_loop = video.open_loop
    monkeypatch.setattr(video, "open_loop", lambda *a, **k: passes.append(1) or
                        real_open_loop(*a, **k))
    assert main(["watch", str(out), "--steps", "12"]) == 0
    written = json.loads(capsys.readouterr().out)
    gifs = [Path(p) for p in written["gif"]]
    assert len(gifs) == 2 and gifs[1].name.endswith("real-vs-imagined.gif")
    assert [Path(p).name for p in written["plot"]] == ["watch-real-vs-imagined.png"]
    assert len(passes) == 1
    import imageio.v2 as imageio

    frames = imageio.mimread(gifs[1])
    assert len(frames) == 12 and frames[0].shape[1] > frames[0].shape[0]  # side by side
    # a caption strip says which half is which, and the model's frames from the 4th on
    # (imagine.context=4) are imagined: said in red there, in black while observed
    def red(frame) -> bool:
        strip = np.asarray(frame)[:video.CAPTION_PX, frame.shape[1] // 2:, :3].astype(int)
        return bool(((strip[..., 0] > 150) & (strip[..., 1] < 80)).any())

    assert [red(f) for f in frames] == [False] * 4 + [True] * 8
    assert (np.asarray(frames[0])[:video.CAPTION_PX, :40, :3] < 100).any()  # "real"


def test_nan_loss_rolls_back_then_stops(tmp_path, monkeypatch):
    from reverie.agents.imagine import ImagineAgent

    real_update = ImagineAgent.update
    calls = {"n": 0}

    def flaky(self, replay):
        calls["n"] += 1
        metrics = real_update(self, replay)
        if calls["n"] >= 5:  # from the 5th update on, the world-model loss is NaN
            metrics["wm/loss"] = float("nan")
        return metrics

    monkeypatch.setattr(ImagineAgent, "update", flaky)
    out = tmp_path / "nan"
    trainer = Trainer(tiny_config(steps=400, extra=["run.max_nan_retries=2"]), out)
    with pytest.raises(UserError, match=r"non-finite wm/loss=nan at env step \d+"):
        trainer.train()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["nan/rollback"] for r in rows if "nan/rollback" in r] == [1, 2]
    # the last good checkpoint is still there and loads
    payload, entry, warnings = CheckpointStore(out / "checkpoints").load_latest()
    assert not warnings and payload["agent_name"] == "imagine"


def test_a_rollback_after_a_stop_and_resume_goes_where_the_uninterrupted_runs_does(
        tmp_path, monkeypatch):
    """A stop saves a checkpoint between two of the cadence's; a non-finite loss after the
    resume rolls back to the cadence's last one (as in the run never stopped), not to it."""
    import signal

    from reverie.agents.imagine import ImagineAgent

    real_update = ImagineAgent.update
    state = {"trainer": None, "nan": False, "stop": None}

    def flaky(self, replay):
        step = state["trainer"].count.env_steps
        if state["stop"] is not None and step >= state["stop"]:
            state["stop"] = None
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: the loop stops after this step
        metrics = real_update(self, replay)
        if step >= 250 and not state["nan"]:
            state["nan"] = True
            metrics["wm/loss"] = float("nan")
        return metrics

    monkeypatch.setattr(ImagineAgent, "update", flaky)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        ref, stopped = tmp_path / "ref", tmp_path / "stopped"
        state["trainer"] = Trainer(tiny_config(steps=400), ref)
        state["trainer"].train()
        state.update(nan=False, stop=230)
        state["trainer"] = Trainer(tiny_config(steps=400), stopped)
        with pytest.raises(UserError, match="stopped by SIGINT at env step 23"):
            state["trainer"].train()
        steps = [e.step for e in CheckpointStore(stopped / "checkpoints").entries()]
        assert steps[-2:] == [200, steps[-1]] and 230 <= steps[-1] < 250
        state["trainer"] = Trainer(tiny_config(steps=400), stopped, resume=True)
        state["trainer"].train()
    finally:
        signal.signal(signal.SIGINT, previous)
    text = (ref / "metrics.jsonl").read_text()
    assert '"nan/rollback": 1' in text
    assert (stopped / "metrics.jsonl").read_text() == text


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path / "ckpt")
    store.save({"format": ckpt_module.FORMAT, "x": 1}, step=10)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_module.os, "fsync", full)
    with pytest.raises(UserError, match="No space left on device.*previous checkpoint"):
        store.save({"format": ckpt_module.FORMAT, "x": 2}, step=20)
    monkeypatch.undo()
    payload, entry, _ = store.load_latest()
    assert entry.step == 10 and payload["x"] == 1
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "ckpt-0000000010.pt", "manifest.json"]  # no temp file, no half checkpoint


def test_a_resume_takes_checkpoints_at_its_own_cadence(tmp_path):
    """run.checkpoint_every may change on a resume, and the new cadence applies from the
    checkpoint resumed from (before, the next checkpoint stayed where the old cadence had put
    it: a 5k-step cadence lowered to 1k on resume still waited for step 5k)."""
    out = tmp_path / "cadence"
    random = ["--preset", "random", "--set", "run.eval_episodes=0", "--no-progress"]
    assert main(["train", *random, "--steps", "300", "--set", "run.checkpoint_every=5000",
                 "--out", str(out)]) == 0
    assert [e.step for e in CheckpointStore(out / "checkpoints").entries()] == [0, 300]
    assert main(["train", "--resume", str(out), "--steps", "900", "--no-progress",
                 "--set", "run.checkpoint_every=200", "--set", "run.keep_checkpoints=10"]) == 0
    steps = [e.step for e in CheckpointStore(out / "checkpoints").entries()]
    # each at the first episode end >= 200 env steps after the one before (CartPole's
    # random episodes are ~20 steps), then the final one
    assert steps[:2] == [0, 300] and steps[-1] == 900 and len(steps) >= 5
    gaps = np.diff(steps[1:-1])
    assert (gaps >= 200).all() and (gaps < 300).all(), steps


def test_resume_past_the_first_steps_grows_the_replay_exactly(tmp_path, capsys):
    """The replay is allocated to the run's first run.steps (no more can be stored); a resume
    that raises run.steps grows it, keeping every row, and the run goes on exactly as one
    created with the larger run.steps. progress.json follows."""
    out, direct = tmp_path / "short", tmp_path / "direct"
    Trainer(tiny_config(steps=200), out).train()
    assert json.loads((out / "progress.json").read_text()) == {"env_steps": 200}
    assert np.load(out / "replay" / "action.npy", mmap_mode="r").shape[0] == 200
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--steps", "300", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "reverie: the replay grew from 200 to 300 rows (run.steps 300); its rows are kept" \
        in err and "replace the oldest" not in err
    assert json.loads((out / "progress.json").read_text()) == {"env_steps": 300}
    Trainer(tiny_config(steps=300), direct).train()
    assert (out / "metrics.jsonl").read_text() == (direct / "metrics.jsonl").read_text()
    for name in ("_stamp", "vector", "action", "reward"):
        np.testing.assert_array_equal(np.load(out / "replay" / f"{name}.npy"),
                                      np.load(direct / "replay" / f"{name}.npy"), name)


def test_a_replay_capacity_below_the_steps_is_said_once_and_can_be_raised(tmp_path, capsys):
    """replay.capacity smaller than run.steps: a resume that extends the run past it says
    so in one line with the fix; --set replay.capacity raises it (never lowers it)."""
    out = tmp_path / "capped"
    Trainer(tiny_config(steps=200, extra=["replay.capacity=200"]), out).train()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--steps", "300", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "reverie: note: the replay holds 200 rows (replay.capacity), so from step 200 on " \
           "the newest rows replace the oldest; to keep all 300 steps, resume with --set " \
           "replay.capacity=300" in err and "grew" not in err
    assert main(["train", "--resume", str(out), "--steps", "300", "--no-progress"]) == 0
    assert "replay holds" not in capsys.readouterr().err  # said once, not at every resume
    assert main(["train", "--resume", str(out), "--steps", "400", "--set",
                 "replay.capacity=400", "--no-progress"]) == 0
    assert "the replay grew from 200 to 400 rows" in capsys.readouterr().err
    stamps = np.load(out / "replay" / "_stamp.npy")  # rows 100..399: the wrapped ring's
    assert stamps[:100].tolist() == [-1] * 100  # newest 200 rows kept, then 100 new ones
    assert stamps[100:].tolist() == list(range(100, 400))
    assert main(["train", "--resume", str(out), "--steps", "500", "--set",
                 "replay.capacity=300", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "can only be raised" in err and len(err.splitlines()) == 1
    # the room the files have, not rows the replay holds (said "already holds" of a run
    # stopped with fewer rows than its files have room for)
    assert "below the 400 rows this run's replay has room for" in err
    # --show-config shows what the resume would train with: not a config it refuses
    assert main(["train", "--resume", str(out), "--set", "replay.capacity=300",
                 "--show-config"]) == 2
    assert "below the 400 rows this run's replay has room for" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--set", "replay.capacity=500",
                 "--show-config"]) == 0
    assert "capacity: 500" in capsys.readouterr().out
    # a run killed in start-up (replay files, no checkpoint) starts over on resume: no refusal
    shutil.rmtree(out / "checkpoints")
    assert main(["train", "--resume", str(out), "--set", "replay.capacity=300",
                 "--show-config"]) == 0


def test_a_growth_killed_between_files_is_finished_by_any_later_resume(tmp_path, monkeypatch,
                                                                        capsys):
    """Some replay files grown, others not (the process died between them): resuming, even
    without raising --steps again, finishes the growth; the extended run still equals one
    trained to the larger steps from the start."""
    import os

    from reverie.replay import buffer

    out, direct = tmp_path / "short", tmp_path / "direct"
    Trainer(tiny_config(steps=200), out).train()
    real, calls = os.replace, []

    def dies_on_the_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill would stop it
        real(src, dst)

    monkeypatch.setattr(buffer.os, "replace", dies_on_the_second)
    assert main(["train", "--resume", str(out), "--steps", "300", "--no-progress"]) == 130
    monkeypatch.undo()
    rows = {buffer.file_rows(p) for p in (out / "replay").glob("*.npy")}
    assert rows == {200, 300}
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # same --steps as saved
    assert "the replay grew from 200 to 300 rows" in capsys.readouterr().err
    assert {buffer.file_rows(p) for p in (out / "replay").glob("*.npy")} == {300}
    assert main(["train", "--resume", str(out), "--steps", "300", "--no-progress"]) == 0
    Trainer(tiny_config(steps=300), direct).train()
    assert (out / "metrics.jsonl").read_text() == (direct / "metrics.jsonl").read_text()


def test_the_last_updates_are_logged_and_an_extension_logs_as_if_never_stopped(tmp_path):
    """A run that ends off the run.log_every cadence logs its last updates in a tail row
    (a short run had no loss in metrics.jsonl at all); a resume that extends the run drops
    that row and logs as the uninterrupted run does; a resume that only re-checks keeps it."""
    extra = ["run.log_every=100", "run.eval_episodes=0"]

    def rows(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    short = tmp_path / "short"
    Trainer(tiny_config(250, extra=extra), short).train()
    (tail,) = [r for r in rows(short) if r.get("window") == "tail"]
    assert tail["step"] == 250 and tail["grad_steps"] > 0 and "wm/loss" in tail
    before = rows(short)
    files = sorted(f.relative_to(short) for f in short.rglob("*") if f.is_file())
    Trainer.resume(short, 250, []).train()  # already complete: nothing dropped
    assert rows(short) == before
    # nor added: it opened a TensorBoard writer, an empty events file at every such resume
    assert sorted(f.relative_to(short) for f in short.rglob("*") if f.is_file()) == files
    Trainer.resume(short, 400, []).train()
    straight = tmp_path / "straight"
    Trainer(tiny_config(400, extra=extra), straight).train()
    assert rows(short) == rows(straight)
    assert not any(r.get("window") == "tail" for r in rows(straight))  # 400: on the cadence


def test_a_resume_summarises_the_episodes_before_it(tmp_path):
    """A resumed run's last_returns were only the episodes after the resume ([] for a run
    already complete); they are the run's last five, as an uninterrupted run reports."""
    cfg = build_config("random", ["run.eval_episodes=0", "run.progress=false",
                                  "run.checkpoint_every=50"], {"steps": 200})
    straight = Trainer(cfg, tmp_path / "straight").train()
    short = build_config("random", ["run.eval_episodes=0", "run.progress=false",
                                    "run.checkpoint_every=50"], {"steps": 150})
    first = Trainer(short, tmp_path / "split").train()
    assert len(first["last_returns"]) == 5
    again = Trainer(short, tmp_path / "split", resume=True).train()  # already complete
    assert again["last_returns"] == first["last_returns"]
    extended = Trainer(cfg, tmp_path / "split", resume=True).train()
    assert extended["last_returns"] == straight["last_returns"]
    assert extended["episodes"] == straight["episodes"]


def test_run_wall_goes_on_across_a_resume(tmp_path):
    """time/wall restarts with each process (TensorBoard drew a saw-tooth); time/run_wall is
    the run's training time so far, and what a report reads as its wall time."""
    from reverie.eval.runs import load_runs
    from reverie.run.logger import read_jsonl

    sets = ["run.eval_episodes=0", "run.progress=false", "run.log_every=50"]
    Trainer(build_config("random", sets, {"steps": 200}), tmp_path / "r").train()
    Trainer(build_config("random", sets, {"steps": 400}), tmp_path / "r", resume=True).train()
    rows = read_jsonl(tmp_path / "r" / "timing.jsonl")
    assert [r["step"] for r in rows] == list(range(50, 401, 50))
    walls = [r["time/wall"] for r in rows]
    totals = [r["time/run_wall"] for r in rows]
    assert walls[4] < walls[3]  # the second process started its own clock
    assert all(b > a for a, b in zip(totals, totals[1:]))
    assert totals[4] == pytest.approx(walls[3] + walls[4], abs=2e-4)  # rounded in the file
    run = load_runs([tmp_path / "r"])[0][0]
    assert run.wall_s == pytest.approx(totals[-1], abs=1e-3)


def test_run_wall_keeps_a_process_shorter_than_the_next_ones_first_row(tmp_path):
    """A first process that wrote one row at 10 steps: the resumed one's first row, 190
    steps later, showed a larger time/wall, so the two read as one process and the first's
    time was lost (and carried into time/run_wall by the next resume)."""
    from reverie.run.logger import read_jsonl, training_wall

    sets = ["run.eval_episodes=0", "run.progress=false", "run.log_every=200"]
    for steps in (10, 400, 600):
        Trainer(build_config("random", sets, {"steps": steps}), tmp_path / "r",
                resume=steps > 10).train()
    rows = read_jsonl(tmp_path / "r" / "timing.jsonl")
    assert [r["step"] for r in rows] == [10, 200, 400, 600]
    first = rows[0]["time/wall"]
    assert rows[1]["time/run_wall"] == pytest.approx(first + rows[1]["time/wall"], abs=2e-4)
    assert rows[3]["time/run_wall"] == pytest.approx(
        first + rows[2]["time/wall"] + rows[3]["time/wall"], abs=3e-4)
    assert training_wall(rows)[0] == pytest.approx(rows[3]["time/run_wall"], abs=3e-4)


def test_a_run_records_its_agents_size_and_the_report_shows_it(run, tmp_path):
    """A backbone comparison at one width differs in parameters: each process records the
    agent's count beside its machine, and the report's compute table shows it."""
    from reverie.eval.report import write_report
    from reverie.run.agent import num_params
    from reverie.run.logger import read_jsonl

    rows = read_jsonl(run / "machine.jsonl")
    agent = reverie.load(run, device="cpu").agent
    count = num_params(agent)
    world = sum(p.numel() for p in agent.world.parameters())
    assert rows[-1]["params"] == count > world > 0  # the world model and the actor-critic
    report, _ = write_report([run], tmp_path / "rep")
    assert f"| {count / 1e6:.2f}M |" in report.read_text()


def test_tensorboard_drops_an_extended_runs_tail_point_and_keeps_its_evaluation(tmp_path):
    """metrics.jsonl dropped the tail row an extension replaces; TensorBoard kept its points
    (a loss at the old end, off the log cadence, beside the extension's rows)."""
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from reverie.run.logger import RunLogger

    def scalars():
        acc = EventAccumulator(str(tmp_path / "tb"))
        acc.Reload()
        return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}

    first = RunLogger(tmp_path)
    for step in (100, 200):
        first.metrics(step, {"wm/loss": step / 100})
    first.metrics(250, {"eval/return": 9.0})
    first.metrics(250, {"wm/loss": 2.5, "window": "tail"})
    first.close()
    time.sleep(1.1)  # event files are named by the second they were opened in
    second = RunLogger(tmp_path, resume_step=250, extends=True)
    second.metrics(300, {"wm/loss": 3.0})
    second.close()
    assert scalars() == {"wm/loss": [(100, 1.0), (200, 2.0), (300, 3.0)],
                         "eval/return": [(250, 9.0)]}
    time.sleep(1.1)
    # a crash after the checkpoint at 200 (the driver resumes an unfinished run as one that
    # goes on: extends): the points past 200 go, 200's are logged again
    third = RunLogger(tmp_path, resume_step=200, extends=True)
    third.metrics(300, {"wm/loss": 3.5})
    third.close()
    assert scalars() == {"wm/loss": [(100, 1.0), (200, 2.0), (300, 3.5)], "eval/return": []}
    time.sleep(1.1)
    # a finished run resumed for its final evaluation only: nothing at or before 300 goes
    fourth = RunLogger(tmp_path, resume_step=300)
    fourth.metrics(300, {"eval/return": 4.0})
    fourth.close()
    assert scalars() == {"wm/loss": [(100, 1.0), (200, 2.0), (300, 3.5)],
                         "eval/return": [(300, 4.0)]}


def test_a_logger_closed_twice_is_closed_once(tmp_path):
    """A second Ctrl-C while a stop draws its plot closed the logs again: the flush of a
    closed file raised ValueError out of the stop (rc 1, the resume line lost)."""
    from reverie.run.logger import RunLogger

    logger = RunLogger(tmp_path)
    logger.metrics(100, {"wm/loss": 1.0})
    logger.close()
    logger.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 100, "wm/loss": 1.0}


def test_gymnasium_mujoco_envs_render_without_a_display(tmp_path):
    """`reverie watch` of a Hopper run wrote no GIF ("an OpenGL platform library has not been
    loaded": GLFW needs a display); DMC already rendered headless with EGL."""
    pytest.importorskip("mujoco")
    import os
    import subprocess
    import sys

    code = ("from reverie.envs import make_env; e = make_env('InvertedPendulum-v5', "
            "render=True); e.reset(seed=0); f = e.render(); e.close(); "
            "print(f.shape, f.dtype, f.max())")
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    shape, dtype, top = out.stdout.split(") ")[0] + ")", *out.stdout.split(") ")[1].split()
    assert shape.endswith(", 3)") and dtype == "uint8" and int(top) > 0


@pytest.mark.parametrize("size", [32, 64])
def test_watch_captions_fit_their_half_of_the_frame(monkeypatch, size):
    """At env.image_size=32 the caption 'reconstructed (observed, t=3)' was cut at the
    frame's edge: the longest caption that fits its half is drawn."""
    import numpy as np
    from PIL import ImageDraw

    from reverie.eval.video import captioned

    drawn = []
    real_text = ImageDraw.ImageDraw.text

    def text(self, xy, t, *args, **kwargs):
        drawn.append((xy[0], self.textlength(t)))
        return real_text(self, xy, t, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    width = (2 * size + 2) * 4  # real | gap | model, upscaled 4x as `reverie watch` does
    for t in (3, 15):
        captioned(np.zeros((size * 4, width, 3), np.uint8), t, context=8)
    assert len(drawn) == 4 and all(x + length <= width for x, length in drawn)


def test_the_film_ends_on_the_state_after_the_last_action(run):
    """A 6-step episode gave 6 frames, each before its action: the fall itself was never
    shown."""
    from reverie.eval.video import rollout

    frames, observations, actions, note = rollout(reverie.load(run), 500)
    assert note is None and len(frames) == len(actions) + 1 == len(observations) + 1
    assert not np.array_equal(frames[-1], frames[-2])


def test_manifest_newest_reads_what_it_can_and_never_raises(tmp_path):
    """The one tolerant reader of the newest checkpoint's step (report, sweep)."""
    import json

    from reverie.run.folder import manifest_newest

    ck = tmp_path / "checkpoints"
    assert manifest_newest(tmp_path) == (None, None)  # no manifest
    ck.mkdir()
    for text, want in (("not json", (None, None)), ("[1, 2]", (None, None)),
                       ('{"format": 2}', (2, None)),
                       ('{"format": 2, "checkpoints": []}', (2, None)),
                       ('{"format": 2, "checkpoints": [{"step": "x"}]}', (2, None)),
                       ('{"format": 2, "checkpoints": [{"step": 1e999}]}', (2, None)),
                       ('{"checkpoints": [3]}', (None, None))):
        (ck / "manifest.json").write_text(text)
        assert manifest_newest(tmp_path) == want, text
    entries = [{"step": 500}, {"step": 1500}, {"step": 1000}]
    (ck / "manifest.json").write_text(json.dumps({"format": 2, "checkpoints": entries}))
    assert manifest_newest(tmp_path) == (2, 1500)
